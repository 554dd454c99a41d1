/**
 * An upgraded (WebSocket) tunnel whose backend never reads: the proxy's writes to it stop
 * making progress, and `--write-timeout` must close the tunnel as it does for a client that
 * never reads.
 */
import assert from "node:assert/strict";
import { Logger } from "../../src/observability/mod.ts";
import { ConnectionLimiter } from "../../src/proxy/conn_limiter.ts";
import { EndpointPool } from "../../src/proxy/endpoint_pool.ts";
import { HttpProxy } from "../../src/proxy/http_proxy.ts";
import { buildRouteTable } from "../../src/proxy/route_table.ts";
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";
import { waitFor } from "../testenv/process.ts";

const PROXY = "127.0.110.20";
const BACKEND = "127.0.110.21";
const quiet = new Logger({ level: "error", write: () => {} });
const enc = new TextEncoder();

/** A backend that answers the upgrade with 101 and then never reads again. */
function deafUpgradeBackend(hostname: string): { port: number; close: () => void } {
  const listener = Deno.listen({ hostname, port: 0 });
  const conns = new Set<Deno.Conn>();
  (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      (async () => {
        const buf = new Uint8Array(4096);
        let head = "";
        while (!head.includes("\r\n\r\n")) {
          const n = await conn.read(buf);
          if (n === null) return;
          head += new TextDecoder().decode(buf.subarray(0, n));
        }
        await conn.write(
          enc.encode(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
          ),
        );
        // Reads nothing more: what the proxy sends piles up in the socket buffers.
      })().catch(() => {});
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    close: () => {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

Deno.test("HttpProxy applies the write timeout to the backend side of an upgraded connection", async () => {
  const backend = deafUpgradeBackend(BACKEND);
  const drops: string[] = [];
  const limiter = new ConnectionLimiter({ max: 100, perSource: 100 }, () => {});
  const table = buildRouteTable(meshConfig([{
    name: "ws",
    ports: [{ port: 80, endpoints: [endpoint(BACKEND, backend.port)] }],
  }]));
  const proxy = new HttpProxy({
    hostname: PROXY,
    port: 0,
    routes: () => table,
    pool: new EndpointPool(),
    logger: quiet,
    writeTimeoutMs: 500,
    limiter,
    drop: (reason) => drops.push(reason),
  });
  const conn = await Deno.connect({ hostname: PROXY, port: proxy.addr.port });
  try {
    await conn.write(
      enc.encode(
        "GET /chat HTTP/1.1\r\nHost: ws.default.mesh\r\nConnection: Upgrade\r\n" +
          "Upgrade: websocket\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n",
      ),
    );
    const buf = new Uint8Array(4096);
    let head = "";
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      assert.ok(n !== null, "closed before the 101");
      head += new TextDecoder().decode(buf.subarray(0, n));
    }
    assert.match(head, /^HTTP\/1\.1 101 /);
    // The client sends without end (bounded: 512 MiB) until the proxy closes the tunnel.
    const block = new Uint8Array(64 * 1024).fill(120);
    let sent = 0;
    let closed = false;
    const flooding = (async () => {
      try {
        for (let i = 0; i < 8192; i++) sent += await conn.write(block);
      } catch {
        closed = true;
      }
    })();
    // Reads see the proxy's close as an end of stream (or a reset).
    const ended = (async () => {
      try {
        while ((await conn.read(buf)) !== null) { /* nothing is expected */ }
      } catch { /* reset */ }
      closed = true;
    })();
    await waitFor(
      "the proxy to close the tunnel to a backend that reads nothing",
      () => closed || undefined,
      20_000,
      100,
    );
    await waitFor("the client's slot back", () => limiter.open === 0 || undefined, 10_000);
    assert.ok(drops.includes("write_timeout"), `drops: ${JSON.stringify(drops)}, sent ${sent}`);
    try {
      conn.close();
    } catch { /* closed */ }
    await Promise.all([flooding, ended]);
  } finally {
    try {
      conn.close();
    } catch { /* closed by the proxy */ }
    await proxy.close();
    backend.close();
  }
});
