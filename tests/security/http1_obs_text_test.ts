/**
 * Field values with obs-text (RFC 9110 §5.5: bytes 0x80-0xff) reach the backend byte for byte,
 * also when meshd rebuilds the head (X-Forwarded-For, Connection tokens), on 127.0.69.40-41.
 */
import assert from "node:assert/strict";
import { Logger } from "../../src/observability/mod.ts";
import { NodeProxy } from "../../src/proxy/mod.ts";
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";

Deno.test("NodeProxy forwards the obs-text bytes 0x80-0x9f of an HTTP/1 field value unchanged", async () => {
  // A backend that records the bytes of one request head and answers 204.
  const listener = Deno.listen({ hostname: "127.0.69.40", port: 0 });
  const got = (async () => {
    const conn = await listener.accept();
    const buf = new Uint8Array(64 * 1024);
    let n = 0;
    while (!new TextDecoder("latin1").decode(buf.subarray(0, n)).includes("\r\n\r\n")) {
      const r = await conn.read(buf.subarray(n));
      if (r === null) break;
      n += r;
    }
    await conn.write(
      new TextEncoder().encode("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"),
    );
    conn.close();
    return buf.slice(0, n);
  })();
  const proxy = new NodeProxy({
    hostname: "127.0.69.41",
    httpPort: 0,
    logger: new Logger({ level: "error", write: () => {} }),
  });
  await proxy.start();
  try {
    await proxy.apply(meshConfig([{
      name: "web",
      ports: [{ port: 80, endpoints: [endpoint("127.0.69.40", listener.addr.port)] }],
    }]));
    const c = await Deno.connect({
      hostname: "127.0.69.41",
      port: Number(proxy.httpAddress.split(":")[1]),
    });
    const value = [0x61, 0x82, 0x85, 0x86, 0x91, 0x9b, 0xff, 0x62];
    const head = [
      ...new TextEncoder().encode(
        "GET / HTTP/1.1\r\nHost: web.default.mesh\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive, x-drop\r\nX-Obs: ",
      ),
      ...value,
      ...new TextEncoder().encode("\r\nConnection: close\r\n\r\n"),
    ];
    await c.write(Uint8Array.from(head));
    const seen = await got;
    c.close();
    const at = new TextDecoder("latin1").decode(seen).toLowerCase().indexOf("x-obs: ") + 7;
    assert.deepEqual([...seen.subarray(at, at + value.length)], value);
  } finally {
    await proxy.stop();
    listener.close();
  }
});
