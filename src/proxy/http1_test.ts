import assert from "node:assert/strict";
import { seededRandom } from "../_testing.ts";
import {
  bodyFraming,
  BufReader,
  chunkSize,
  copyBody,
  decodeLatin1,
  encodeLatin1,
  encodeLatin1Into,
  HttpParseError,
  parseRequestHead,
  parseRequestLines,
  parseResponseHead,
  type Reader,
  scanRequestHead,
  type Writer,
} from "./http1.ts";

/** A reader that hands out `parts` one read at a time, as a socket may. */
function reader(...parts: string[]): Reader {
  const chunks = parts.map((p) => new TextEncoder().encode(p));
  return {
    read(p: Uint8Array): Promise<number | null> {
      const c = chunks.shift();
      if (!c) return Promise.resolve(null);
      const n = Math.min(p.length, c.length);
      p.set(c.subarray(0, n));
      if (n < c.length) chunks.unshift(c.subarray(n));
      return Promise.resolve(n);
    },
  };
}

function sink(): Writer & { text(): string } {
  const out: Uint8Array[] = [];
  return {
    write(p: Uint8Array): Promise<number> {
      out.push(p.slice());
      return Promise.resolve(p.length);
    },
    text: () => out.map((p) => new TextDecoder("latin1").decode(p)).join(""),
  };
}

Deno.test("BufReader.readHead() finds a head split across reads and skips leading CRLFs", async () => {
  const r = new BufReader(reader("\r\nGET / HT", "TP/1.1\r\nHost: a\r", "\n\r\nBODY"), 8);
  assert.equal(await r.readHead(1024), "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  assert.equal(r.buffered, 4);
  assert.equal(new TextDecoder().decode((await r.readSome(10))!), "BODY");
  assert.equal(await r.readHead(1024), null);
});

Deno.test("BufReader.readHead() rejects a head over the limit and one cut short", async () => {
  await assert.rejects(
    new BufReader(reader("GET / HTTP/1.1\r\n" + "X: y\r\n".repeat(100))).readHead(64),
    /message head is over 64 bytes/,
  );
  await assert.rejects(
    new BufReader(reader("GET / HTTP/1.1\r\nHost")).readHead(1024),
    /closed inside a message head/,
  );
});

Deno.test("parseRequestHead() reads the request line and keeps header order and case", () => {
  const h = parseRequestHead("POST /a?b=1 HTTP/1.0\r\nHost: x\r\nX-Two: 1\r\nx-two: 2\r\n\r\n");
  assert.equal(h.method, "POST");
  assert.equal(h.target, "/a?b=1");
  assert.equal(h.minor, 0);
  assert.deepEqual(h.headers, [["Host", "x"], ["X-Two", "1"], ["x-two", "2"]]);
});

Deno.test("parseRequestHead() rejects bad request lines, folded and nameless headers", () => {
  // RFC 9112 §5.2: obs-fold is rejected with 400 in requests.
  for (
    const bad of [
      "GET /\r\n\r\n",
      "GET / HTTP/2.0\r\n\r\n",
      "G@T / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
      "GET / HTTP/1.1\r\n: novalue\r\n\r\n",
      "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
    ]
  ) {
    assert.throws(() => parseRequestHead(bad), HttpParseError, JSON.stringify(bad));
  }
});

Deno.test("parseResponseHead() reads status and reason, which may be empty", () => {
  assert.equal(parseResponseHead("HTTP/1.1 204\r\n\r\n").status, 204);
  const r = parseResponseHead("HTTP/1.1 404 Not Found\r\nA: b\r\n\r\n");
  assert.equal(r.reason, "Not Found");
  assert.throws(() => parseResponseHead("HTTP/1.1 20 OK\r\n\r\n"), HttpParseError);
});

Deno.test("bodyFraming() follows RFC 9112 §6.3", () => {
  const req = (h: string) => parseRequestHead(`POST / HTTP/1.1\r\n${h}\r\n`);
  const res = (status: number, h = "") => parseResponseHead(`HTTP/1.1 ${status} X\r\n${h}\r\n`);
  assert.deepEqual(bodyFraming(req(""), true), { kind: "none" });
  assert.deepEqual(bodyFraming(req("Content-Length: 12\r\n"), true), {
    kind: "length",
    length: 12,
  });
  assert.deepEqual(bodyFraming(req("Content-Length: 0\r\n"), true), { kind: "none" });
  // Repeated identical values are one value (§6.3 item 5).
  assert.deepEqual(bodyFraming(req("Content-Length: 5, 5\r\n"), true), {
    kind: "length",
    length: 5,
  });
  assert.deepEqual(bodyFraming(req("Transfer-Encoding: chunked\r\n"), true), { kind: "chunked" });
  // A response with neither runs to close; HEAD, 1xx, 204 and 304 have no body.
  assert.deepEqual(bodyFraming(res(200), false), { kind: "close" });
  assert.deepEqual(bodyFraming(res(200, "Content-Length: 9\r\n"), false, "HEAD"), {
    kind: "none",
  });
  assert.deepEqual(bodyFraming(res(204), false), { kind: "none" });
  assert.deepEqual(bodyFraming(res(304, "Content-Length: 9\r\n"), false), { kind: "none" });
  assert.deepEqual(bodyFraming(res(200, "Transfer-Encoding: gzip\r\n"), false), { kind: "close" });
});

Deno.test("bodyFraming() refuses framing that could smuggle a request", () => {
  const req = (h: string) => parseRequestHead(`POST / HTTP/1.1\r\n${h}\r\n`);
  for (
    const h of [
      "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
      "Content-Length: 5\r\nContent-Length: 6\r\n",
      "Content-Length: -1\r\n",
      "Content-Length: 1e3\r\n",
      "Transfer-Encoding: gzip\r\n",
      "Transfer-Encoding: chunked, chunked\r\n",
    ]
  ) {
    assert.throws(() => bodyFraming(req(h), true), HttpParseError, h);
  }
});

Deno.test("copyBody() copies chunked bodies with extensions and trailers, or dechunks", async () => {
  const wire = "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
  const out = sink();
  const src = new BufReader(reader(wire.slice(0, 7), wire.slice(7)));
  assert.equal(await copyBody(src, out, { kind: "chunked" }), true);
  assert.equal(out.text(), wire.slice(0, -4));
  assert.equal(src.buffered, 4);

  const plain = sink();
  assert.equal(await copyBody(new BufReader(reader(wire)), plain, { kind: "chunked" }, true), true);
  assert.equal(plain.text(), "hello world");
});

Deno.test("copyBody() reports a body cut short and rejects a bad chunk size", async () => {
  assert.equal(
    await copyBody(new BufReader(reader("abc")), sink(), { kind: "length", length: 10 }),
    false,
  );
  await assert.rejects(
    copyBody(new BufReader(reader("zz\r\n")), sink(), { kind: "chunked" }),
    /invalid chunk size line "zz"/,
  );
  await assert.rejects(
    copyBody(new BufReader(reader("3\r\nabcX\r\n")), sink(), { kind: "chunked" }),
    /not followed by CRLF/,
  );
  const rest = sink();
  assert.equal(
    await copyBody(new BufReader(reader("to the ", "end")), rest, { kind: "close" }),
    true,
  );
  assert.equal(rest.text(), "to the end");
});

Deno.test("BufReader.readHead() applies the limit however the bytes arrive", async () => {
  const head = "GET / HTTP/1.1\r\n" + "X: y\r\n".repeat(100) + "\r\n";
  // In one read, the terminator is in the buffer already: still over the limit.
  await assert.rejects(new BufReader(reader(head), 4096).readHead(64), /over 64 bytes/);
  await assert.rejects(new BufReader(reader(...head.split(""))).readHead(64), /over 64 bytes/);
});

Deno.test("BufReader.readHead() ends a head at an empty line with bare LFs, for the parser to refuse", async () => {
  // RFC 9112 §2.2: a head of bare LFs is answered at once, not held for a CRLF CRLF.
  const r = new BufReader(reader("GET / HTTP/1.1\nHost: a\n\nrest"));
  const head = await r.readHead(1024);
  assert.equal(head, "GET / HTTP/1.1\nHost: a\n\n");
  assert.throws(() => parseRequestHead(head!), /does not end in CRLF/);
  // A CRLF before the request split across reads is still skipped.
  assert.equal(
    await new BufReader(reader("\r", "\nGET / HTTP/1.1\r\n\r\n")).readHead(1024),
    "GET / HTTP/1.1\r\n\r\n",
  );
});

Deno.test("parseRequestHead() refuses CR, LF, NUL and control characters in values and targets", () => {
  // RFC 9110 §5.5: CR, LF and NUL are never valid in a field value.
  for (
    const bad of [
      "GET / HTTP/1.1\r\nA: a\rB: b\r\n\r\n",
      "GET / HTTP/1.1\r\nA: a\nB: b\r\n\r\n",
      "GET / HTTP/1.1\r\nA: a\0b\r\n\r\n",
      "GET / HTTP/1.1\r\nA: a\x01b\r\n\r\n",
      "GET /a\x7fb HTTP/1.1\r\n\r\n",
      "GET /a\xe9 HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1 \r\n\r\n",
      "GET  / HTTP/1.1\r\n\r\n",
    ]
  ) {
    assert.throws(() => parseRequestHead(bad), HttpParseError, JSON.stringify(bad));
  }
  // HTAB inside a value and obs-text stay; only SP and HTAB are trimmed at the edges.
  assert.deepEqual(parseRequestHead("GET / HTTP/1.1\r\nA:\t a\tb\xe9 \r\n\r\n").headers, [[
    "A",
    "a\tb\xe9",
  ]]);
});

Deno.test("chunkSize() reads RFC 9112 §7.1 chunk lines and refuses the rest", () => {
  assert.equal(chunkSize("1a"), 26);
  assert.equal(chunkSize('5 ; name=value;x;q="a\\"b"'), 5);
  assert.equal(chunkSize("000000000000000000ff"), 255);
  for (
    const bad of ["", " 5", "5 ", "0x5", "-1", "+5", "5;a=b\rc", "5;a\0", "5;", "fffffffffffffffff"]
  ) {
    assert.throws(() => chunkSize(bad), HttpParseError, JSON.stringify(bad));
  }
});

Deno.test("copyBody() refuses bare LF chunk lines and framing fields in trailers", async () => {
  await assert.rejects(
    copyBody(new BufReader(reader("5\nhello\r\n0\r\n\r\n")), sink(), { kind: "chunked" }),
    /bare LF/,
  );
  await assert.rejects(
    copyBody(
      new BufReader(reader("0\r\nContent-Length: 5\r\n\r\n")),
      sink(),
      { kind: "chunked" },
    ),
    /trailer section has the field "Content-Length"/,
  );
});

Deno.test("BufReader.readAhead() starts one read that the next read waits for, losing no byte", async () => {
  let reads = 0;
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  const parts = ["HTTP/1.1 204 No Content\r\n\r\n"].map((p) => new TextEncoder().encode(p));
  const src: Reader = {
    async read(p) {
      reads++;
      await gate;
      const c = parts.shift();
      if (!c) return null;
      p.set(c);
      return c.length;
    },
  };
  const r = new BufReader(src);
  const ahead = r.readAhead();
  assert.equal(r.readAhead(), ahead, "a second call returns the read under way");
  const head = r.readHead(1024);
  release();
  assert.equal(await ahead, true);
  assert.equal(await head, "HTTP/1.1 204 No Content\r\n\r\n");
  assert.equal(reads, 1, "readHead() waited for the read ahead instead of reading again");
  assert.equal(await r.readAhead(), false, "end of stream");
});

Deno.test("encodeLatin1Into() writes ISO-8859-1 bytes at an offset, as encodeLatin1() makes them", () => {
  const head = "HTTP/1.1 200 OK\r\nx-name: caf\u00e9\r\n\r\n";
  const out = new Uint8Array(head.length + 3).fill(7);
  encodeLatin1Into(head, out, 2);
  assert.deepEqual(out.subarray(2, 2 + head.length), encodeLatin1(head));
  assert.equal(out[0], 7, "nothing before the offset is touched");
  assert.equal(out[head.length + 2], 7, "nothing after the string is touched");
  assert.equal(encodeLatin1("\u00e9")[0], 0xe9, "one byte per character below U+0100");
});

Deno.test("decodeLatin1() reads each byte as one character, ASCII or not", () => {
  const cases: [string, number[], string][] = [
    ["ASCII (the UTF-8 path)", [0x47, 0x45, 0x54, 0x20, 0x2f], "GET /"],
    // RFC 9110 §5.5: obs-text in a field value is ISO-8859-1, never UTF-8 (0xc3 0xa9 is "Ã©").
    ["bytes over 0x7f", [0x61, 0xc3, 0xa9, 0xff], "a\u00c3\u00a9\u00ff"],
    ["empty", [], ""],
  ];
  for (const [name, bytes, want] of cases) {
    assert.equal(decodeLatin1(new Uint8Array(bytes)), want, name);
  }
  // Every byte, 0x80-0x9f among them (windows-1252 maps those elsewhere), and a long run.
  const every = Uint8Array.from({ length: 40_000 }, (_, i) => i % 256);
  const text = decodeLatin1(every);
  assert.equal(text.length, every.length);
  for (let i = 0; i < text.length; i++) {
    if (text.charCodeAt(i) !== every[i]) {
      assert.fail(`byte ${every[i]} read as ${text.charCodeAt(i)}`);
    }
  }
  assert.deepEqual(encodeLatin1(text), every, "encoding it again gives the same bytes");
});

Deno.test("parseRequestHead() refuses a control character wherever the head has it", () => {
  const heads = [
    "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\x1b\r\n\r\n",
  ];
  for (const head of heads) {
    assert.throws(() => parseRequestHead(head), HttpParseError, JSON.stringify(head));
  }
  // HTAB and obs-text are allowed in a value (RFC 9110 §5.5).
  assert.deepEqual(
    parseRequestHead("GET / HTTP/1.1\r\nHost: a\r\nX: b\tc\u00e9\r\n\r\n").headers[1],
    ["X", "b\tc\u00e9"],
  );
});

Deno.test("BufReader.readSome() reads a body in 16 KiB pieces on a reader made small for heads", async () => {
  const asked: number[] = [];
  let left = 64 * 1024;
  const src = {
    read(p: Uint8Array): Promise<number | null> {
      asked.push(p.length);
      if (left === 0) return Promise.resolve(null);
      const n = Math.min(p.length, left);
      left -= n;
      return Promise.resolve(n);
    },
  };
  const reader = new BufReader(src, 4096);
  let got = 0;
  for (let part; (part = await reader.readSome(64 * 1024)) !== null;) got += part.length;
  assert.equal(got, 64 * 1024);
  assert.deepEqual(asked.slice(0, 4), [16384, 16384, 16384, 16384]);
});

Deno.test("BufReader.release() gives up a buffer only heads were read from, and no read is under way", async () => {
  const given = new Uint8Array(64);
  const heads = new BufReader(reader("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 64, given);
  assert.equal(await heads.readHead(1024), "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  assert.equal(heads.release(), given);
  assert.equal(heads.release(), null, "twice");
  await assert.rejects(heads.readHead(1024), Deno.errors.BadResource);

  // A body's bytes may still be in a write elsewhere: its buffer is never reused.
  const body = new BufReader(reader("GET / HTTP/1.1\r\n\r\nab"), 64);
  await body.readHead(1024);
  await body.readSome(2);
  assert.equal(body.release(), null);

  // A read left pending (a pooled connection's, or a client's watch) keeps the buffer.
  let finish: (n: number | null) => void = () => {};
  const pending = new BufReader({ read: () => new Promise((r) => finish = r) }, 64);
  const ahead = pending.readAhead();
  assert.equal(pending.release(), null);
  finish(null);
  assert.equal(await ahead, false);
});

/** The outcome of a parse: its result, or the error's message. */
function outcome(parse: () => unknown): unknown {
  try {
    return { ok: parse() };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

Deno.test("scanRequestHead() reads what parseRequestLines reads, or leaves it to it", () => {
  const seeds = [
    "GET / HTTP/1.1\r\nHost: web.default.mesh\r\n\r\n",
    "POST /a?b=c HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\nX-Empty:\r\nX-Pad: \t v a \t\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nhost:h\r\nA: \u00e9\u00ff\r\n\r\n",
    "GET http://h/p HTTP/1.1\r\n\r\n",
  ];
  // Characters that sit on a rule's edge: line ends, OWS, separators, controls, DEL, Latin-1.
  const alphabet = [
    "\r",
    "\n",
    "\t",
    " ",
    ":",
    "\0",
    "\x01",
    "\x7f",
    "\x80",
    "\u00e9",
    "/",
    "a",
    "1",
    '"',
    "(",
    "@",
  ];
  // A fixed seed: the same cases every run, enough to reach every `return null`.
  const next = seededRandom(0x2545f491);
  const random = (n: number) => Math.floor(next() * n);
  let accepted = 0;
  let refused = 0;
  for (let k = 0; k < 20_000; k++) {
    let h = seeds[random(seeds.length)]!;
    for (let m = random(3) + 1; m > 0; m--) {
      const at = random(h.length + 1);
      const c = alphabet[random(alphabet.length)]!;
      const op = random(3);
      h = op === 0
        ? h.slice(0, at) + c + h.slice(at)
        : op === 1
        ? h.slice(0, at) + h.slice(at + 1)
        : h.slice(0, at) + c + h.slice(at + 1);
    }
    const fast = scanRequestHead(h);
    if (fast === null) {
      refused++;
      continue;
    }
    accepted++;
    assert.deepEqual(outcome(() => fast), outcome(() => parseRequestLines(h)), JSON.stringify(h));
  }
  // Both sides of the scanner were exercised.
  assert.ok(accepted > 1000 && refused > 1000, `accepted ${accepted}, refused ${refused}`);
  for (const h of seeds) assert.deepEqual(scanRequestHead(h), parseRequestLines(h));
});
