/**
 * A bounded fuzzer for meshd's HTTP/1 request-head parsing (issue 18): mutations of valid
 * heads go through `BufReader.readHead`, `parseRequestHead` and `checkRequest`, and whatever is
 * accepted is re-serialized with `requestHead` (what the backend gets) and read back by a strict
 * reference parser written here. Properties:
 *
 * - nothing but an `HttpParseError` is ever thrown, and a finite input never hangs the reader;
 * - the outcome does not depend on how the bytes arrive (one read, or many small ones);
 * - a head with a bare CR, a bare LF or a NUL is always refused;
 * - an accepted head is forwarded as exactly one head that the reference parser reads to the
 *   same method, target, fields, authority and body framing.
 *
 * It runs `MESHD_FUZZ_SECONDS` seconds (default 3); `MESHD_FUZZ_SEED` replays a run.
 */
import assert from "node:assert/strict";
import {
  type BodyFraming,
  BufReader,
  chunkSize,
  getHeader,
  headerTokens,
  HttpParseError,
  parseRequestHead,
  type Reader,
} from "../../src/proxy/http1.ts";
import { checkRequest } from "../../src/proxy/http1_validate.ts";
import { requestHead } from "../../src/proxy/http_proxy.ts";
import { seededRandom as rng } from "../../src/_testing.ts";

const SECONDS = Number(Deno.env.get("MESHD_FUZZ_SECONDS") ?? "3");
const SEED = Number(Deno.env.get("MESHD_FUZZ_SEED") ?? String(Date.now() % 2 ** 31));
/** A small head limit, so mutations cross it often. */
const LIMIT = 2048;

const SEEDS = [
  "GET /public HTTP/1.1\r\nHost: web.default.mesh\r\nAccept: */*\r\n\r\n",
  "POST /public/a?b=c HTTP/1.1\r\nHost: web.default.mesh\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n",
  "POST /up HTTP/1.1\r\nHost: web.default.mesh:80\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
  "GET http://web.default.mesh/abs?q=1 HTTP/1.1\r\nHost: other.default.mesh\r\n\r\n",
  "OPTIONS * HTTP/1.1\r\nHost: web.default.mesh\r\n\r\n",
  "GET /ws HTTP/1.1\r\nHost: web.default.mesh\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n",
  "GET /old HTTP/1.0\r\nHost: web.default.mesh\r\nConnection: keep-alive\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
  "PUT /p HTTP/1.1\r\nHost: [::1]:8080\r\nContent-Length: 10\r\nConnection: close, x-drop\r\nX-Drop: 1\r\nCookie: a=b\r\n\r\n",
];

const BYTES = [
  "\r",
  "\n",
  "\0",
  " ",
  "\t",
  ":",
  ",",
  ";",
  '"',
  "\x0b",
  "\x7f",
  "\x80",
  "\xff",
  "#",
  "@",
  "/",
  "*",
  "?",
];
const LINES = [
  "Transfer-Encoding: chunked",
  "Transfer-Encoding: xchunked",
  "Transfer-Encoding:  chunked",
  "Transfer-Encoding: chunked, identity",
  "Transfer-Encoding: Chunked",
  "Transfer-Encoding:",
  "Transfer-Encoding : chunked",
  " Transfer-Encoding: chunked",
  "Content-Length: 0",
  "Content-Length: 47",
  "Content-Length: 47, 47",
  "Content-Length: 4, 7",
  "Content-Length: +1",
  "Content-Length: 99999999999999999999",
  "Connection: Content-Length",
  "Connection: transfer-encoding",
  "Connection: Host",
  "Connection: close",
  "Connection: upgrade",
  "Connection: keep-alive, x-a",
  "Connection: a b",
  "Upgrade: h2c",
  "Upgrade: websocket, h2c",
  "HTTP2-Settings: AAMAAABk",
  "Host: web.default.mesh",
  "Host: other.default.mesh",
  "Host: a b",
  "Host:",
  "Host: user@web.default.mesh",
  "X-Forwarded-For: 10.0.0.1",
  "Forwarded: for=10.0.0.1",
  "X-A: a\nb",
  "X-A: a\rb",
  "X-A:\tvalue\t",
  "TE: trailers",
  "Keep-Alive: timeout=5",
];
const TARGETS = [
  "*",
  "admin",
  "/a#frag",
  "//x/y",
  "http://web.default.mesh",
  "http://web.default.mesh?x",
  "HTTP://Web.Default.Mesh:80/p",
  "https://web.default.mesh/p",
  "ftp://web.default.mesh/p",
  "http://user@web.default.mesh/p",
  "http:///p",
  "web.default.mesh:80",
];
const METHODS = ["GET", "POST", "OPTIONS", "CONNECT", "G@T", "get", "PRI"];

function mutate(input: string, r: () => number): string {
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)]!;
  const at = () => Math.floor(r() * (input.length + 1));
  let s = input;
  const n = 1 + Math.floor(r() * 4);
  for (let i = 0; i < n; i++) {
    const lines = s.split("\r\n");
    switch (Math.floor(r() * 10)) {
      case 0: {
        const p = at();
        s = s.slice(0, p) + pick(BYTES) + s.slice(p);
        break;
      }
      case 1: {
        const p = at();
        s = s.slice(0, p) + s.slice(p + 1 + Math.floor(r() * 4));
        break;
      }
      case 2: {
        const p = Math.floor(r() * s.length);
        s = s.slice(0, p) + String.fromCharCode(Math.floor(r() * 256)) + s.slice(p + 1);
        break;
      }
      case 3:
      case 4: {
        // A field line from the dictionary, after the request line.
        const p = 1 + Math.floor(r() * Math.max(1, lines.length - 2));
        lines.splice(p, 0, pick(LINES));
        s = lines.join("\r\n");
        break;
      }
      case 5: {
        const p = Math.floor(r() * lines.length);
        lines.splice(p, 0, lines[p]!);
        s = lines.join("\r\n");
        break;
      }
      case 6: {
        const parts = lines[0]!.split(" ");
        if (r() < 0.5) parts[1] = pick(TARGETS);
        else parts[0] = pick(METHODS);
        lines[0] = parts.join(" ");
        s = lines.join("\r\n");
        break;
      }
      case 7: {
        const p = Math.floor(r() * s.length);
        const c = s[p] ?? "";
        s = s.slice(0, p) + (c === c.toUpperCase() ? c.toLowerCase() : c.toUpperCase()) +
          s.slice(p + 1);
        break;
      }
      case 8: {
        // Padding around the head limit.
        const p = 1 + Math.floor(r() * Math.max(1, lines.length - 2));
        lines.splice(p, 0, `X-Pad: ${"p".repeat(Math.floor(r() * LIMIT))}`);
        s = lines.join("\r\n");
        break;
      }
      default:
        s = s.slice(0, at());
    }
  }
  return s;
}

/** A reader over `data` in reads of the sizes `sizes` gives; counts reads after the end. */
function reader(data: Uint8Array, sizes: () => number): Reader & { afterEnd: number } {
  let off = 0;
  const r = {
    afterEnd: 0,
    read(p: Uint8Array): Promise<number | null> {
      if (off >= data.length) {
        r.afterEnd++;
        return Promise.resolve(null);
      }
      const n = Math.min(p.length, data.length - off, Math.max(1, sizes()));
      p.set(data.subarray(off, off + n));
      off += n;
      return Promise.resolve(n);
    },
  };
  return r;
}

function latin1(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
}

type Outcome = { head: string | null } | { error: string };

/** Reads one head; anything but an HttpParseError fails the run. */
async function readOne(data: Uint8Array, sizes: () => number): Promise<Outcome> {
  const src = reader(data, sizes);
  const buf = new BufReader(src, 64);
  try {
    const head = await buf.readHead(LIMIT);
    return { head };
  } catch (e) {
    if (!(e instanceof HttpParseError)) throw e;
    return { error: e.message };
  } finally {
    assert.ok(src.afterEnd <= 2, `readHead read ${src.afterEnd} times past the end`);
  }
}

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "proxy-authenticate",
  "proxy-authorization",
]);

/** What the reference parser reads from a forwarded head. */
interface Reference {
  method: string;
  target: string;
  fields: [string, string][];
  framing: BodyFraming;
  host: string;
  upgrade: string | null;
}

/** A strict reader of the head meshd forwards, independent of meshd's parser (RFC 9112). */
function referenceParse(s: string): Reference {
  const end = s.indexOf("\r\n\r\n");
  assert.equal(end, s.length - 4, "the forwarded head is exactly one head");
  const lines = s.slice(0, end).split("\r\n");
  for (const l of lines) {
    for (const ch of l) {
      const c = ch.charCodeAt(0);
      assert.ok(c === 9 || (c >= 0x20 && c !== 0x7f), `control character in ${JSON.stringify(l)}`);
    }
  }
  const m = /^([A-Za-z0-9!#$%&'*+.^_`|~-]+) (\S+) HTTP\/1\.1$/.exec(lines[0]!);
  assert.ok(m, `request line ${JSON.stringify(lines[0])}`);
  const target = m[2]!;
  assert.ok(
    target.startsWith("/") || (target === "*" && m[1] === "OPTIONS"),
    `forwarded target ${target} is origin-form`,
  );
  const fields: [string, string][] = [];
  for (const l of lines.slice(1)) {
    const colon = l.indexOf(":");
    assert.ok(colon > 0, `field line ${JSON.stringify(l)}`);
    const name = l.slice(0, colon);
    assert.match(name, /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, "field name is a token");
    let v = l.slice(colon + 1);
    while (v.startsWith(" ") || v.startsWith("\t")) v = v.slice(1);
    while (v.endsWith(" ") || v.endsWith("\t")) v = v.slice(0, -1);
    fields.push([name, v]);
  }
  const all = (n: string) => fields.filter(([k]) => k.toLowerCase() === n).map(([, v]) => v);
  const hosts = all("host");
  assert.equal(hosts.length, 1, "exactly one Host");
  const te = all("transfer-encoding");
  const cl = all("content-length");
  assert.ok(te.length === 0 || cl.length === 0, "never Transfer-Encoding and Content-Length");
  assert.ok(cl.length <= 1, "at most one Content-Length");
  let framing: BodyFraming = { kind: "none" };
  if (te.length > 0) {
    assert.deepEqual(te, ["chunked"]);
    framing = { kind: "chunked" };
  } else if (cl.length === 1) {
    assert.match(cl[0]!, /^\d+$/);
    const n = Number(cl[0]);
    if (n > 0) framing = { kind: "length", length: n };
  }
  const conn = all("connection").join(",").split(",").map((t) => t.trim().toLowerCase()).filter(
    Boolean,
  );
  const up = all("upgrade");
  assert.ok(up.length === 0 || conn.includes("upgrade"), "Upgrade only with Connection: upgrade");
  for (const p of up.join(",").split(",")) assert.ok(!/^\s*h2c?\b/i.test(p), "no HTTP/2 upgrade");
  return {
    method: m[1]!,
    target,
    fields: fields.filter(([k]) =>
      !["x-forwarded-for", "forwarded", "connection", "upgrade", "transfer-encoding"].includes(
        k.toLowerCase(),
      )
    ),
    framing,
    host: hosts[0]!,
    upgrade: up.length > 0 ? up.join(", ") : null,
  };
}

/** Checks one input end to end; returns whether it was accepted. */
async function check(input: string, r: () => number): Promise<boolean> {
  const data = latin1(input);
  const whole = await readOne(data, () => data.length);
  const split = await readOne(data, () => 1 + Math.floor(r() * 7));
  assert.deepEqual(split, whole, "the outcome depends on how the bytes arrive");
  if ("error" in whole || whole.head === null) return false;
  const head = whole.head;
  const started = performance.now();
  let checked;
  try {
    checked = checkRequest(parseRequestHead(head));
  } catch (e) {
    if (!(e instanceof HttpParseError)) throw e;
    return false;
  } finally {
    // Not a speed test: a parse of a few kB taking seconds is a hang (backtracking).
    assert.ok(performance.now() - started < 5000, "parsing one head took over 5 s");
  }
  // Whatever the head holds, a bare CR, a bare LF or a NUL is never accepted.
  assert.ok(!/\r(?!\n)|(?<!\r)\n|\0/.test(head), "accepted a bare CR, a bare LF or a NUL");
  const req = checked.head;
  const connTokens = headerTokens(req.headers, "connection");
  const upgrade = connTokens.includes("upgrade") ? getHeader(req.headers, "upgrade") : null;
  const out = requestHead(req, checked.framing, connTokens, "127.0.0.1", upgrade);
  const ref = referenceParse(out);
  assert.equal(ref.method, req.method);
  assert.equal(ref.target, req.target);
  assert.equal(ref.host, checked.authority);
  assert.deepEqual(ref.framing, checked.framing);
  assert.equal(ref.upgrade, upgrade);
  const expected = req.headers.filter(([k]) => {
    const l = k.toLowerCase();
    return !HOP_BY_HOP.has(l) && !connTokens.includes(l) && l !== "x-forwarded-for" &&
      l !== "forwarded";
  });
  assert.deepEqual(ref.fields, expected, "the fields the backend reads");
  return true;
}

Deno.test(`parseRequestHead() and checkRequest() survive ${SECONDS} s of mutated heads (seed ${SEED})`, async () => {
  const r = rng(SEED);
  const deadline = performance.now() + SECONDS * 1000;
  let runs = 0;
  let accepted = 0;
  let input = "";
  try {
    while (performance.now() < deadline) {
      input = mutate(SEEDS[Math.floor(r() * SEEDS.length)]!, r);
      if (await check(input, r)) accepted++;
      runs++;
    }
  } catch (e) {
    throw new Error(
      `Fuzz case ${runs} (MESHD_FUZZ_SEED=${SEED}) failed on ${
        JSON.stringify(input.slice(0, 400))
      }: ${(e as Error).message}`,
      { cause: e },
    );
  }
  console.log(`${runs} heads, ${accepted} accepted, seed ${SEED}`);
  // The mutations must reach both outcomes, or the run checked nothing.
  assert.ok(runs > 100 && accepted > 0 && accepted < runs, `${accepted} of ${runs} accepted`);
});

Deno.test(`chunkSize() refuses all but hex digits and extensions (${SECONDS} s, seed ${SEED})`, () => {
  const r = rng(SEED ^ 0x5bd1e995);
  const seeds = ["5", "1a;name=value", 'ff ; a = "q\\"s"', "0", "0000000000000010;x"];
  const deadline = performance.now() + SECONDS * 1000;
  let runs = 0;
  while (performance.now() < deadline) {
    const line = mutate(seeds[Math.floor(r() * seeds.length)]!, r).replace(/\r\n/g, "");
    let size: number;
    try {
      size = chunkSize(line);
    } catch (e) {
      assert.ok(e instanceof HttpParseError, `${JSON.stringify(line)}: ${e}`);
      runs++;
      continue;
    }
    // Independent check: the size is the leading hex digits, and nothing in the line is a
    // control character (CR, LF, NUL) or starts it but a digit.
    const digits = /^[0-9A-Fa-f]+/.exec(line)?.[0];
    assert.ok(digits, `accepted ${JSON.stringify(line)}`);
    assert.equal(size, parseInt(digits, 16), JSON.stringify(line));
    assert.ok(Number.isSafeInteger(size));
    // deno-lint-ignore no-control-regex -- control characters are what is looked for
    assert.ok(!/[\x00-\x08\x0a-\x1f\x7f]/.test(line), `accepted ${JSON.stringify(line)}`);
    const rest = line.slice(digits.length);
    assert.ok(rest === "" || /^[ \t]*;/.test(rest), `accepted ${JSON.stringify(line)}`);
    runs++;
  }
  assert.ok(runs > 100);
});
