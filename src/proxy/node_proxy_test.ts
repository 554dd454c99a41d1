/**
 * The node proxy in process, from MeshConfig to what a client on loopback sees. Backends are
 * real servers on 127.0.0.1; no Kubernetes object is involved.
 */
import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { NodeProxy } from "./mod.ts";
import {
  endpoint,
  field,
  type HttpBackend,
  httpBackend,
  meshConfig,
  RawClient,
  rawRequest,
  sha256,
} from "../../tests/testenv/mesh.ts";
import { freePort } from "../../tests/testenv/process.ts";

const quiet = new Logger({ level: "error", write: () => {} });

async function withProxy(
  config: MeshConfig,
  fn: (proxy: NodeProxy, httpPort: number) => Promise<void>,
): Promise<void> {
  const proxy = new NodeProxy({ hostname: "127.0.0.1", httpPort: 0, logger: quiet });
  await proxy.start();
  try {
    await proxy.apply(config);
    await fn(proxy, Number(proxy.httpAddress.split(":")[1]));
  } finally {
    await proxy.stop();
  }
}

async function withBackends(
  names: string[],
  fn: (backends: HttpBackend[]) => Promise<void>,
): Promise<void> {
  const backends = await Promise.all(names.map((n) => httpBackend(n)));
  try {
    await fn(backends);
  } finally {
    await Promise.all(backends.map((b) => b.close()));
  }
}

const web = (backends: HttpBackend[], extra = {}) =>
  meshConfig([{
    name: "web",
    ports: [{ port: 80, endpoints: backends.map((b) => endpoint("127.0.0.1", b.port)) }],
    ...extra,
  }]);

Deno.test("NodeProxy routes by Host and spreads requests over every ready endpoint", async () => {
  await withBackends(["a", "b", "c"], async (backends) => {
    await withProxy(web(backends), async (_, port) => {
      const counts: Record<string, number> = {};
      for (let i = 0; i < 150; i++) {
        const r = await rawRequest(port, "web.default.mesh");
        assert.equal(r.status, 200);
        const name = field(r.body, "name")!;
        counts[name] = (counts[name] ?? 0) + 1;
      }
      // Two random choices, ties to the least recently picked: idle endpoints take turns.
      for (const n of ["a", "b", "c"]) {
        assert.ok((counts[n] ?? 0) >= 35 && (counts[n] ?? 0) <= 65, JSON.stringify(counts));
      }
      // Host names are case-insensitive and may carry the service port.
      const upper = await rawRequest(port, "WEB.Default.MESH:80");
      assert.equal(upper.status, 200);
    });
  });
});

Deno.test("NodeProxy answers 404 for an unknown host, naming it", async () => {
  await withProxy(meshConfig([]), async (_, port) => {
    const r = await rawRequest(port, "nobody.default.mesh");
    assert.equal(r.status, 404);
    assert.match(r.body, /nobody\.default\.mesh/);
    const none = await rawRequest(port, "");
    assert.equal(none.status, 404);
  });
});

Deno.test("NodeProxy answers 503 naming the service when no endpoint is ready", async () => {
  const config = meshConfig([{
    name: "web",
    ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", 9, { ready: false })] }],
  }]);
  await withProxy(config, async (_, port) => {
    const r = await rawRequest(port, "web.default.mesh");
    assert.equal(r.status, 503);
    assert.match(r.body, /default\/web/);
    assert.match(r.body, /no ready endpoint/);
  });
});

Deno.test("NodeProxy answers 502 naming the endpoint when the backend refuses", async () => {
  const closed = freePort();
  await withProxy(
    meshConfig([{
      name: "web",
      ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", closed)] }],
    }]),
    async (_, port) => {
      const r = await rawRequest(port, "web.default.mesh");
      assert.equal(r.status, 502);
      assert.match(r.body, new RegExp(`127\\.0\\.0\\.1:${closed}`));
      assert.match(r.body, /default\/web/);
    },
  );
});

Deno.test("NodeProxy keeps client connections alive and reuses backend connections", async () => {
  await withBackends(["a"], async ([a]) => {
    await withProxy(web([a!]), async (_, port) => {
      const client = await RawClient.connect(port);
      try {
        for (let i = 0; i < 20; i++) {
          const r = await client.request(`GET /${i} HTTP/1.1\r\nHost: web.default.mesh\r\n\r\n`);
          assert.equal(r.status, 200);
          assert.equal(field(r.body, "name"), "a");
        }
      } finally {
        client.close();
      }
      assert.equal(a!.requests.length, 20);
      // One client connection, one pooled backend connection for all twenty requests.
      assert.equal(a!.connections.size, 1);
    });
  });
});

Deno.test("NodeProxy streams a 5 MiB chunked request body unchanged", async () => {
  await withBackends(["a"], async ([a]) => {
    await withProxy(web([a!]), async (_, port) => {
      const data = new Uint8Array(5 * 1024 * 1024);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 10)) & 0xff;
      const client = await RawClient.connect(port);
      try {
        const send = (async () => {
          await client.send(
            "POST /upload HTTP/1.1\r\nHost: web.default.mesh\r\nTransfer-Encoding: chunked\r\n\r\n",
          );
          const enc = new TextEncoder();
          for (let off = 0; off < data.length; off += 100_000) {
            const chunk = data.subarray(off, Math.min(off + 100_000, data.length));
            await client.send(enc.encode(chunk.length.toString(16) + "\r\n"));
            await client.send(chunk);
            await client.send(enc.encode("\r\n"));
          }
          await client.send("0\r\n\r\n");
        })();
        const r = await client.read();
        await send;
        assert.equal(r.status, 200);
        assert.equal(field(r.body, "bytes"), String(data.length));
        assert.equal(field(r.body, "sha256"), await sha256(data));
      } finally {
        client.close();
      }
    });
  });
});

Deno.test("NodeProxy appends the client address to X-Forwarded-For and never trusts it", async () => {
  await withBackends(["a"], async ([a]) => {
    await withProxy(web([a!]), async (_, port) => {
      const r = await rawRequest(port, "web.default.mesh", {
        headers: ["X-Forwarded-For: 10.9.9.9"],
      });
      assert.equal(r.status, 200);
      assert.match(r.body, /^x-forwarded-for: 10\.9\.9\.9, 127\.0\.0\.1$/m);
      const plain = await rawRequest(port, "web.default.mesh");
      assert.match(plain.body, /^x-forwarded-for: 127\.0\.0\.1$/m);
    });
  });
});

Deno.test("NodeProxy drops hop-by-hop headers and those named in Connection", async () => {
  await withBackends(["a"], async ([a]) => {
    await withProxy(web([a!]), async (_, port) => {
      const r = await rawRequest(port, "web.default.mesh", {
        headers: [
          "Connection: close, X-Secret-Hop",
          "X-Secret-Hop: 1",
          "Keep-Alive: timeout=5",
          "TE: trailers",
          "Proxy-Authorization: Basic eA==",
          "X-Kept: yes",
        ],
      });
      assert.equal(r.status, 200);
      assert.match(r.body, /^x-kept: yes$/m);
      for (const h of ["x-secret-hop", "keep-alive", "te", "proxy-authorization"]) {
        assert.doesNotMatch(r.body, new RegExp(`^${h}:`, "m"), `${h} was forwarded`);
      }
    });
  });
});

Deno.test("NodeProxy serves an HTTP/1.0 client and closes after the response", async () => {
  await withBackends(["a"], async ([a]) => {
    await withProxy(web([a!]), async (_, port) => {
      const client = await RawClient.connect(port);
      try {
        const r = await client.request("GET / HTTP/1.0\r\nHost: web.default.mesh\r\n\r\n");
        assert.equal(r.status, 200);
        assert.match(r.head, /^HTTP\/1\.0 200/);
        assert.ok(!r.headers.has("transfer-encoding"), "no chunked framing to an HTTP/1.0 client");
        assert.equal(field(r.body, "name"), "a");
        assert.ok(await client.closedByPeer());
      } finally {
        client.close();
      }
    });
  });
});

Deno.test("NodeProxy passes 100 Continue through before the body is sent", async () => {
  // A raw backend that answers Expect: 100-continue, as an HTTP/1.1 server does.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served = (async () => {
    const conn = await listener.accept();
    const buf = new Uint8Array(4096);
    let text = "";
    while (!text.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      if (n === null) return;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    assert.match(text, /expect: 100-continue/i);
    await conn.write(new TextEncoder().encode("HTTP/1.1 100 Continue\r\n\r\n"));
    let body = text.slice(text.indexOf("\r\n\r\n") + 4);
    while (body.length < 5) {
      const n = await conn.read(buf);
      if (n === null) return;
      body += new TextDecoder().decode(buf.subarray(0, n));
    }
    await conn.write(
      new TextEncoder().encode(`HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n${body}`),
    );
    conn.close();
  })();
  try {
    const config = meshConfig([{
      name: "up",
      ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", listener.addr.port)] }],
    }]);
    await withProxy(config, async (_, port) => {
      const client = await RawClient.connect(port);
      try {
        await client.send(
          "POST / HTTP/1.1\r\nHost: up.default.mesh\r\nExpect: 100-continue\r\n" +
            "Content-Length: 5\r\n\r\n",
        );
        // The interim response arrives while the client still holds its body back.
        const line = await new Promise<string>((resolve, reject) => {
          const buf = new Uint8Array(64);
          client.conn.read(buf).then(
            (n) => resolve(new TextDecoder().decode(buf.subarray(0, n ?? 0))),
            reject,
          );
        });
        assert.match(line, /^HTTP\/1\.1 100 Continue\r\n\r\n/);
        const r = await client.request("hello");
        assert.equal(r.status, 200);
        assert.equal(r.body, "hello");
      } finally {
        client.close();
      }
    });
    await served;
  } finally {
    listener.close();
  }
});

Deno.test("NodeProxy.apply() switches routes at once and closes removed TCP listeners", async () => {
  const echo = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const echoing = (async () => {
    for await (const conn of echo) {
      (async () => {
        await conn.readable.pipeTo(conn.writable).catch(() => {});
      })();
    }
  })().catch(() => {});
  const tcpPort = freePort();
  try {
    await withBackends(["a", "b"], async ([a, b]) => {
      const first = meshConfig([
        { name: "web", ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", a!.port)] }] },
        {
          name: "echo",
          ports: [{
            port: 7,
            protocol: "tcp",
            listenPort: tcpPort,
            endpoints: [endpoint("127.0.0.1", echo.addr.port)],
          }],
        },
      ]);
      await withProxy(first, async (proxy, port) => {
        assert.equal(field((await rawRequest(port, "web.default.mesh")).body, "name"), "a");
        assert.deepEqual(proxy.listener("tcp", tcpPort), {
          address: `127.0.0.1:${tcpPort}`,
          served: true,
        });
        const conn = await Deno.connect({ hostname: "127.0.0.1", port: tcpPort });
        await conn.write(new TextEncoder().encode("ping"));
        const buf = new Uint8Array(4);
        assert.equal(await conn.read(buf), 4);
        conn.close();

        await proxy.apply(
          meshConfig([{
            name: "web",
            ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", b!.port)] }],
          }], { version: 2 }),
        );
        assert.equal(proxy.version, 2);
        assert.equal(field((await rawRequest(port, "web.default.mesh")).body, "name"), "b");
        assert.equal(proxy.listener("tcp", tcpPort).served, false);
        await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port: tcpPort }));
      });
    });
  } finally {
    echo.close();
    await echoing;
  }
});

Deno.test("NodeProxy TCP listener keeps the reply path open after the client half-closes", async () => {
  // A backend that reads to EOF, then answers with the byte count and closes.
  const backend = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    for await (const conn of backend) {
      (async () => {
        let n = 0;
        const buf = new Uint8Array(65536);
        for (;;) {
          const r = await conn.read(buf);
          if (r === null) break;
          n += r;
        }
        await conn.write(new TextEncoder().encode(`got ${n}`));
        conn.close();
      })().catch(() => {});
    }
  })().catch(() => {});
  const listenPort = freePort();
  const refusedPort = freePort();
  const config = meshConfig([
    {
      name: "count",
      ports: [{
        port: 9,
        protocol: "tcp",
        listenPort,
        endpoints: [endpoint("127.0.0.1", backend.addr.port)],
      }],
    },
    {
      name: "dead",
      ports: [{
        port: 9,
        protocol: "tcp",
        listenPort: refusedPort,
        endpoints: [endpoint("127.0.0.1", freePort())],
      }],
    },
  ]);
  try {
    await withProxy(config, async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: listenPort });
      await conn.write(new Uint8Array(100_000));
      await conn.closeWrite();
      const reply = await new Response(conn.readable).text();
      assert.equal(reply, "got 100000");

      // An endpoint that refuses: the client's connection is closed without data.
      const dead = await Deno.connect({ hostname: "127.0.0.1", port: refusedPort });
      assert.equal(await new Response(dead.readable).text(), "");
    });
  } finally {
    backend.close();
    await serving;
  }
});
