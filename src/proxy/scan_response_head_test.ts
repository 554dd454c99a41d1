import assert from "node:assert/strict";
import { bodyFraming, decodeLatin1, encodeLatin1, parseResponseHead } from "./http1.ts";
import { scanResponseHead } from "./scan_response_head.ts";

const bytes = (s: string) => encodeLatin1(s);

Deno.test("scanResponseHead() takes HTTP/1.1 heads framed by one Content-Length as they are", () => {
  const cases: { name: string; head: string; status: number; length: number }[] = [
    {
      name: "the usual",
      head: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
      status: 200,
      length: 2,
    },
    {
      name: "no reason",
      head: "HTTP/1.1 404\r\ncontent-length: 0\r\n\r\n",
      status: 404,
      length: 0,
    },
    {
      name: "empty reason",
      head: "HTTP/1.1 503 \r\nContent-Length: 7\r\n\r\n",
      status: 503,
      length: 7,
    },
    // RFC 9110 §5.5: a value may hold HTAB and obs-text; OWS around it is not part of it.
    {
      name: "OWS, HTAB and obs-text",
      head: "HTTP/1.1 200 Fine\r\nX-A:\t a\tb \xe9 \r\nCONTENT-LENGTH:  12 \r\n\r\n",
      status: 200,
      length: 12,
    },
    {
      name: "leading zeros",
      head: "HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\n",
      status: 200,
      length: 7,
    },
  ];
  for (const c of cases) {
    const head = bytes(c.head);
    const got = scanResponseHead(head);
    assert.deepEqual(got && { status: got.status, length: got.length }, {
      status: c.status,
      length: c.length,
    }, c.name);
    assert.equal(got!.raw, head, c.name);
  }
});

Deno.test("scanResponseHead() leaves every other head to the full parser", () => {
  const cases: { name: string; head: string }[] = [
    { name: "HTTP/1.0", head: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n" },
    { name: "101", head: "HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n" },
    { name: "1xx", head: "HTTP/1.1 103 Early Hints\r\nContent-Length: 0\r\n\r\n" },
    { name: "status over 599", head: "HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n" },
    { name: "four-digit status", head: "HTTP/1.1 2000 X\r\nContent-Length: 0\r\n\r\n" },
    { name: "no Content-Length (read to close)", head: "HTTP/1.1 200 OK\r\n\r\n" },
    { name: "chunked", head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" },
    // RFC 9110 §7.6.1: hop-by-hop fields are removed by a proxy.
    {
      name: "Connection",
      head: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
    },
    {
      name: "Keep-Alive",
      head: "HTTP/1.1 200 OK\r\nkeep-alive: timeout=5\r\nContent-Length: 2\r\n\r\n",
    },
    { name: "Upgrade", head: "HTTP/1.1 200 OK\r\nUpgrade: x\r\nContent-Length: 2\r\n\r\n" },
    { name: "Trailer", head: "HTTP/1.1 200 OK\r\nTrailer: x\r\nContent-Length: 2\r\n\r\n" },
    { name: "TE", head: "HTTP/1.1 200 OK\r\nTE: x\r\nContent-Length: 2\r\n\r\n" },
    {
      name: "Proxy-Authenticate",
      head: "HTTP/1.1 200 OK\r\nProxy-Authenticate: x\r\nContent-Length: 2\r\n\r\n",
    },
    // RFC 9112 §6.3: several Content-Length fields are compared by the full parser.
    {
      name: "two lengths",
      head: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
    },
    { name: "length list", head: "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n" },
    { name: "signed length", head: "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n" },
    {
      name: "16-digit length",
      head: "HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456\r\n\r\n",
    },
    { name: "empty length", head: "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n" },
    // RFC 9112 §2.2: bare CR or LF; §5.2: obsolete folding; RFC 9110 §5.5: CTL in a value.
    { name: "bare LF", head: "HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\n" },
    { name: "bare LF in a value", head: "HTTP/1.1 200 OK\r\nX: a\nb\r\nContent-Length: 2\r\n\r\n" },
    { name: "bare CR in a value", head: "HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\n" },
    { name: "NUL in a value", head: "HTTP/1.1 200 OK\r\nX: a\0b\r\nContent-Length: 2\r\n\r\n" },
    { name: "DEL in a value", head: "HTTP/1.1 200 OK\r\nX: a\x7fb\r\nContent-Length: 2\r\n\r\n" },
    { name: "CTL in the reason", head: "HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\n" },
    { name: "folded line", head: "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\n" },
    { name: "space before colon", head: "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n" },
    { name: "no colon", head: "HTTP/1.1 200 OK\r\nContent-Length 2\r\n\r\n" },
    { name: "non-token name", head: "HTTP/1.1 200 OK\r\nX(y): 1\r\nContent-Length: 2\r\n\r\n" },
    { name: "no empty line", head: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" },
    { name: "bytes after the head", head: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" },
    { name: "lower-case version", head: "http/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" },
  ];
  for (const c of cases) assert.equal(scanResponseHead(bytes(c.head)), null, c.name);
});

Deno.test("scanResponseHead() accepts only heads the full parser reads alike (bounded mutation)", () => {
  // A seeded generator: the same 20,000 mutations on every run.
  let seed = 21;
  const next = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const base =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nX-A: b\r\n\r\n";
  const alphabet = [0, 9, 10, 13, 32, 44, 58, 0x7f, 0xe9, 48, 49, 97, 65, 40];
  let plain = 0;
  for (let i = 0; i < 20_000; i++) {
    const head = bytes(base);
    for (let k = 1 + next(3); k > 0; k--) {
      head[next(head.length)] = alphabet[next(alphabet.length)]!;
    }
    const got = scanResponseHead(head);
    if (got === null) continue;
    plain++;
    const text = decodeLatin1(head);
    let parsed;
    try {
      parsed = parseResponseHead(text);
    } catch (e) {
      assert.fail(`${JSON.stringify(text)} passed the scan; the parser refused it: ${e}`);
    }
    const framing = bodyFraming(parsed, false, "GET");
    assert.equal(parsed.status, got.status, JSON.stringify(text));
    assert.deepEqual(
      framing,
      got.length === 0 ? { kind: "none" } : { kind: "length", length: got.length },
      JSON.stringify(text),
    );
  }
  // Most single-byte edits of a value keep the head plain: the check above ran.
  assert.ok(plain > 1000, `only ${plain} mutated heads were plain`);
});
