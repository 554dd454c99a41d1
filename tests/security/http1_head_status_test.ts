/**
 * The status the HTTP/1 entrypoint answers a malformed head with: 431 only for a head over the
 * size limit or with more than 100 fields (RFC 6585 §5), 400 for every other malformed head (RFC 9110 §15.5.1), whatever
 * words the request itself holds. Driven against an in-process {@linkcode HttpProxy} that
 * routes nothing: a malformed head is refused before any routing.
 */
import assert from "node:assert/strict";
import { Logger } from "../../src/observability/mod.ts";
import { EndpointPool } from "../../src/proxy/endpoint_pool.ts";
import { HttpProxy } from "../../src/proxy/http_proxy.ts";
import { buildRouteTable } from "../../src/proxy/route_table.ts";
import { meshConfig } from "../../src/topology/_testing.ts";

const PROXY = "127.0.70.120";
const quiet = new Logger({ level: "error", write: () => {} });

/** Sends `head` on a new connection and returns the status line meshd answers with. */
async function statusLine(port: number, head: string): Promise<string> {
  const conn = await Deno.connect({ hostname: PROXY, port });
  const timer = setTimeout(() => conn.close(), 10_000);
  let text = "";
  try {
    const bytes = new Uint8Array(head.length);
    for (let i = 0; i < head.length; i++) bytes[i] = head.charCodeAt(i);
    for (let sent = 0; sent < bytes.length;) sent += await conn.write(bytes.subarray(sent));
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
      if (text.includes("\r\n")) break;
    }
  } catch {
    /* closed at the deadline, or reset */
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed */ }
  }
  return text.split("\r\n")[0] ?? "";
}

const CASES: { name: string; head: string; status: number }[] = [
  {
    // RFC 9112 §2.3: only HTTP/1.0 and 1.1 are read here; the target has the word "over".
    name: "an unsupported version, its target holding the word over",
    head: "GET /cover HTTP/1.2\r\nHost: web.default.mesh\r\n\r\n",
    status: 400,
  },
  {
    // RFC 9112 §5.1: no whitespace between a field name and the colon.
    name: "a space before the colon, in a field named Overflow",
    head: "GET / HTTP/1.1\r\nHost: web.default.mesh\r\nOverflow : 1\r\n\r\n",
    status: 400,
  },
  {
    // RFC 9110 §5.5: no control character in a value.
    name: "a NUL in a field named X-Over",
    head: "GET / HTTP/1.1\r\nHost: web.default.mesh\r\nX-Over: a\0b\r\n\r\n",
    status: 400,
  },
  {
    name: "a plain malformed request line",
    head: "GET  / HTTP/1.1\r\nHost: web.default.mesh\r\n\r\n",
    status: 400,
  },
  {
    // RFC 6585 §5: the head is over meshd's 64 KiB limit.
    name: "a head over 64 KiB",
    head: `GET / HTTP/1.1\r\nHost: web.default.mesh\r\nX-Big: ${"a".repeat(70_000)}\r\n\r\n`,
    status: 431,
  },
  {
    // More fields than Envoy's and HAProxy's default caps, each tiny: well within 64 KiB.
    name: "101 header fields",
    head: `GET / HTTP/1.1\r\nHost: web.default.mesh\r\n${"a: 1\r\n".repeat(100)}\r\n`,
    status: 431,
  },
  {
    // The same through the line-by-line parser (a tab before a value leaves the fast scan).
    name: "101 header fields, one with a tab",
    head: `GET / HTTP/1.1\r\nHost: web.default.mesh\r\nb:\t1\r\n${"a: 1\r\n".repeat(99)}\r\n`,
    status: 431,
  },
  {
    // 100 is the cap: parsed, then not routed (this proxy routes nothing).
    name: "100 header fields",
    head: `GET / HTTP/1.1\r\nHost: web.default.mesh\r\n${"a: 1\r\n".repeat(99)}\r\n`,
    status: 404,
  },
];

Deno.test("HttpProxy answers 431 only for a head over the limit, 400 for any other malformed head", async () => {
  const proxy = new HttpProxy({
    hostname: PROXY,
    port: 0,
    routes: () => buildRouteTable(meshConfig([])),
    pool: new EndpointPool(),
    logger: quiet,
  });
  try {
    for (const c of CASES) {
      const line = await statusLine(proxy.addr.port, c.head);
      assert.match(line, new RegExp(`^HTTP/1\\.1 ${c.status} `), `${c.name}: got "${line}"`);
    }
  } finally {
    await proxy.close();
  }
});
