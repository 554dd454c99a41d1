/**
 * Holes found in an adversarial pass over the issue 18 fixes, each driven against the HTTP
 * entrypoint as a client would, with its limits lowered so the case is cheap.
 */
import assert from "node:assert/strict";
import { Logger } from "../../src/observability/mod.ts";
import { ConnectionLimiter } from "../../src/proxy/conn_limiter.ts";
import { EndpointPool } from "../../src/proxy/endpoint_pool.ts";
import { HttpProxy } from "../../src/proxy/http_proxy.ts";
import { buildRouteTable } from "../../src/proxy/route_table.ts";
import { meshConfig } from "../testenv/mesh.ts";
import { waitFor } from "../testenv/process.ts";

const ADDRESS = "127.0.100.20";
const quiet = new Logger({ level: "error", write: () => {} });

/** Reads until the peer closes; resolves true then, false if `ms` passed first. */
async function closedWithin(conn: Deno.Conn, ms: number): Promise<boolean> {
  const timer = setTimeout(() => conn.close(), ms);
  const buf = new Uint8Array(4096);
  try {
    for (;;) if ((await conn.read(buf)) === null) return true;
  } catch {
    return false; // our own close at the deadline
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

Deno.test("HttpProxy closes an idle HTTP/2 client as it does an idle HTTP/1 one, and frees its slot", async () => {
  const limiter = new ConnectionLimiter({ max: 100, perSource: 100 }, () => {});
  const proxy = new HttpProxy({
    hostname: ADDRESS,
    port: 0,
    routes: () => buildRouteTable(meshConfig([])),
    pool: new EndpointPool(),
    logger: quiet,
    clientIdleMs: 300,
    limiter,
  });
  try {
    // The HTTP/2 preface and an empty SETTINGS frame, then nothing: a slowloris over h2c.
    const preface = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    const settings = new Uint8Array([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    const cases: [string, Uint8Array][] = [
      ["HTTP/1 head never finished", new TextEncoder().encode("GET / HTTP/1.1\r\nHost: a")],
      ["HTTP/2 preface only", new Uint8Array([...preface, ...settings])],
    ];
    for (const [what, bytes] of cases) {
      const conn = await Deno.connect({ hostname: ADDRESS, port: proxy.addr.port });
      await conn.write(bytes);
      assert.ok(await closedWithin(conn, 10_000), `${what}: still open after 10 s`);
      await waitFor(`${what}: the connection slot back`, () => limiter.open === 0 || undefined);
    }
  } finally {
    await proxy.close();
  }
});
