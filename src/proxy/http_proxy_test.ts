/**
 * What HttpProxy puts on the wire, byte for byte, against a raw backend on loopback
 * (127.0.61.0/24) that records each request head and answers with bytes the test chose.
 */
import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { NodeProxy } from "./mod.ts";
import { EndpointPool } from "./endpoint_pool.ts";
import { HttpProxy } from "./http_proxy.ts";
import { buildRouteTable } from "./route_table.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { RawClient } from "./_testing.ts";
import { waitFor } from "../_testing.ts";

const HOST = "127.0.61.5";
const quiet = new Logger({ level: "error", write: () => {} });
const dec = new TextDecoder("latin1");
const enc = new TextEncoder();

/** A backend that reads request heads (no bodies) and answers each with `answer(head)`. */
function rawBackend(answer: (head: string) => string) {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const heads: string[] = [];
  const conns = new Set<Deno.Conn>();
  const serve = async (conn: Deno.Conn) => {
    conns.add(conn);
    let buf = "";
    const chunk = new Uint8Array(16 * 1024);
    try {
      for (;;) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) {
          const n = await conn.read(chunk);
          if (n === null) return;
          buf += dec.decode(chunk.subarray(0, n));
          continue;
        }
        const head = buf.slice(0, end + 4);
        buf = buf.slice(end + 4);
        heads.push(head);
        let out = enc.encode(answer(head));
        while (out.length > 0) out = out.subarray(await conn.write(out));
      }
    } catch {
      /* closed */
    } finally {
      conns.delete(conn);
      try {
        conn.close();
      } catch { /* closed */ }
    }
  };
  const done = (async () => {
    for await (const conn of listener) serve(conn);
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    heads,
    async close() {
      listener.close();
      for (const c of conns) c.close();
      await done.catch(() => {});
    },
  };
}

async function withProxyTo(
  backendPort: number,
  fn: (port: number) => Promise<void>,
): Promise<void> {
  const proxy = new NodeProxy({ hostname: HOST, httpPort: 0, logger: quiet });
  await proxy.start();
  try {
    await proxy.apply(meshConfig([{
      name: "web",
      ports: [{ port: 80, endpoints: [endpoint(HOST, backendPort)] }],
    }]));
    await fn(Number(proxy.httpAddress.split(":").at(-1)));
  } finally {
    await proxy.stop();
  }
}

Deno.test("HttpProxy forwards a request head that needs no edit as it came, plus its own fields", async () => {
  const backend = rawBackend(() => "HTTP/1.1 204 No Content\r\n\r\n");
  try {
    await withProxyTo(backend.port, async (port) => {
      const client = await RawClient.connect(port, HOST);
      try {
        const head = "GET /a?b=1 HTTP/1.1\r\nx-first: 1\r\nhost: web.default.mesh\r\n" +
          "X-Spaced:   a  b\r\n\r\n";
        const r = await client.request(head);
        assert.equal(r.status, 204);
        // The bytes as sent, field order and spacing kept, then what the proxy adds.
        assert.match(
          backend.heads[0]!,
          new RegExp(
            `^${head.slice(0, -2).replaceAll("?", "\\?")}` +
              // The address the client connected from, in both fields.
              "x-forwarded-for: ([0-9.]+)\r\nforwarded: for=\\1\r\n" +
              "via: 1\\.1 meshd-[0-9a-f]{8}\r\n\r\n$",
          ),
        );
        // A head that needs an edit is rebuilt: hop-by-hop fields go (RFC 9110 §7.6.1).
        await client.request(
          "GET /b HTTP/1.1\r\nx-first: 1\r\nHost: web.default.mesh\r\nTE: trailers\r\n\r\n",
        );
        assert.match(
          backend.heads[1]!,
          /^GET \/b HTTP\/1\.1\r\nx-first: 1\r\nHost: web\.default\.mesh\r\nx-forwarded-for: /,
        );
        assert.doesNotMatch(backend.heads[1]!, /^te:/im);
        // Connection and the fields it names go; the other lines stay as they came.
        await client.request(
          "GET /c HTTP/1.1\r\nConnection: x-drop, keep-alive\r\nHost: web.default.mesh\r\n" +
            "X-Drop: 1\r\nKeep-Alive: timeout=5\r\nx-kept:  1\r\n\r\n",
        );
        assert.match(
          backend.heads[2]!,
          /^GET \/c HTTP\/1\.1\r\nHost: web\.default\.mesh\r\nx-kept: {2}1\r\nx-forwarded-for: /,
        );
        // A chunked body keeps its framing: Transfer-Encoding is written again.
        await client.request(
          "POST /d HTTP/1.1\r\nHost: web.default.mesh\r\nTransfer-Encoding: chunked\r\n\r\n" +
            "2\r\nhi\r\n0\r\n\r\n",
        );
        assert.match(backend.heads[3]!, /^POST \/d HTTP\/1\.1\r\n/);
        assert.match(backend.heads[3]!, /\r\ntransfer-encoding: chunked\r\n/);
      } finally {
        client.close();
      }
    });
  } finally {
    await backend.close();
  }
});

Deno.test("HttpProxy passes a plain response head through as it came", async () => {
  const response = "HTTP/1.1 200 OK\r\nX-Spaced:   a  b\r\nContent-Length: 2\r\n\r\nok";
  const backend = rawBackend(() => response);
  try {
    await withProxyTo(backend.port, async (port) => {
      const client = await RawClient.connect(port, HOST);
      try {
        const r = await client.request("GET / HTTP/1.1\r\nHost: web.default.mesh\r\n\r\n");
        assert.equal(r.head, "HTTP/1.1 200 OK\nX-Spaced:   a  b\nContent-Length: 2\n");
        assert.equal(r.body, "ok");
        // The client's Connection: close is answered with one added before the empty line.
        const last = await client.request(
          "GET / HTTP/1.1\r\nHost: web.default.mesh\r\nConnection: close\r\n\r\n",
        );
        assert.equal(
          last.head,
          "HTTP/1.1 200 OK\nX-Spaced:   a  b\nContent-Length: 2\nconnection: close\n",
        );
        assert.equal(last.body, "ok");
      } finally {
        client.close();
      }
    });
  } finally {
    await backend.close();
  }
});

Deno.test("HttpProxy keeps each response with its request while heads share lent buffers", async () => {
  // Each answer names the path asked for, in a body of its own length.
  const backend = rawBackend((head) => {
    const path = /^GET (\S+)/.exec(head)![1]!;
    const body = `${path}${"x".repeat(path.length * 37 % 3000)}`;
    return `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
  });
  try {
    await withProxyTo(backend.port, async (port) => {
      await Promise.all([0, 1, 2, 3, 4, 5].map(async (c) => {
        const client = await RawClient.connect(port, HOST);
        try {
          for (let i = 0; i < 100; i++) {
            const path = `/c${c}/r${i}`;
            const r = await client.request(
              `GET ${path} HTTP/1.1\r\nHost: web.default.mesh\r\n\r\n`,
            );
            assert.equal(r.status, 200);
            assert.ok(
              r.body.startsWith(`${path}x`) || r.body === path,
              `${path}: ${r.body.slice(0, 40)}`,
            );
            assert.equal(r.body.length, path.length + path.length * 37 % 3000, path);
          }
        } finally {
          client.close();
        }
      }));
    });
  } finally {
    await backend.close();
  }
});

Deno.test("HttpProxy closes a client that pipelines requests and never reads the small answers, after the write timeout", async () => {
  // Each answer fits the backend reader's buffer whole, so it goes to the client in one
  // write of the plain-response path, not through the body copy.
  const body = "x".repeat(1024);
  const backend = rawBackend(() =>
    `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n${body}`
  );
  const drops: string[] = [];
  const table = buildRouteTable(meshConfig([{
    name: "web",
    ports: [{ port: 80, endpoints: [endpoint(HOST, backend.port)] }],
  }]));
  const proxy = new HttpProxy({
    hostname: HOST,
    port: 0,
    routes: () => table,
    pool: new EndpointPool(),
    logger: quiet,
    writeTimeoutMs: 300,
    drop: (reason) => drops.push(reason),
  });
  const conn = await Deno.connect({ hostname: HOST, port: proxy.addr.port });
  try {
    // Bounded: at most 30,000 requests (30 MiB of answers), more than the socket buffers hold.
    const request = enc.encode("GET / HTTP/1.1\r\nHost: web.default.mesh\r\n\r\n".repeat(100));
    const sending = (async () => {
      for (let i = 0; i < 300; i++) await conn.write(request);
    })().catch(() => {}); // the proxy closes the connection under it
    await waitFor("the write timeout", () => drops.includes("write_timeout") || undefined, 20_000);
    await sending;
    // The connection is closed: reading drains what was sent and then ends.
    const buf = new Uint8Array(256 * 1024);
    const ended = await (async () => {
      try {
        while ((await conn.read(buf)) !== null) { /* the answers written before the timeout */ }
      } catch { /* reset */ }
      return true;
    })();
    assert.ok(ended);
    assert.ok(backend.heads.length >= 1);
  } finally {
    try {
      conn.close();
    } catch { /* closed by the proxy */ }
    await proxy.close();
    await backend.close();
  }
});
