/**
 * Pooled backend connections: bytes a backend sends after a complete response (a body on a
 * HEAD or 204 answer, an unsolicited second response) must never be taken for the response to
 * the next request on that connection, which may be another client's.
 */
import assert from "node:assert/strict";
import { Logger } from "../../src/observability/mod.ts";
import { EndpointPool } from "../../src/proxy/endpoint_pool.ts";
import { HttpProxy } from "../../src/proxy/http_proxy.ts";
import { buildRouteTable } from "../../src/proxy/route_table.ts";
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";
import { RawClient } from "../../src/proxy/_testing.ts";
import { waitFor } from "../testenv/process.ts";

const PROXY = "127.0.110.1";
const BACKEND = "127.0.110.2";
const quiet = new Logger({ level: "error", write: () => {} });
const enc = new TextEncoder();
const dec = new TextDecoder();

/** A whole response a hostile or broken backend slips onto the connection. */
const INJECTED = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nINJECTED";

/**
 * A keep-alive backend that answers `GET /p` with `path=/p`, and misbehaves on three paths:
 * `HEAD /head-body` and `GET /no-content` are answered with a body they must not have, and
 * `GET /late` with a normal response followed by {@linkcode INJECTED}. The extra bytes go out
 * in a write of their own a moment later, so they arrive after the response is complete.
 * `injected` counts the extra writes done; `closed` the connections the proxy closed.
 */
function hostileBackend(hostname: string): {
  port: number;
  injected: () => number;
  closed: () => number;
  close: () => void;
} {
  const listener = Deno.listen({ hostname, port: 0 });
  const conns = new Set<Deno.Conn>();
  let injected = 0;
  let closed = 0;
  const write = async (conn: Deno.Conn, s: string) => {
    let b = enc.encode(s);
    while (b.length > 0) b = b.subarray(await conn.write(b));
  };
  const later = (conn: Deno.Conn) =>
    setTimeout(() => {
      write(conn, INJECTED).then(() => injected++, () => {});
    }, 100);
  (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      (async () => {
        const buf = new Uint8Array(4096);
        let pending = "";
        for (;;) {
          let end: number;
          while ((end = pending.indexOf("\r\n\r\n")) < 0) {
            const n = await conn.read(buf);
            if (n === null) return;
            pending += dec.decode(buf.subarray(0, n));
          }
          const [method, path] = pending.slice(0, end).split(" ");
          pending = pending.slice(end + 4);
          if (method === "HEAD" && path === "/head-body") {
            await write(conn, "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n");
            later(conn);
          } else if (path === "/no-content") {
            await write(conn, "HTTP/1.1 204 No Content\r\n\r\n");
            later(conn);
          } else if (path === "/late") {
            await write(conn, "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate");
            later(conn);
          } else {
            const body = `path=${path}`;
            await write(conn, `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
          }
        }
      })().catch(() => {}).finally(() => {
        closed++;
        conns.delete(conn);
        try {
          conn.close();
        } catch { /* closed */ }
      });
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    injected: () => injected,
    closed: () => closed,
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

/** One request on a fresh client connection. */
async function request(
  port: number,
  method: string,
  path: string,
): Promise<{ status: number; body: string }> {
  const client = await RawClient.connect(port, PROXY);
  try {
    const res = await client.request(
      `${method} ${path} HTTP/1.1\r\nHost: web.default.mesh\r\nConnection: close\r\n\r\n`,
      { headRequest: method === "HEAD" },
    );
    return { status: res.status, body: res.body };
  } finally {
    client.close();
  }
}

Deno.test("HttpProxy never reads bytes a backend sent after a complete response as the next client's response", async () => {
  const backend = hostileBackend(BACKEND);
  const table = buildRouteTable(meshConfig([{
    name: "web",
    ports: [{ port: 80, endpoints: [endpoint(BACKEND, backend.port)] }],
  }]));
  const proxy = new HttpProxy({
    hostname: PROXY,
    port: 0,
    routes: () => table,
    pool: new EndpointPool(),
    logger: quiet,
  });
  try {
    const cases: [string, string, number][] = [
      ["HEAD", "/head-body", 200],
      ["GET", "/no-content", 204],
      ["GET", "/late", 200],
    ];
    for (const [i, [method, path, status]] of cases.entries()) {
      const first = await request(proxy.addr.port, method, path);
      assert.equal(first.status, status, `${method} ${path}`);
      await waitFor(
        `${method} ${path}: the extra bytes sent`,
        () => backend.injected() > i || undefined,
      );
      // The proxy should drop the poisoned connection; give it a moment to, then go on either way.
      await waitFor(
        `${method} ${path}: the poisoned connection closed`,
        () => backend.closed() > i || undefined,
        3000,
      ).catch(() => {});
      // Another client, on another connection: it must get its own answer.
      const next = await request(proxy.addr.port, "GET", `/next-${i}`);
      assert.equal(next.body, `path=/next-${i}`, `after ${method} ${path}`);
      assert.equal(next.status, 200);
    }
  } finally {
    await proxy.close();
    backend.close();
  }
});
