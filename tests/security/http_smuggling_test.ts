/**
 * Request smuggling through meshd's HTTP entrypoint (issue 18, items 1-3): a corpus of raw
 * requests sent from a Pod's address through a real meshd (file provider, access control on)
 * to a backend that records every byte. Each case checks meshd's answer and that the backend
 * never received a request meshd did not route and check: no `/admin` request line (the ACL
 * denies it), no extra request hidden in a body.
 */
import assert from "node:assert/strict";
import {
  type Answer,
  CLIENT_POD,
  type Exchange,
  H2_HOST,
  h2Request,
  HOST,
  type SeenRequest,
  send,
  type SendOptions,
  startEnv,
  VICTIM_POD,
} from "./_smuggling_env.ts";

interface Case {
  name: string;
  data: string;
  /** meshd's status for each answer, in order. */
  statuses: number[];
  /** Request lines the backend must have read for this case, in order. */
  backend: string[];
  opts?: SendOptions;
  /** Further checks on what the backend read and what the client got. */
  check?: (seen: SeenRequest[], ex: Exchange) => void;
}

const H = `Host: ${HOST}\r\n`;
/** A request smuggled in a body: 47 bytes, as in the reproduction. */
const ADMIN = `GET /admin HTTP/1.1\r\n${H}\r\n`;
const chunk = (s: string) => `${s.length.toString(16)}\r\n${s}\r\n`;
const post = (fields: string, body = "") => `POST /public HTTP/1.1\r\n${H}${fields}\r\n${body}`;

/** A GET whose head is exactly `size` bytes, padded with 1 kB fields. */
function padded(size: number): string {
  let head = `GET /public HTTP/1.1\r\n${H}`;
  while (size - head.length - 2 > 1010) head += `X-Pad: ${"a".repeat(1000)}\r\n`;
  head += `X-Last: ${"b".repeat(size - head.length - 2 - 10)}\r\n`;
  return head + "\r\n";
}

const header = (r: SeenRequest, name: string) =>
  r.headers.filter(([k]) => k.toLowerCase() === name).map(([, v]) => v);

const CORPUS: Case[] = [
  // Item 1: a framing or routing field named in Connection is never stripped.
  {
    name: "item 1: the issue's reproduction (Connection: Content-Length) is refused",
    data:
      `POST /x HTTP/1.1\r\nHost: web.default.mesh\r\nConnection: Content-Length\r\nContent-Length: 47\r\n\r\nGET /admin HTTP/1.1\r\nHost: web.default.mesh\r\n\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "item 1: Connection naming Content-Length in another case and among others is refused",
    data: post(`Connection: keep-alive, CONTENT-LENGTH\r\nContent-Length: 47\r\n`, ADMIN),
    statuses: [400],
    backend: [],
  },
  {
    name: "item 1: Connection: Transfer-Encoding is refused",
    data: post(
      `Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n`,
      chunk(ADMIN) + "0\r\n\r\n",
    ),
    statuses: [400],
    backend: [],
  },
  {
    name: "item 1: Connection: Host is refused",
    data: `GET /public HTTP/1.1\r\n${H}Connection: Host\r\n\r\n`,
    statuses: [400],
    backend: [],
  },
  // Item 2: CR, LF and NUL inside a field value (RFC 9110 §5.5).
  {
    name: "item 2: the issue's reproduction (a bare LF ending a header line) is refused",
    data:
      `GET /public HTTP/1.1\r\nHost: web.default.mesh\r\nX-A: a\n\nGET /admin HTTP/1.1\nHost: web.default.mesh\r\n\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "item 2: a bare CR inside a value is refused",
    data: `GET /public HTTP/1.1\r\n${H}X-A: a\rX-Injected: 1\r\n\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "item 2: a NUL inside a value is refused",
    data: `GET /public HTTP/1.1\r\n${H}X-A: a\0b\r\n\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "item 2: a bare LF between two header lines is refused",
    data: `GET /public HTTP/1.1\r\n${H.slice(0, -2)}\nX-A: b\r\n\r\n`,
    statuses: [400],
    backend: [],
  },
  // Item 3: the smaller deviations (RFC 9112).
  {
    name: "item 3: a chunk size that overflows is refused at once",
    data: post(`Transfer-Encoding: chunked\r\n`, `ffffffffffffffffffff\r\n${ADMIN}\r\n0\r\n\r\n`),
    statuses: [400],
    backend: [],
  },
  {
    name: "item 3: a chunk size with a 0x prefix is refused",
    data: post(`Transfer-Encoding: chunked\r\n`, `0x5\r\nhello\r\n0\r\n\r\n`),
    statuses: [400],
    backend: [],
  },
  {
    name: "item 3: a negative chunk size is refused",
    data: post(`Transfer-Encoding: chunked\r\n`, `-1\r\nhello\r\n0\r\n\r\n`),
    statuses: [400],
    backend: [],
  },
  {
    name: "item 3: a chunk size with leading whitespace is refused",
    data: post(`Transfer-Encoding: chunked\r\n`, ` 5\r\nhello\r\n0\r\n\r\n`),
    statuses: [400],
    backend: [],
  },
  {
    name: "item 3: a chunk size line ending in a bare LF is refused",
    data: post(`Transfer-Encoding: chunked\r\n`, `5\nhello\r\n0\r\n\r\n`),
    statuses: [400],
    backend: [],
  },
  {
    name: "item 3: a chunk extension with a bare CR is refused",
    data: post(`Transfer-Encoding: chunked\r\n`, `5;a=b\rc\r\nhello\r\n0\r\n\r\n`),
    statuses: [400],
    backend: [],
  },
  {
    name: "item 3: a chunk extension with a NUL is refused",
    data: post(`Transfer-Encoding: chunked\r\n`, `5;a\0\r\nhello\r\n0\r\n\r\n`),
    statuses: [400],
    backend: [],
  },
  {
    name: "item 3: a 130 kB head sent in one write is over the 64 KiB limit",
    data: padded(130_000),
    statuses: [431],
    backend: [],
  },
  {
    name: "item 3: two Host headers are refused",
    data: `GET /public HTTP/1.1\r\n${H}Host: other.default.mesh\r\n\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "item 3: no Host header is refused",
    data: `GET /public HTTP/1.1\r\nX-A: b\r\n\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "item 3: a request with only bare LF line ends is refused at once",
    data: `GET /public HTTP/1.1\nHost: web.default.mesh\n\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "item 3: GET * is refused (asterisk-form is for OPTIONS only)",
    data: `GET * HTTP/1.1\r\n${H}\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "item 3: GET admin is refused (neither origin- nor absolute-form)",
    data: `GET admin HTTP/1.1\r\n${H}\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "item 3: an absolute-form target routes by its authority, which replaces Host",
    data: `GET http://${HOST}/public/abs HTTP/1.1\r\nHost: nowhere.default.mesh\r\n\r\n`,
    statuses: [200],
    backend: ["GET /public/abs HTTP/1.1"],
    check: (seen) => assert.deepEqual(header(seen[0]!, "host"), [HOST]),
  },
  {
    name: "item 3: an absolute-form target naming another authority does not reach Host's service",
    data: `GET http://nowhere.default.mesh/public HTTP/1.1\r\n${H}\r\n`,
    statuses: [404],
    backend: [],
  },
  {
    name: "item 3: an absolute-form target to a denied path is checked against that path",
    data: `GET http://${HOST}/admin HTTP/1.1\r\n${H}\r\n`,
    statuses: [403],
    backend: [],
  },
  {
    name: "item 3: HTTP/1.0 with chunked Transfer-Encoding is refused",
    data: `POST /public HTTP/1.0\r\n${H}Transfer-Encoding: chunked\r\n\r\n${chunk(ADMIN)}0\r\n\r\n`,
    statuses: [400],
    backend: [],
  },
  // Classic smuggling (RFC 9112 §6.1, §6.3): both framings present is refused, never resolved.
  {
    name: "CL.TE: Content-Length and Transfer-Encoding together are refused",
    data: post(`Content-Length: 6\r\nTransfer-Encoding: chunked\r\n`, `0\r\n\r\nG`),
    statuses: [400],
    backend: [],
  },
  {
    name: "TE.CL: Transfer-Encoding and Content-Length together are refused",
    data: post(`Transfer-Encoding: chunked\r\nContent-Length: 4\r\n`, chunk(ADMIN) + "0\r\n\r\n"),
    statuses: [400],
    backend: [],
  },
  {
    name: "differing Content-Length headers are refused",
    data: post(`Content-Length: 0\r\nContent-Length: 47\r\n`, ADMIN),
    statuses: [400],
    backend: [],
  },
  {
    name: "a Content-Length list of two values is refused",
    data: post(`Content-Length: 0, 47\r\n`, ADMIN),
    statuses: [400],
    backend: [],
  },
  {
    name: "a signed Content-Length is refused",
    data: post(`Content-Length: +47\r\n`, ADMIN),
    statuses: [400],
    backend: [],
  },
  {
    name: "identical Content-Length headers are one length, forwarded once",
    data: post(`Content-Length: 5\r\nContent-Length: 5\r\n`, "hello"),
    statuses: [200],
    backend: ["POST /public HTTP/1.1"],
    check: (seen) => {
      assert.equal(seen[0]!.body, "hello");
      assert.deepEqual(header(seen[0]!, "content-length"), ["5"]);
    },
  },
  ...[
    ["xchunked", "Transfer-Encoding: xchunked\r\nContent-Length: 47\r\n"],
    ["a leading space", "Transfer-Encoding:  chunked\r\nContent-Length: 47\r\n"],
    ["a tab", "Transfer-Encoding:\tchunked\r\nContent-Length: 47\r\n"],
    ["upper case", "Transfer-Encoding: CHUNKED\r\nContent-Length: 47\r\n"],
    ["a vertical tab", "Transfer-Encoding: \x0bchunked\r\nContent-Length: 47\r\n"],
    ["an empty value", "Transfer-Encoding:\r\nContent-Length: 47\r\n"],
    ["a space before the colon", "Transfer-Encoding : chunked\r\nContent-Length: 47\r\n"],
    ["a tab before the colon", "Transfer-Encoding\t: chunked\r\nContent-Length: 47\r\n"],
    ["a folded line", "X-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 47\r\n"],
    ["chunked, identity", "Transfer-Encoding: chunked, identity\r\n"],
    ["identity", "Transfer-Encoding: identity\r\nContent-Length: 47\r\n"],
    ["two lines", "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"],
  ].map(([what, fields]): Case => ({
    name: `an obfuscated Transfer-Encoding (${what}) is refused`,
    data: post(fields!, ADMIN),
    statuses: [400],
    backend: [],
  })),
  {
    name: "Transfer-Encoding: Chunked alone is chunked, forwarded in canonical form",
    data: post(`Transfer-Encoding: Chunked\r\n`, chunk("hello") + "0\r\n\r\n"),
    statuses: [200],
    backend: ["POST /public HTTP/1.1"],
    check: (seen) => {
      assert.equal(seen[0]!.body, "hello");
      assert.deepEqual(header(seen[0]!, "transfer-encoding"), ["chunked"]);
    },
  },
  {
    name: "a pipeline whose first body is ambiguous ends before the second request",
    data: post(`Content-Length: 6\r\nTransfer-Encoding: chunked\r\n`, `0\r\n\r\n`) +
      `GET /public/second HTTP/1.1\r\n${H}\r\n`,
    statuses: [400],
    backend: [],
    opts: { untilClose: true },
  },
  {
    name: "a clean pipeline is answered in order",
    data:
      `GET /public/1 HTTP/1.1\r\n${H}\r\nGET /public/2 HTTP/1.1\r\n${H}Connection: close\r\n\r\n`,
    statuses: [200, 200],
    backend: ["GET /public/1 HTTP/1.1", "GET /public/2 HTTP/1.1"],
    opts: { responses: 2 },
    check: (_, ex) =>
      assert.deepEqual(ex.answers.map((a) => a.body), [
        "GET /public/1 HTTP/1.1",
        "GET /public/2 HTTP/1.1",
      ]),
  },
  {
    name: "a body holding a request line stays a body",
    data: post(`Content-Length: 47\r\nConnection: close\r\n`, ADMIN),
    statuses: [200],
    backend: ["POST /public HTTP/1.1"],
    check: (seen) => assert.equal(seen[0]!.body, ADMIN),
  },
  // Upgrade tricks: no tunnel the backend did not agree to, and none to HTTP/2.
  {
    name: "Upgrade: h2c is not passed on, so no tunnel opens past access control",
    data: `GET /public HTTP/1.1\r\n${H}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n` +
      `HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`,
    statuses: [200, 403],
    backend: ["GET /public HTTP/1.1"],
    opts: { responses: 2, then: ADMIN },
    check: (seen) => {
      assert.deepEqual(header(seen[0]!, "upgrade"), []);
      assert.deepEqual(header(seen[0]!, "http2-settings"), []);
    },
  },
  {
    name: "an upgrade the backend declines (426) opens no tunnel",
    data: `GET /public HTTP/1.1\r\n${H}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n`,
    statuses: [426, 403],
    backend: ["GET /public HTTP/1.1"],
    opts: { responses: 2, then: ADMIN },
  },
  // Field and request-line syntax (RFC 9112 §3, §5).
  {
    name: "whitespace between a field name and the colon is refused",
    data: post(`Content-Length : 47\r\n`, ADMIN),
    statuses: [400],
    backend: [],
  },
  {
    name: "obs-fold line continuation is refused",
    data: `GET /public HTTP/1.1\r\n${H}X-A: a\r\n b\r\n\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "a field name with a character outside token is refused",
    data: `GET /public HTTP/1.1\r\n${H}X(A): b\r\n\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "a method with a character outside token is refused",
    data: `G(T /public HTTP/1.1\r\n${H}\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "a request line with two spaces after the method is refused",
    data: `GET  /public HTTP/1.1\r\n${H}\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "a request line with a space before the version's end is refused",
    data: `GET /public HTTP/1.1 \r\n${H}\r\n`,
    statuses: [400],
    backend: [],
  },
  {
    name: "a target with a control character is refused",
    data: `GET /public\x01x HTTP/1.1\r\n${H}\r\n`,
    statuses: [400],
    backend: [],
  },
];

function statusesOf(answers: Answer[]): number[] {
  return answers.map((a) => a.status);
}

Deno.test({
  name: "meshd's HTTP entrypoint refuses the smuggling corpus and forwards only what it checked",
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  const env = await startEnv();
  const { backend } = env;
  let sentinel = 0;
  /** Sends a request of its own and waits until the backend has it: earlier bytes are in. */
  const settle = async () => {
    const path = `/public/sentinel-${++sentinel}`;
    const r = await send(
      CLIENT_POD,
      env.http,
      `GET ${path} HTTP/1.1\r\n${H}Connection: close\r\n\r\n`,
    );
    assert.equal(r.answers[0]?.status, 200, `sentinel: ${r.raw.slice(0, 200)}`);
  };
  const ours = (r: SeenRequest) => !r.line.includes("/public/sentinel-");
  const failures: string[] = [];
  try {
    for (const c of CORPUS) {
      const ok = await t.step(c.name, async () => {
        const mark = backend.requests.length;
        const rawMark = backend.raw.map((r) => r.length);
        const ex = await send(CLIENT_POD, env.http, c.data, {
          responses: c.statuses.length,
          ...c.opts,
        });
        await settle();
        const seen = backend.requests.slice(mark).filter(ours);
        const newRaw = backend.raw.map((r, i) => r.slice(rawMark[i] ?? 0)).join("");
        assert.deepEqual(
          statusesOf(ex.answers),
          c.statuses,
          `meshd answered ${JSON.stringify(ex.raw.slice(0, 300))}` +
            (ex.timedOut ? " and then nothing until the deadline" : ""),
        );
        assert.deepEqual(seen.map((r) => r.line), c.backend, "the requests the backend read");
        assert.ok(
          !newRaw.includes("/admin") || seen.some((r) => r.body.includes("/admin")),
          `/admin reached the backend outside a body: ${JSON.stringify(newRaw.slice(0, 300))}`,
        );
        c.check?.(seen, ex);
      });
      if (!ok) failures.push(c.name);
    }
    await t.step("the backend never read a request for /admin", () => {
      const admin = backend.requests.filter((r) => r.line.includes("/admin"));
      assert.deepEqual(admin, []);
    });
  } finally {
    await env.stop();
  }
  if (failures.length > 0) console.error(`failed cases:\n  ${failures.join("\n  ")}`);
});

Deno.test({
  name: "meshd's HTTP entrypoint never hands a smuggled prefix's answer to another client",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const env = await startEnv();
  try {
    // The attacker's body starts a request that the victim's request would complete on a
    // reused backend connection, if meshd let the body pass as a request.
    const prefix = `GET /admin HTTP/1.1\r\n${H}X-Ignore: `;
    const attack = `POST /x HTTP/1.1\r\n${H}Connection: close, Content-Length\r\n` +
      `Content-Length: ${prefix.length}\r\n\r\n${prefix}`;
    const a = await send(CLIENT_POD, env.http, attack, { untilClose: true });
    const victims: string[] = [];
    for (let i = 0; i < 3; i++) {
      const v = await send(
        VICTIM_POD,
        env.http,
        `GET /public/victim-${i} HTTP/1.1\r\n${H}Connection: close\r\n\r\n`,
      );
      victims.push(`${v.answers[0]?.status} ${v.answers[0]?.body}`);
    }
    // Each victim got the answer to its own request, not to the attacker's.
    assert.deepEqual(victims, [0, 1, 2].map((i) => `200 GET /public/victim-${i} HTTP/1.1`));
    assert.deepEqual(env.backend.requests.filter((r) => r.line.includes("/admin")), []);
    assert.equal(a.answers[0]?.status, 400, a.raw.slice(0, 300));
  } finally {
    await env.stop();
  }
});

/** Fields of a valid request to the h2c service, before the case's own. */
const h2Base = (path = "/public/h2"): [string, string][] => [
  [":method", "GET"],
  [":scheme", "http"],
  [":path", path],
  [":authority", H2_HOST],
];

interface H2Case {
  name: string;
  fields: [string, string][];
}

// RFC 9113 §8.2.1 (field validity), §8.2.2 (connection-specific fields), §8.3.1 (pseudo-headers).
const H2_CORPUS: H2Case[] = [
  ...["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"].map((
    name,
  ): H2Case => ({
    name: `a request with the connection-specific field "${name}"`,
    fields: [...h2Base(), [name, name === "transfer-encoding" ? "chunked" : "x"]],
  })),
  { name: `a request with "te: gzip"`, fields: [...h2Base(), ["te", "gzip"]] },
  { name: "a request with an upper-case field name", fields: [...h2Base(), ["X-Upper", "1"]] },
  { name: "a value with a CR", fields: [...h2Base(), ["x-a", "a\rb"]] },
  { name: "a value with a LF", fields: [...h2Base(), ["x-a", "a\nb"]] },
  { name: "a value with a NUL", fields: [...h2Base(), ["x-a", "a\0b"]] },
  { name: "a value with a leading space", fields: [...h2Base(), ["x-a", " a"]] },
  { name: "a :path that is not origin-form", fields: h2Base("admin") },
  { name: "a :path with a CRLF", fields: h2Base(`/public\r\n\r\n${ADMIN}`) },
  { name: "no :path", fields: h2Base().filter(([k]) => k !== ":path") },
  { name: "two :path fields", fields: [...h2Base(), [":path", "/admin"]] },
  { name: "an unknown pseudo-header", fields: [...h2Base(), [":evil", "1"]] },
  {
    name: "a pseudo-header after a regular field",
    fields: [...h2Base().slice(0, 3), ["x-a", "1"], [":authority", H2_HOST]],
  },
  {
    name: "a Host that differs from :authority",
    fields: [...h2Base(), ["host", "web.default.mesh"]],
  },
];

Deno.test({
  name: "meshd's h2c entrypoint answers malformed requests itself and forwards none of them",
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  const env = await startEnv();
  try {
    await t.step("a well-formed request with te: trailers is forwarded", async () => {
      const before = env.h2.seen.length;
      const r = await h2Request(CLIENT_POD, env.http, [...h2Base("/public/ok"), [
        "te",
        "trailers",
      ]]);
      assert.equal(r.status, 200, JSON.stringify(r));
      assert.equal(env.h2.seen.length, before + 1);
    });
    for (const c of H2_CORPUS) {
      // meshd decodes HPACK itself, so a value with CR, LF or NUL reaches its checks too (a
      // library below it used to drop such a field first).
      await t.step(`${c.name} is malformed (400 or a stream error) and not forwarded`, async () => {
        const before = env.h2.seen.length;
        const r = await h2Request(CLIENT_POD, env.http, c.fields);
        const refused = r.status === 400 || r.reset > 0 || r.goaway > 0;
        assert.ok(refused, `expected 400 or a reset, got ${JSON.stringify(r)}`);
        // The backend saw nothing new (a sentinel after this case would arrive after it).
        const after = await h2Request(CLIENT_POD, env.http, h2Base("/public/h2-sentinel"));
        assert.equal(after.status, 200, JSON.stringify(after));
        const forwarded = env.h2.seen.slice(before).filter((h) =>
          h[":path"] !== "/public/h2-sentinel"
        );
        assert.deepEqual(forwarded, [], "the h2c backend got the malformed request");
      });
    }
  } finally {
    await env.stop();
  }
});
