/**
 * The node proxy in process, from MeshConfig to what a client on loopback sees. Backends are
 * real servers on 127.0.0.1 (the drain test's on 127.0.63.3); no Kubernetes object is involved.
 */
import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { NodeProxy, type NodeProxyOptions } from "./mod.ts";
import { parseBreakerExpression } from "../topology/mod.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import {
  field,
  type HttpBackend,
  httpBackend,
  RawClient,
  rawRequest,
  sha256,
  tcpEchoBackend,
} from "./_testing.ts";
import { freePort, waitFor } from "../_testing.ts";
import { makePki } from "../_testing_tls.ts";

const quiet = new Logger({ level: "error", write: () => {} });

async function withProxy(
  config: MeshConfig,
  fn: (proxy: NodeProxy, httpPort: number) => Promise<void>,
  options: Partial<NodeProxyOptions> = {},
): Promise<void> {
  const proxy = new NodeProxy({ hostname: "127.0.0.1", httpPort: 0, logger: quiet, ...options });
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
    assert.equal(r.headers.get("x-meshd-error"), "unknown-host");
    // An empty Host names no authority to route by (RFC 9112 §3.2): a bad request.
    const none = await rawRequest(port, "");
    assert.equal(none.status, 400);
    assert.equal(none.headers.get("x-meshd-error"), "bad-request");
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
    assert.equal(r.headers.get("x-meshd-error"), "no-endpoint");
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
      assert.equal(r.headers.get("x-meshd-error"), "endpoint-failed");
      // Said once: the endpoint, the service, then the cause, without repeating the first two.
      assert.match(
        r.body,
        new RegExp(
          `^Endpoint 127\\.0\\.0\\.1:${closed} of service "default/web:80" failed: ` +
            `cannot connect: [^:]*[Rr]efused`,
        ),
      );
      assert.equal(r.body.split("127.0.0.1").length, 2, r.body);
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

for (const engine of [false, true]) {
  Deno.test(`NodeProxy.apply() switches routes at once and closes removed TCP listeners${engine ? " (on the engine)" : ""}`, async () => {
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
        }, { engine });
      });
    } finally {
      echo.close();
      await echoing;
    }
  });
}

for (const engine of [false, true]) {
  Deno.test(`NodeProxy TCP listener keeps the reply path open after the client half-closes, with Nagle off upstream${engine ? " (on the engine)" : ""}`, async () => {
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
    // Every backend connection is dialled with Nagle off: the proxy's last short segment must
    // not wait for the backend's delayed ACK.
    const noDelay: boolean[] = [];
    const connect = async (hostname: string, port: number) => {
      const c = await Deno.connect({ hostname, port });
      const set = c.setNoDelay.bind(c);
      c.setNoDelay = (v?: boolean) => (noDelay.push(v ?? true), set(v));
      return c;
    };
    try {
      await withProxy(config, async () => {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port: listenPort });
        await conn.write(new Uint8Array(100_000));
        await conn.closeWrite();
        const reply = await new Response(conn.readable).text();
        assert.equal(reply, "got 100000");
        // (The engine dials with libc, Nagle off, and takes no connect seam.)
        assert.deepEqual(noDelay, engine ? [] : [true]);

        // An endpoint that refuses: the client's connection is closed without data.
        const dead = await Deno.connect({ hostname: "127.0.0.1", port: refusedPort });
        assert.equal(await new Response(dead.readable).text(), "");
      }, { connect, engine });
    } finally {
      backend.close();
      await serving;
    }
  });
}

/** A raw backend that accepts and, per connection, runs `handle`. */
function rawBackend(handle: (conn: Deno.TcpConn) => Promise<void>) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.TcpConn>();
  const done = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      handle(conn).catch(() => {}).finally(() => {
        conns.delete(conn);
        try {
          conn.close();
        } catch { /* closed */ }
      });
    }
  })().catch(() => {});
  return {
    port: listener.addr.port,
    async close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await done;
    },
  };
}

Deno.test("NodeProxy retries an idempotent request on another endpoint and ejects the failing one", async () => {
  // This endpoint accepts and hangs up without answering.
  let broken = 0;
  const bad = rawBackend(async () => {
    broken++;
    await Promise.resolve();
  });
  try {
    await withBackends(["good"], async ([good]) => {
      const config = meshConfig([{
        name: "web",
        retryAttempts: 2,
        ports: [{
          port: 80,
          endpoints: [endpoint("127.0.0.1", bad.port), endpoint("127.0.0.1", good!.port)],
        }],
      }]);
      const lines: string[] = [];
      const proxy = new NodeProxy({
        hostname: "127.0.0.1",
        httpPort: 0,
        logger: new Logger({ level: "warn", write: (l) => lines.push(l) }),
        outlier: { consecutiveFailures: 2, baseEjectionMs: 60_000 },
      });
      await proxy.start();
      try {
        await proxy.apply(config);
        const port = Number(proxy.httpAddress.split(":")[1]);
        for (let i = 0; i < 10; i++) {
          const r = await rawRequest(port, "web.default.mesh");
          assert.equal(r.status, 200, r.body);
          assert.equal(field(r.body, "name"), "good");
        }
        // Two failures in a row eject it; after that it gets nothing.
        assert.equal(broken, 2);
        const metrics = proxy.registry.render();
        assert.match(
          metrics,
          /^meshd_retries_total\{service="default\/web",port="80",protocol="http"\} 2$/m,
        );
        assert.match(
          metrics,
          new RegExp(
            `^meshd_endpoint_ejections_total\\{endpoint="127\\.0\\.0\\.1:${bad.port}"\\} 1$`,
            "m",
          ),
        );
        // One ejection, one log line (the pool's owner logs it, not each protocol again).
        assert.equal(lines.filter((l) => /ejected/.test(l)).length, 1, lines.join("\n"));
        // A POST is not retried: its failure is the client's 502.
        const eject = await rawRequest(port, "web.default.mesh", { method: "POST", body: "x" });
        assert.equal(eject.status, 200, "the ejected endpoint is not picked");
      } finally {
        await proxy.stop();
      }
    });
  } finally {
    await bad.close();
  }
});

Deno.test("NodeProxy does not retry a request with a body, and answers 502", async () => {
  const bad = rawBackend(async (conn) => {
    await conn.read(new Uint8Array(1024));
  });
  try {
    const config = meshConfig([{
      name: "web",
      retryAttempts: 3,
      ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", bad.port)] }],
    }]);
    await withProxy(config, async (_, port) => {
      const r = await rawRequest(port, "web.default.mesh", { method: "POST", body: "data" });
      assert.equal(r.status, 502);
      assert.match(r.body, /default\/web:80/);
      assert.match(r.body, /connection closed before a response/);
    });
  } finally {
    await bad.close();
  }
});

Deno.test("NodeProxy answers 504 when the backend sends nothing in time", async () => {
  const silent = rawBackend(async (conn) => {
    await conn.read(new Uint8Array(1024));
    await new Promise((r) => setTimeout(r, 2000));
  });
  const proxy = new NodeProxy({
    hostname: "127.0.0.1",
    httpPort: 0,
    logger: quiet,
    responseTimeoutMs: 200,
  });
  await proxy.start();
  try {
    await proxy.apply(meshConfig([{
      name: "slow",
      ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", silent.port)] }],
    }]));
    const started = performance.now();
    const r = await rawRequest(Number(proxy.httpAddress.split(":")[1]), "slow.default.mesh");
    assert.equal(r.status, 504);
    assert.match(r.body, /sent no response within 200 ms/);
    assert.equal(r.headers.get("x-meshd-error"), "timeout");
    assert.ok(performance.now() - started < 1500, "the deadline, not the backend, ended it");
  } finally {
    await proxy.stop();
    await silent.close();
  }
});

Deno.test("NodeProxy answers 429 over the rate limit, with Retry-After", async () => {
  await withBackends(["a"], async ([a]) => {
    const config = web([a!], { rateLimit: { average: 1, burst: 3 } });
    await withProxy(config, async (proxy, port) => {
      const statuses = [];
      for (let i = 0; i < 5; i++) {
        statuses.push((await rawRequest(port, "web.default.mesh")).status);
      }
      assert.deepEqual(statuses, [200, 200, 200, 429, 429]);
      const r = await rawRequest(port, "web.default.mesh");
      assert.equal(r.headers.get("retry-after"), "1");
      assert.equal(r.headers.get("x-meshd-error"), "rate-limited");
      assert.match(r.body, /over its rate limit of 1 requests a second/);
      assert.match(
        proxy.registry.render(),
        /^meshd_denied_total\{service="default\/web",port="80",protocol="http",reason="rate_limit"\} 3$/m,
      );
    });
  });
});

/** A WebSocket-like backend: answers an Upgrade with 101 and "hello", then echoes in capitals. */
function shoutingBackend() {
  return rawBackend(async (conn) => {
    const buf = new Uint8Array(4096);
    let head = "";
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      if (n === null) return;
      head += new TextDecoder().decode(buf.subarray(0, n));
    }
    assert.match(head, /^upgrade: websocket$/im);
    assert.match(head, /^connection: upgrade$/im);
    await conn.write(new TextEncoder().encode(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello",
    ));
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      await conn.write(
        new TextEncoder().encode(new TextDecoder().decode(buf.subarray(0, n)).toUpperCase()),
      );
    }
  });
}

/** Opens a tunnel to `ws.default.mesh` through the proxy on `port`, past its "hello". */
async function openTunnel(port: number): Promise<RawClient> {
  const client = await RawClient.connect(port);
  const r = await client.request(
    "GET /chat HTTP/1.1\r\nHost: ws.default.mesh\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
  );
  assert.equal(r.status, 101);
  assert.equal(r.headers.get("upgrade"), "websocket");
  assert.equal(await client.readBytes(5), "hello");
  return client;
}

const wsConfig = (port: number) =>
  meshConfig([{ name: "ws", ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", port)] }] }]);

Deno.test("NodeProxy passes an Upgrade (WebSocket) through and then copies bytes both ways", async () => {
  const ws = shoutingBackend();
  try {
    await withProxy(wsConfig(ws.port), async (_, port) => {
      const client = await openTunnel(port);
      try {
        await client.send("shout");
        const got = await client.readBytes(5);
        assert.equal(got, "SHOUT");
      } finally {
        client.close();
      }
    });
  } finally {
    await ws.close();
  }
});

Deno.test("NodeProxy closes an Upgrade tunnel with no byte either way for --tcp-idle-timeout, and only then", async () => {
  const ws = shoutingBackend();
  try {
    await withProxy(wsConfig(ws.port), async (proxy, port) => {
      const client = await openTunnel(port);
      try {
        // A byte each way every 200 ms for 1.4 s, longer than the idle timeout, and open (a
        // gap may run 800 ms late before it closes: a slow machine's timers stay inside it).
        for (let i = 0; i < 7; i++) {
          await new Promise((r) => setTimeout(r, 200));
          await client.send("a");
          assert.equal(await client.readBytes(1), "A");
        }
        // Then nothing: closed after the timeout (the sweep runs every 100 ms).
        const idleFrom = performance.now();
        let timer: ReturnType<typeof setTimeout> | undefined;
        const closed = await Promise.race([
          client.closedByPeer(),
          new Promise<false>((r) => timer = setTimeout(() => r(false), 5000)),
        ]);
        clearTimeout(timer);
        assert.ok(closed, "the idle tunnel stayed open 5 s");
        const idleMs = performance.now() - idleFrom;
        assert.ok(idleMs >= 900, `closed after ${idleMs.toFixed(0)} ms idle, before the timeout`);
        await waitFor("the tunnel counted out", () => proxy.inFlight === 0 ? true : undefined);
      } finally {
        client.close();
      }
    }, { tcpIdleTimeoutMs: 1000 });
  } finally {
    await ws.close();
  }
});

for (const engine of [false, true]) {
  Deno.test(`NodeProxy UDP keeps one flow per client and sends replies back to each${engine ? " (on the engine)" : ""}`, async () => {
    const backend = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    const echoing = (async () => {
      for (;;) {
        const [data, from] = await backend.receive();
        const text = new TextDecoder().decode(data);
        await backend.send(
          new TextEncoder().encode(`re:${text}:${(from as Deno.NetAddr).port}`),
          from,
        );
      }
    })().catch(() => {});
    const listenPort = freePort();
    const config = meshConfig([{
      name: "dns",
      ports: [{
        port: 53,
        protocol: "udp",
        listenPort,
        endpoints: [endpoint("127.0.0.1", (backend.addr as Deno.NetAddr).port)],
      }],
    }]);
    const proxy = new NodeProxy({
      hostname: "127.0.0.1",
      httpPort: 0,
      logger: quiet,
      udpIdleTimeoutMs: 100,
      engine,
    });
    await proxy.start();
    const clients = [0, 1].map(() =>
      Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 })
    );
    try {
      await proxy.apply(config);
      const ask = async (c: Deno.DatagramConn, text: string) => {
        await c.send(new TextEncoder().encode(text), {
          transport: "udp",
          hostname: "127.0.0.1",
          port: listenPort,
        });
        const [data, from] = await c.receive();
        // The reply comes from the service port the client sent to.
        assert.equal((from as Deno.NetAddr).port, listenPort);
        return new TextDecoder().decode(data);
      };
      const a1 = await ask(clients[0]!, "a1");
      const b1 = await ask(clients[1]!, "b1");
      const a2 = await ask(clients[0]!, "a2");
      const flowPort = (s: string) => s.split(":")[2];
      assert.match(a1, /^re:a1:/);
      assert.match(b1, /^re:b1:/);
      // Same client, same flow (same upstream socket); another client, another flow.
      assert.equal(flowPort(a1), flowPort(a2));
      assert.notEqual(flowPort(a1), flowPort(b1));
      // An idle flow is closed; the next datagram opens a new one.
      await waitFor(
        "flows to close",
        () =>
          /^meshd_open_connections\{service="default\/dns",port="53",protocol="udp"\} 0$/m.test(
            proxy.registry.render(),
          ) || undefined,
      );
      const a3 = await ask(clients[0]!, "a3");
      assert.notEqual(flowPort(a3), flowPort(a1));
    } finally {
      for (const c of clients) c.close();
      await proxy.stop();
      backend.close();
      await echoing;
    }
  });
}

for (const engine of [false, true]) {
  Deno.test(`NodeProxy.udpAwaitingAnswer() counts a datagram sent in the millisecond its flow's last answer came${engine ? " (on the engine)" : ""}`, async () => {
    // Date.now() counts whole milliseconds: on loopback a client's next request often leaves in
    // the millisecond its last answer came back, and a flow whose send and answer times were
    // equal was taken as answered (a draining meshd could leave before that answer went back).
    const host = "127.0.65.1";
    const enc = (s: string) => new TextEncoder().encode(s);
    const backend = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
    const got: string[] = [];
    let flow: Deno.Addr | null = null;
    const answering = (async () => {
      for (;;) {
        const [data, from] = await backend.receive();
        const text = new TextDecoder().decode(data);
        got.push(text);
        flow = from;
        // The first is answered; the second waits for an answer that does not come.
        if (text === "first") await backend.send(data, from);
      }
    })().catch(() => {});
    const listenPort = freePort(host);
    const proxy = new NodeProxy({ hostname: host, httpPort: 0, logger: quiet, engine });
    await proxy.start();
    const client = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
    const realNow = Date.now;
    // A receive that never comes ends the test instead of hanging it.
    const guard = setTimeout(() => client.close(), 10_000);
    try {
      await proxy.apply(meshConfig([{
        name: "dns",
        ports: [{
          port: 53,
          protocol: "udp",
          listenPort,
          endpoints: [endpoint(host, (backend.addr as Deno.NetAddr).port)],
        }],
      }]));
      const to = { transport: "udp" as const, hostname: host, port: listenPort };
      // Every Date.now() from here on is one millisecond, as on a fast loopback.
      const frozen = realNow();
      Date.now = () => frozen;
      await client.send(enc("first"), to);
      await client.receive();
      await client.send(enc("second"), to);
      await waitFor(
        "the second datagram at the endpoint",
        () => got.includes("second") || undefined,
      );
      Date.now = realNow;
      assert.equal(proxy.udpAwaitingAnswer(5000), 1, "the second datagram awaits its answer");
      // Its answer ends the wait.
      await backend.send(enc("late"), flow!);
      await client.receive();
      assert.equal(proxy.udpAwaitingAnswer(5000), 0, "answered");
    } finally {
      Date.now = realNow;
      clearTimeout(guard);
      try {
        client.close();
      } catch { /* closed by the guard */ }
      await proxy.stop();
      backend.close();
      await answering;
    }
  });
}

for (const engine of [false, true]) {
  Deno.test(`NodeProxy.apply() ends the UDP flows of an endpoint the config no longer lists as ready, so the client's next datagram goes to one it does${engine ? " (on the engine)" : ""}`, async () => {
    // kube-proxy clears the conntrack entries of a UDP endpoint that left for the same reason:
    // a client that keeps sending from one port (a resolver, a metrics agent) never lets its
    // flow go idle, and went on reaching the removed pod (or nothing) for as long as it sent.
    const host = "127.0.67.201";
    const named = (name: string) => {
      const s = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
      const done = (async () => {
        for (;;) {
          const [, from] = await s.receive();
          await s.send(new TextEncoder().encode(name), from);
        }
      })().catch(() => {});
      return { port: (s.addr as Deno.NetAddr).port, close: () => (s.close(), done) };
    };
    const a = named("a");
    const b = named("b");
    const listenPort = freePort(host);
    const config = (version: number, ...eps: ReturnType<typeof endpoint>[]) =>
      meshConfig([{
        name: "dns",
        ports: [{ port: 53, protocol: "udp", listenPort, endpoints: eps }],
      }], { version });
    const lines: string[] = [];
    const proxy = new NodeProxy({
      hostname: host,
      httpPort: 0,
      logger: quiet,
      engine,
      accessLog: "json",
      accessLogWrite: (l) => void lines.push(l),
    });
    await proxy.start();
    const client = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
    const guard = setTimeout(() => client.close(), 10_000);
    const ask = async () => {
      await client.send(new Uint8Array(1), { transport: "udp", hostname: host, port: listenPort });
      return new TextDecoder().decode((await client.receive())[0]);
    };
    const open = () =>
      Number(
        /^meshd_open_connections\{service="default\/dns",port="53",protocol="udp"\} (\S+)$/m
          .exec(proxy.registry.render())?.[1],
      );
    try {
      await proxy.apply(config(1, endpoint(host, a.port)));
      assert.equal(await ask(), "a");
      // a leaves the config: its flow ends, and the next datagram opens one to b.
      await proxy.apply(config(2, endpoint(host, b.port)));
      assert.equal(await ask(), "b", "the datagram after a left went to a");
      // a comes back: b's flow stays. Then b stops being ready (a pod terminating): it ends.
      await proxy.apply(config(3, endpoint(host, a.port), endpoint(host, b.port)));
      assert.equal(await ask(), "b");
      await proxy.apply(
        config(4, endpoint(host, a.port), endpoint(host, b.port, { ready: false })),
      );
      assert.equal(await ask(), "a", "the datagram after b stopped being ready went to b");
      assert.equal(open(), 1, "one flow open");
      const reasons = lines.map((l) => (JSON.parse(l) as { reason?: string }).reason);
      assert.deepEqual(reasons, ["endpoint_removed", "endpoint_removed"]);
    } finally {
      clearTimeout(guard);
      try {
        client.close();
      } catch { /* closed by the guard */ }
      await proxy.stop();
      await a.close();
      await b.close();
    }
  });
}

for (const engine of [false, true]) {
  Deno.test(`NodeProxy.apply() keeps a UDP flow of a split whose backend's endpoint is still ready, and ends one whose endpoint left${engine ? " (on the engine)" : ""}`, async () => {
    // The flows of a TrafficSplit's root go to its backends' endpoints (one hop): those are
    // the ready endpoints a flow of the root may keep.
    const host = "127.0.69.40";
    const named = (name: string) => {
      const s = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
      const done = (async () => {
        for (;;) {
          const [, from] = await s.receive();
          await s.send(new TextEncoder().encode(name), from);
        }
      })().catch(() => {});
      return { port: (s.addr as Deno.NetAddr).port, close: () => (s.close(), done) };
    };
    const a = named("a");
    const b = named("b");
    const listenPort = freePort(host);
    const backendPort = freePort(host);
    const config = (version: number, ...eps: ReturnType<typeof endpoint>[]) =>
      meshConfig([
        {
          name: "dns",
          ports: [{
            port: 53,
            protocol: "udp",
            listenPort,
            split: {
              name: "default/dns-split",
              matches: [],
              backends: [{ service: "dns-v2", weight: 1 }],
            },
          }],
        },
        {
          name: "dns-v2",
          ports: [{ port: 53, protocol: "udp", listenPort: backendPort, endpoints: eps }],
        },
      ], { version });
    const lines: string[] = [];
    const proxy = new NodeProxy({
      hostname: host,
      httpPort: 0,
      logger: quiet,
      engine,
      accessLog: "json",
      accessLogWrite: (l) => void lines.push(l),
    });
    await proxy.start();
    const client = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
    const guard = setTimeout(() => client.close(), 10_000);
    const ask = async () => {
      await client.send(new Uint8Array(1), { transport: "udp", hostname: host, port: listenPort });
      return new TextDecoder().decode((await client.receive())[0]);
    };
    const reasons = () => lines.map((l) => (JSON.parse(l) as { reason?: string }).reason);
    try {
      await proxy.apply(config(1, endpoint(host, a.port)));
      assert.equal(await ask(), "a");
      // b joins the backend; a is still ready: the flow to a goes on.
      await proxy.apply(config(2, endpoint(host, a.port), endpoint(host, b.port)));
      assert.deepEqual(reasons(), [], "a flow to a backend's ready endpoint was ended");
      assert.equal(await ask(), "a");
      // a leaves the backend: its flow ends, and the next datagram goes to b.
      await proxy.apply(config(3, endpoint(host, b.port)));
      assert.deepEqual(reasons(), ["endpoint_removed"]);
      assert.equal(await ask(), "b", "the datagram after a left went to a");
    } finally {
      clearTimeout(guard);
      try {
        client.close();
      } catch { /* closed by the guard */ }
      await proxy.stop();
      await a.close();
      await b.close();
    }
  });
}

Deno.test("NodeProxy opens the circuit breaker on failures, answers 503, and closes it again", async () => {
  await withBackends(["a"], async ([a]) => {
    const expression = "ResponseCodeRatio(500, 600, 0, 600) > 0.5";
    const config = web([a!], {
      circuitBreaker: { expression, expr: parseBreakerExpression(expression) },
    });
    await withProxy(config, async (proxy, port) => {
      const get = (path: string) => rawRequest(port, "web.default.mesh", { path });
      for (let i = 0; i < 5; i++) assert.equal((await get("/?status=500")).status, 500);
      const refused = await get("/");
      assert.equal(refused.status, 503);
      assert.equal(refused.headers.get("x-meshd-error"), "circuit-open");
      assert.match(
        refused.body,
        /Service "default\/web:80" is failing; its circuit breaker is open/,
      );
      assert.equal(a!.requests.length, 5, "the refused request never reached the backend");
      const metrics = proxy.registry.render();
      assert.match(metrics, /meshd_denied_total\{[^}]*reason="circuit_open"\} 1/);
      assert.match(metrics, /meshd_circuit_breaker_state\{service="default\/web"\} 2/);
      // After the fallback and the recovery time the breaker is closed again.
      await new Promise((r) => setTimeout(r, 450));
      for (let i = 0; i < 5; i++) assert.equal((await get("/")).status, 200);
      assert.match(
        proxy.registry.render(),
        /meshd_circuit_breaker_state\{service="default\/web"\} 0/,
      );
    }, { breaker: { fallbackMs: 200, recoveryMs: 200, checkMs: 0 } });
  });
});

Deno.test("NodeProxy's circuit breaker records no connect that failed for want of a descriptor in meshd", async () => {
  const a = await httpBackend("a", "127.0.69.1");
  try {
    // Neither a network error nor a 5xx of the service's: not in the window at all.
    const expression = "NetworkErrorRatio() > 0.5 || ResponseCodeRatio(500, 600, 0, 600) > 0.5";
    const circuitBreaker = { expression, expr: parseBreakerExpression(expression) };
    const config = meshConfig([
      { name: "web", ports: [{ port: 80, endpoints: [endpoint("127.0.69.1", a.port)] }] },
      { name: "api", ports: [{ port: 80, endpoints: [endpoint("127.0.69.2", a.port)] }] },
    ].map((s) => ({ ...s, circuitBreaker })));
    // Deno's own messages: meshd out of descriptors; an endpoint that refuses.
    let fail: string | null = "Too many open files (os error 24)";
    const connect = (hostname: string, port: number) =>
      fail === null ? Deno.connect({ hostname, port }) : Promise.reject(new Error(fail));
    await withProxy(config, async (proxy, port) => {
      const get = (host: string) => rawRequest(port, host);
      for (let i = 0; i < 10; i++) assert.equal((await get("web.default.mesh")).status, 502);
      fail = null;
      const r = await get("web.default.mesh");
      assert.equal(r.status, 200, `the breaker stayed closed; got ${r.status} ${r.body}`);
      assert.match(
        proxy.registry.render(),
        /meshd_circuit_breaker_state\{service="default\/web"\} 0/,
      );
      // As many failures at the endpoint open the breaker of a service just like it.
      fail = "Connection refused (os error 111)";
      for (let i = 0; i < 5; i++) assert.equal((await get("api.default.mesh")).status, 502);
      const refused = await get("api.default.mesh");
      assert.equal(refused.headers.get("x-meshd-error"), "circuit-open");
    }, { connect, breaker: { checkMs: 0 } });
  } finally {
    await a.close();
  }
});

Deno.test("NodeProxy speaks TLS to https services and checks the certificate names the service", async () => {
  const pki = await makePki(["secure.default.svc"]);
  const seen: string[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: pki.cert, key: pki.key, onListen: () => {} },
    (req) => {
      seen.push(req.url);
      return new Response("over tls\n");
    },
  );
  try {
    const port = server.addr.port;
    const config = meshConfig([
      {
        name: "secure",
        scheme: "https",
        ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", port)] }],
      },
      // The same backend under another name: its certificate does not name "other".
      {
        name: "other",
        scheme: "https",
        ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", port)] }],
      },
    ]);
    await withProxy(config, async (_, httpPort) => {
      const ok = await rawRequest(httpPort, "secure.default.mesh");
      assert.equal(ok.status, 200);
      assert.equal(ok.body, "over tls\n");
      assert.equal(seen.length, 1);
      assert.match(seen[0]!, /^https:\/\//);
      const wrong = await rawRequest(httpPort, "other.default.mesh");
      assert.equal(wrong.status, 502);
      assert.match(
        wrong.body,
        /Endpoint 127\.0\.0\.1:\d+ of service "default\/other:80" failed: TLS handshake failed: /,
      );
      assert.equal(seen.length, 1, "nothing was sent over the unverified connection");
    }, { caCerts: [pki.caCert] });
    // Without the CA the certificate is not trusted.
    await withProxy(config, async (_, httpPort) => {
      const r = await rawRequest(httpPort, "secure.default.mesh");
      assert.equal(r.status, 502);
      assert.match(r.body, /failed: TLS handshake failed: /);
    });
  } finally {
    await server.shutdown();
  }
});

Deno.test("NodeProxy lets a request in flight finish on an endpoint the new config removed", async () => {
  let release!: () => void;
  const held = new Promise<void>((r) => release = r);
  let arrived!: () => void;
  const received = new Promise<void>((r) => arrived = r);
  const slow = rawBackend(async (conn) => {
    const buf = new Uint8Array(4096);
    await conn.read(buf);
    arrived();
    await held;
    await conn.write(
      new TextEncoder().encode("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nslow\n"),
    );
  });
  try {
    await withBackends(["fresh"], async ([fresh]) => {
      const before = meshConfig([{
        name: "web",
        ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", slow.port)] }],
      }]);
      await withProxy(before, async (proxy, port) => {
        const inflight = rawRequest(port, "web.default.mesh");
        await received; // the request is at the old endpoint before the config changes
        await proxy.apply(meshConfig([{
          name: "web",
          ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", fresh!.port)] }],
        }], { version: 2 }));
        assert.equal(field((await rawRequest(port, "web.default.mesh")).body, "name"), "fresh");
        release();
        const r = await inflight;
        assert.equal(r.status, 200);
        assert.equal(r.body, "slow\n");
      });
    });
  } finally {
    release();
    await slow.close();
  }
});

for (const engine of [false, true]) {
  Deno.test(`NodeProxy.apply() reports a TCP or UDP port it cannot bind, retries it, and clears the error once bound${engine ? " (on the engine)" : ""}`, async () => {
    const tcpPort = freePort("127.0.70.5");
    const blockTcp = Deno.listen({ hostname: "127.0.70.5", port: tcpPort });
    const blockUdp = Deno.listenDatagram({ hostname: "127.0.70.5", port: 0, transport: "udp" });
    const udpPort = (blockUdp.addr as Deno.NetAddr).port;
    const proxy = new NodeProxy({ hostname: "127.0.70.5", httpPort: 0, logger: quiet, engine });
    await proxy.start();
    try {
      await proxy.apply(meshConfig([{
        name: "db",
        ports: [
          { port: 5432, protocol: "tcp", listenPort: tcpPort, endpoints: [] },
          { port: 53, protocol: "udp", listenPort: udpPort, endpoints: [] },
        ],
      }]));
      const errors = proxy.bindErrors();
      assert.deepEqual(errors.map((e) => [e.protocol, e.address, e.service]).sort(), [
        ["tcp", `127.0.70.5:${tcpPort}`, "default/db:5432"],
        ["udp", `127.0.70.5:${udpPort}`, "default/db:53"],
      ]);
      for (const e of errors) assert.match(e.error, /in use/i);
      assert.equal(proxy.listener("tcp", tcpPort).served, false);
      blockTcp.close();
      blockUdp.close();
      await waitFor("both ports bound", () => proxy.bindErrors().length === 0 || undefined, 20_000);
      assert.equal(proxy.listener("tcp", tcpPort).served, true);
      assert.equal(proxy.listener("udp", udpPort).served, true);
    } finally {
      try {
        blockTcp.close();
      } catch { /* closed above */ }
      try {
        blockUdp.close();
      } catch { /* closed above */ }
      await proxy.stop();
    }
  });
}

Deno.test("NodeProxy HTTP entrypoint holds connections made before the first apply until it", async () => {
  await withBackends(["a"], async ([a]) => {
    const proxy = new NodeProxy({ hostname: "127.0.0.1", httpPort: 0, logger: quiet });
    await proxy.start();
    try {
      const port = Number(proxy.httpAddress.split(":")[1]);
      // Connected and sent before any config: answered by the config applied after, not 404.
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      await c.write(
        new TextEncoder().encode(
          "GET / HTTP/1.1\r\nHost: web.default.mesh\r\nConnection: close\r\n\r\n",
        ),
      );
      await proxy.apply(meshConfig([{
        name: "web",
        ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", a!.port)] }],
      }]));
      let got = "";
      const buf = new Uint8Array(4096);
      for (let n = await c.read(buf); n !== null; n = await c.read(buf)) {
        got += new TextDecoder().decode(buf.subarray(0, n));
      }
      c.close();
      assert.match(got, /^HTTP\/1\.1 200 /);
      assert.equal(field(got.slice(got.indexOf("\r\n\r\n") + 4), "name"), "a");
    } finally {
      await proxy.stop();
    }
  });
});

Deno.test("NodeProxy.stop() ends an entrypoint that never saw a config", async () => {
  const proxy = new NodeProxy({ hostname: "127.0.0.1", httpPort: 0, logger: quiet });
  await proxy.start();
  await proxy.stop();
  assert.equal(proxy.version, 0);
});

for (const engine of [false, true]) {
  Deno.test(
    `NodeProxy.apply() drops a TCP port at once while a connection through it is open, which goes on${
      engine ? " (on the engine)" : ""
    }`,
    async () => {
      const echo = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const echoing = (async () => {
        for await (const conn of echo) conn.readable.pipeTo(conn.writable).catch(() => {});
      })().catch(() => {});
      const tcpPort = freePort();
      const config = (version: number, withEcho: boolean) =>
        meshConfig(
          withEcho
            ? [{
              name: "echo",
              ports: [{
                port: 7,
                protocol: "tcp",
                listenPort: tcpPort,
                endpoints: [endpoint("127.0.0.1", echo.addr.port)],
              }],
            }]
            : [],
          { version },
        );
      try {
        await withProxy(config(1, true), async (proxy) => {
          const conn = await Deno.connect({ hostname: "127.0.0.1", port: tcpPort });
          const buf = new Uint8Array(4);
          await conn.write(new TextEncoder().encode("ping"));
          assert.equal(await conn.read(buf), 4);
          assert.equal(proxy.inFlight, 1);
          // The apply must not wait for the connection, which may last an hour.
          let timer: ReturnType<typeof setTimeout> | undefined;
          const applied = await Promise.race([
            proxy.apply(config(2, false)).then(() => true),
            new Promise<boolean>((r) => timer = setTimeout(() => r(false), 5_000)),
          ]);
          clearTimeout(timer);
          assert.ok(applied, "the apply waited for the open connection");
          assert.equal(proxy.listener("tcp", tcpPort).served, false);
          await conn.write(new TextEncoder().encode("pong"));
          assert.equal(await conn.read(buf), 4);
          assert.equal(new TextDecoder().decode(buf), "pong");
          assert.equal(proxy.inFlight, 1, "it still counts as in flight");
          conn.close();
          await waitFor("the connection to end", () => proxy.inFlight === 0 || undefined);
        }, { engine });
      } finally {
        echo.close();
        await echoing;
      }
    },
  );
}

Deno.test("NodeProxy.inFlight counts a TCP connection still dialling its endpoint through a drain", async () => {
  // What `meshd run --drain-timeout` waits on: a connection accepted just before drain() closed
  // the listener, still connecting to its endpoint, must keep the process until it is served.
  const host = "127.0.63.3";
  const backend = tcpEchoBackend(host);
  const listenPort = freePort(host);
  let release = () => {};
  const held = new Promise<void>((r) => release = r);
  let dialling = false;
  const connect = async (hostname: string, port: number) => {
    dialling = true;
    await held;
    return await Deno.connect({ hostname, port });
  };
  const config = meshConfig([{
    name: "echo",
    ports: [{
      port: 7,
      protocol: "tcp",
      listenPort,
      endpoints: [endpoint(host, backend.port)],
    }],
  }]);
  try {
    await withProxy(config, async (proxy) => {
      const conn = await Deno.connect({ hostname: host, port: listenPort });
      try {
        await waitFor("the proxy to dial the endpoint", () => dialling || undefined);
        await proxy.drain();
        assert.equal(proxy.inFlight, 1, "a draining meshd would leave with the connection");
        release();
        await conn.write(new TextEncoder().encode("ping"));
        await conn.closeWrite();
        assert.equal(await new Response(conn.readable).text(), "ping");
      } finally {
        try {
          conn.close();
        } catch { /* closed by reading it to the end */ }
      }
      await waitFor("the connection to end", () => proxy.inFlight === 0 || undefined);
    }, { hostname: host, connect });
  } finally {
    release();
    await backend.close();
  }
});
