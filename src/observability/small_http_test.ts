import assert from "node:assert/strict";
import { Logger } from "./log.ts";
import { MAX_HEAD_BYTES, serveSmallHttp, type SmallHttpOptions } from "./small_http.ts";

const quiet = () => new Logger({ level: "error", write: () => {} });

function server(extra: Partial<SmallHttpOptions> = {}) {
  return serveSmallHttp({
    hostname: "127.0.0.1",
    port: 0,
    logger: quiet(),
    name: "test",
    handler: (req) => new Response(`${req.method} ${new URL(req.url).pathname}\n`),
    ...extra,
  });
}

/** Sends `bytes` on a new connection; what came back until the server closed it. */
async function exchange(port: number, bytes: Uint8Array | string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const data = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
    await conn.write(data).catch(() => {});
    let out = "";
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) return out;
      out += new TextDecoder().decode(buf.subarray(0, n));
    }
  } finally {
    conn.close();
  }
}

Deno.test("serveSmallHttp answers GET and HEAD once per connection, and refuses what is not a request", async () => {
  const s = server();
  const port = s.addr.port;
  try {
    const get = await exchange(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert.match(get, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(get, /\r\ncontent-length: 13\r\nconnection: close\r\n\r\nGET \/healthz\n$/);
    const head = await exchange(port, "HEAD /x HTTP/1.0\r\n\r\n");
    assert.match(head, /^HTTP\/1\.1 200 OK\r\n[^]*content-length: 8\r\n[^]*\r\n\r\n$/);
    // pipelined: the first is answered and the connection closed
    const two = await exchange(port, "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    assert.equal(two.match(/HTTP\/1\.1 /g)?.length, 1);
    assert.match(await exchange(port, "POST /x HTTP/1.1\r\n\r\n"), /^HTTP\/1\.1 405 /);
    assert.match(await exchange(port, "\x16\x03\x01\x02\x00\x01\0\0\r\n\r\n"), /^HTTP\/1\.1 400 /);
    assert.match(
      await exchange(port, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
      /^HTTP\/1\.1 400 /,
    );
    assert.match(await exchange(port, "GET http://x/ HTTP/1.1\r\n\r\n"), /^HTTP\/1\.1 400 /);
    const huge = `GET /healthz HTTP/1.1\r\nX-Big: ${"a".repeat(MAX_HEAD_BYTES)}\r\n\r\n`;
    assert.match(await exchange(port, huge), /^HTTP\/1\.1 431 /);
  } finally {
    await s.shutdown();
  }
});

Deno.test("serveSmallHttp closes a request head that does not come whole in time, however slowly it drips", async () => {
  const s = server({ headTimeoutMs: 300 });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
  try {
    const started = performance.now();
    const drip = setInterval(
      () => conn.write(new TextEncoder().encode("X: y\r\n")).catch(() => {}),
      50,
    );
    await conn.write(new TextEncoder().encode("GET / HTTP/1.1\r\n"));
    const n = await conn.read(new Uint8Array(100)).catch(() => null);
    clearInterval(drip);
    assert.equal(n, null);
    const took = performance.now() - started;
    assert.ok(took >= 250 && took < 3000, `closed after ${took} ms`);
  } finally {
    conn.close();
    await s.shutdown();
  }
});

Deno.test("serveSmallHttp over a cap closes the oldest connection, not the newest", async () => {
  const s = server({ maxPerSource: 3, maxConnections: 5 });
  const port = s.addr.port;
  const idle = await Promise.all(
    Array.from({ length: 3 }, () => Deno.connect({ hostname: "127.0.0.1", port })),
  );
  try {
    // the newest, over the per-address cap, is answered; the oldest idle one is closed
    assert.match(await exchange(port, "GET / HTTP/1.1\r\n\r\n"), /^HTTP\/1\.1 200 /);
    assert.equal(await idle[0]!.read(new Uint8Array(10)).catch(() => null), null);
  } finally {
    for (const c of idle) c.close();
    await s.shutdown();
  }
});

Deno.test("serveSmallHttp answers on an IPv6 address (the request's URL names it in brackets)", async () => {
  const s = server({ hostname: "::1" });
  try {
    const r = await fetch(`http://[::1]:${s.addr.port}/readyz`);
    assert.equal(r.status, 200);
    assert.equal(await r.text(), "GET /readyz\n");
  } finally {
    await s.shutdown();
  }
});
