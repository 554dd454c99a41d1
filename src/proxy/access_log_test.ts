/**
 * The access log, from MeshConfig to the lines a real proxy writes for real HTTP, TCP and UDP
 * traffic on loopback (backends on 127.0.68.x).
 */
import assert from "node:assert/strict";
import http2 from "node:http2";
import { Logger } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { AccessLog, MAX_LINE } from "./access_log.ts";
import { H2Connection } from "./h2/connection.ts";
import { ERROR } from "./h2/frames.ts";
import { NodeProxy, type NodeProxyOptions } from "./mod.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { httpBackend, rawRequest } from "./_testing.ts";
import { freePort, waitFor } from "../_testing.ts";

const quiet = new Logger({ level: "error", write: () => {} });
const BACKEND_HOST = "127.0.68.1";
const enc = new TextEncoder();
type Line = Record<string, string | number>;

/** A proxy on 127.0.0.1 whose access log lines are collected, parsed, in `lines`. */
async function withLoggedProxy(
  config: MeshConfig,
  options: Partial<NodeProxyOptions>,
  fn: (port: number, lines: Line[], raw: string[]) => Promise<void>,
): Promise<void> {
  const raw: string[] = [];
  const lines: Line[] = [];
  const proxy = new NodeProxy({
    hostname: "127.0.0.1",
    httpPort: 0,
    logger: quiet,
    accessLogWrite: (l) => {
      raw.push(l);
      lines.push(l.startsWith("{") ? JSON.parse(l) : parseLogfmt(l));
    },
    ...options,
  });
  await proxy.start();
  try {
    await proxy.apply(config);
    await fn(Number(proxy.httpAddress.split(":")[1]), lines, raw);
  } finally {
    await proxy.stop();
  }
}

/** A logfmt line back to fields (values quoted as JSON strings when they need it). */
function parseLogfmt(line: string): Line {
  const out: Line = {};
  const re = /(\w+)=("(?:[^"\\]|\\.)*"|\S+)/g;
  for (const m of line.trimEnd().matchAll(re)) {
    const v = m[2]!;
    out[m[1]!] = v.startsWith('"') ? JSON.parse(v) : /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
  }
  return out;
}

function lineCount(lines: Line[], n: number): () => true | undefined {
  return () => lines.length >= n ? true : undefined;
}

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

Deno.test("AccessLog.write() quotes logfmt values that need it and leaves out absent fields", () => {
  const out: string[] = [];
  const log = new AccessLog({ mode: "logfmt", write: (l) => out.push(l) });
  log.write({
    start: Date.UTC(2026, 10, 29, 12, 0, 0, 5),
    source: "127.0.68.9",
    sourcePort: 4000,
    protocol: "http",
    service: "shop/web:80",
    method: "GET",
    path: '/a b"c',
    status: 403,
    reason: "acl",
    detail: "Access denied: x=y",
    durationMs: 1.23456,
    bytesIn: 0,
    bytesOut: 12,
    retries: 0,
  });
  assert.equal(
    out[0],
    "time=2026-11-29T12:00:00.005Z protocol=http source=127.0.68.9:4000 service=shop/web:80 " +
      'method=GET path="/a b\\"c" status=403 reason=acl detail="Access denied: x=y" ' +
      "duration_ms=1.235 bytes_in=0 bytes_out=12 retries=0\n",
  );
});

Deno.test("AccessLog.forService() follows the annotation over the flag, JSON when the flag is off", () => {
  const out: string[] = [];
  const svc = (accessLog?: boolean) =>
    meshConfig([{ name: "a", ports: [], accessLog }]).services[0]!;
  const off = new AccessLog({ mode: "off", write: (l) => out.push(l) });
  assert.equal(off.forService(svc()), null);
  assert.equal(off.forService(svc(false)), null);
  assert.equal(off.forService(svc(true))?.format, "json");
  const on = new AccessLog({ mode: "logfmt", write: (l) => out.push(l) });
  assert.equal(on.forService(svc()), on);
  assert.equal(on.forService(svc(true)), on);
  assert.equal(on.forService(svc(false)), null);
});

Deno.test("NodeProxy logs an HTTP request with every field: split, endpoint, retries, identity, bytes", async () => {
  const live = await httpBackend("v2", BACKEND_HOST);
  const dead = freePort(BACKEND_HOST);
  try {
    const config = meshConfig([
      {
        name: "web",
        ports: [{
          port: 80,
          endpoints: [endpoint(BACKEND_HOST, 9, { ready: false })],
          split: {
            name: "default/canary",
            matches: [],
            backends: [{ service: "web-v2", weight: 1 }],
          },
        }],
      },
      {
        name: "web-v2",
        retryAttempts: 2,
        ports: [{
          port: 80,
          endpoints: [endpoint(BACKEND_HOST, dead), endpoint(BACKEND_HOST, live.port)],
        }],
      },
    ], { identities: { "127.0.0.1": "default/client" } });
    await withLoggedProxy(
      config,
      { accessLog: "json", outlier: { consecutiveFailures: 1000 } },
      async (port, lines) => {
        // The pool may pick either endpoint first: go on until one request needed a retry.
        let sent = 0;
        let retried: Line | undefined;
        while (!retried && sent < 40) {
          const r = await rawRequest(port, "web.default.mesh", {
            method: "POST",
            path: "/orders/7?secret=1",
            body: "hello",
            headers: ["x-request-id: req-1"],
          });
          assert.equal(r.status, 200);
          sent++;
          await waitFor("the access log line", lineCount(lines, sent));
          const l = lines[sent - 1]!;
          assert.equal(l.time !== undefined && ISO.test(String(l.time)), true, JSON.stringify(l));
          assert.equal(l.protocol, "http");
          assert.match(String(l.source), /^127\.0\.0\.1:\d+$/);
          assert.equal(l.identity, "default/client");
          assert.equal(l.service, "default/web:80");
          assert.equal(l.backend, "default/web-v2:80");
          assert.equal(l.endpoint, `${BACKEND_HOST}:${live.port}`);
          assert.equal(l.method, "POST");
          assert.equal(l.authority, "web.default.mesh");
          assert.equal(l.path, "/orders/7", "the query is left out");
          assert.equal(l.request_id, "req-1");
          assert.equal(l.status, 200);
          assert.equal(l.reason, undefined);
          assert.equal(l.bytes_in, 5);
          assert.equal(l.bytes_out, enc.encode(r.body).length);
          assert.equal(typeof l.duration_ms, "number");
          assert.ok((l.duration_ms as number) >= 0);
          if (l.retries === 1) retried = l;
          else assert.equal(l.retries, 0);
        }
        assert.ok(retried, `no request of ${sent} was retried: ${JSON.stringify(lines)}`);
      },
    );
  } finally {
    await live.close();
  }
});

Deno.test("NodeProxy logs a refused HTTP request with the reason and the rule that was missing", async () => {
  const b = await httpBackend("a", BACKEND_HOST);
  try {
    const config = meshConfig([{
      name: "web",
      ports: [{
        port: 80,
        endpoints: [endpoint(BACKEND_HOST, b.port, { serviceAccount: "default/web" })],
        access: [],
      }],
    }, {
      name: "limited",
      rateLimit: { average: 1, burst: 1 },
      ports: [{ port: 80, endpoints: [endpoint(BACKEND_HOST, b.port)] }],
    }], { acl: true, identities: { "127.0.0.1": "default/client" } });
    await withLoggedProxy(config, { accessLog: "logfmt" }, async (port, lines, raw) => {
      const r = await rawRequest(port, "web.default.mesh", { path: "/x" });
      assert.equal(r.status, 403);
      await waitFor("the access log line", lineCount(lines, 1));
      const l = lines[0]!;
      assert.equal(l.status, 403);
      assert.equal(l.reason, "acl");
      assert.match(
        String(l.detail),
        /no TrafficTarget lets ServiceAccount "default\/client" send GET \/x to HTTP port 80 of service "default\/web"/,
      );
      assert.equal(l.endpoint, undefined);
      assert.equal(l.identity, "default/client");
      assert.match(
        raw[0]!,
        /^time=\S+ protocol=http source=127\.0\.0\.1:\d+ identity=default\/client /,
      );
      // The second request in the same second is over the rate limit.
      await rawRequest(port, "limited.default.mesh");
      const over = await rawRequest(port, "limited.default.mesh");
      assert.equal(over.status, 429);
      await waitFor("three lines", lineCount(lines, 3));
      assert.equal(lines[2]!.reason, "rate_limit");
      assert.equal(lines[2]!.status, 429);
    });
  } finally {
    await b.close();
  }
});

Deno.test("NodeProxy --request-id adds x-request-id when absent, keeps one there, and logs it", async () => {
  const b = await httpBackend("a", BACKEND_HOST);
  try {
    const config = meshConfig([{
      name: "web",
      ports: [{ port: 80, endpoints: [endpoint(BACKEND_HOST, b.port)] }],
    }]);
    await withLoggedProxy(config, { accessLog: "json", requestId: true }, async (port, lines) => {
      const made = await rawRequest(port, "web.default.mesh");
      const id = /^x-request-id: (.*)$/m.exec(made.body)?.[1];
      assert.match(
        String(id),
        /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
      );
      const kept = await rawRequest(port, "web.default.mesh", {
        headers: ["X-Request-Id: mine-42"],
      });
      assert.deepEqual(b.requests[1]!.headers.get("x-request-id"), "mine-42");
      assert.equal(kept.body.match(/^x-request-id:/gm)?.length, 1, kept.body);
      await waitFor("two lines", lineCount(lines, 2));
      assert.equal(lines[0]!.request_id, id);
      assert.equal(lines[1]!.request_id, "mine-42");
    });
    // Off (the default), nothing is added.
    await withLoggedProxy(config, { accessLog: "json" }, async (port, lines) => {
      const r = await rawRequest(port, "web.default.mesh");
      assert.doesNotMatch(r.body, /^x-request-id:/m);
      await waitFor("one line", lineCount(lines, 1));
      assert.equal(lines[0]!.request_id, undefined);
    });
  } finally {
    await b.close();
  }
});

Deno.test("NodeProxy logs per the meshd.io/access-log annotation, over --access-log", async () => {
  const b = await httpBackend("a", BACKEND_HOST);
  try {
    const eps = [endpoint(BACKEND_HOST, b.port)];
    const config = meshConfig([
      { name: "on", accessLog: true, ports: [{ port: 80, endpoints: eps }] },
      { name: "off", accessLog: false, ports: [{ port: 80, endpoints: eps }] },
      { name: "plain", ports: [{ port: 80, endpoints: eps }] },
    ]);
    // Flag off: only the annotated-on service logs, in JSON.
    await withLoggedProxy(config, { accessLog: "off" }, async (port, lines, raw) => {
      for (const s of ["off", "plain", "on"]) await rawRequest(port, `${s}.default.mesh`);
      await waitFor("one line", lineCount(lines, 1));
      // The lines come in request order: a later one would be from "on" again.
      await rawRequest(port, "on.default.mesh");
      await waitFor("two lines", lineCount(lines, 2));
      assert.deepEqual(lines.map((l) => l.service), ["default/on:80", "default/on:80"]);
      assert.ok(raw[0]!.startsWith("{"));
    });
    // Flag on: every service but the annotated-off one, in the flag's format.
    await withLoggedProxy(config, { accessLog: "logfmt" }, async (port, lines, raw) => {
      for (const s of ["off", "plain", "on"]) await rawRequest(port, `${s}.default.mesh`);
      await waitFor("two lines", lineCount(lines, 2));
      await rawRequest(port, "plain.default.mesh");
      await waitFor("three lines", lineCount(lines, 3));
      assert.deepEqual(lines.map((l) => l.service), [
        "default/plain:80",
        "default/on:80",
        "default/plain:80",
      ]);
      assert.ok(raw[0]!.startsWith("time="));
    });
  } finally {
    await b.close();
  }
});

Deno.test("NodeProxy logs a TCP connection at its end, and a refused one", async () => {
  const echo = Deno.listen({ hostname: BACKEND_HOST, port: 0 });
  const serving = (async () => {
    for await (const c of echo) {
      (async () => {
        const buf = new Uint8Array(1024);
        for (;;) {
          const n = await c.read(buf).catch(() => null);
          if (n === null) break;
          await c.write(buf.subarray(0, n));
        }
        c.close();
      })();
    }
  })();
  const tcpPort = freePort();
  const deniedPort = freePort();
  try {
    const config = meshConfig([
      {
        name: "db",
        ports: [{
          port: 5432,
          protocol: "tcp",
          listenPort: tcpPort,
          endpoints: [endpoint(BACKEND_HOST, echo.addr.port, { serviceAccount: "default/db" })],
          access: [{
            trafficTarget: "default/db",
            destination: "default/db",
            sources: ["default/client"],
            http: [],
            l4: true,
          }],
        }],
      },
      {
        name: "vault",
        ports: [{
          port: 8200,
          protocol: "tcp",
          listenPort: deniedPort,
          endpoints: [endpoint(BACKEND_HOST, echo.addr.port, { serviceAccount: "default/vault" })],
          access: [],
        }],
      },
    ], { acl: true, identities: { "127.0.0.1": "default/client" } });
    await withLoggedProxy(config, { accessLog: "json" }, async (_, lines) => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: tcpPort });
      await c.write(enc.encode("ping!"));
      const buf = new Uint8Array(16);
      assert.equal(await c.read(buf), 5);
      await c.closeWrite();
      assert.equal(await c.read(buf), null);
      c.close();
      await waitFor("the tcp line", lineCount(lines, 1));
      const l = lines[0]!;
      assert.ok(ISO.test(String(l.time)));
      assert.equal(l.protocol, "tcp");
      assert.match(String(l.source), /^127\.0\.0\.1:\d+$/);
      assert.equal(l.identity, "default/client");
      assert.equal(l.service, "default/db:5432");
      assert.equal(l.endpoint, `${BACKEND_HOST}:${echo.addr.port}`);
      assert.equal(l.reason, "eof");
      assert.equal(l.bytes_in, 5);
      assert.equal(l.bytes_out, 5);
      assert.equal(l.retries, 0);
      assert.equal(l.status, undefined);

      const d = await Deno.connect({ hostname: "127.0.0.1", port: deniedPort });
      assert.equal(await d.read(buf).catch(() => null), null);
      d.close();
      await waitFor("the refusal line", lineCount(lines, 2));
      const r = lines[1]!;
      assert.equal(r.service, "default/vault:8200");
      assert.equal(r.reason, "acl");
      assert.match(
        String(r.detail),
        /no TrafficTarget with a TCPRoute lets ServiceAccount "default\/client"/,
      );
      assert.equal(r.bytes_in, 0);
    });
  } finally {
    echo.close();
    await serving.catch(() => {});
  }
});

Deno.test("NodeProxy logs a UDP flow when it ends idle, and a refused datagram", async () => {
  const backend = Deno.listenDatagram({ transport: "udp", hostname: BACKEND_HOST, port: 0 });
  const answering = (async () => {
    for (;;) {
      const got = await backend.receive().catch(() => null);
      if (!got) return;
      await backend.send(enc.encode("pong-pong"), got[1]).catch(() => {});
    }
  })();
  const bport = (backend.addr as Deno.NetAddr).port;
  const udpPort = freePort();
  const emptyPort = freePort();
  const client = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  try {
    const config = meshConfig([
      {
        name: "dns",
        ports: [{
          port: 53,
          protocol: "udp",
          listenPort: udpPort,
          endpoints: [endpoint(BACKEND_HOST, bport)],
        }],
      },
      {
        name: "none",
        ports: [{ port: 53, protocol: "udp", listenPort: emptyPort, endpoints: [] }],
      },
    ]);
    await withLoggedProxy(
      config,
      { accessLog: "logfmt", udpIdleTimeoutMs: 100 },
      async (_, lines) => {
        await client.send(enc.encode("ping"), {
          transport: "udp",
          hostname: "127.0.0.1",
          port: udpPort,
        });
        const [reply] = await client.receive();
        assert.equal(reply.length, 9);
        await waitFor("the flow's line", lineCount(lines, 1));
        const l = lines[0]!;
        assert.ok(ISO.test(String(l.time)));
        assert.equal(l.protocol, "udp");
        assert.equal(l.source, `127.0.0.1:${(client.addr as Deno.NetAddr).port}`);
        assert.equal(l.service, "default/dns:53");
        assert.equal(l.endpoint, `${BACKEND_HOST}:${bport}`);
        assert.equal(l.reason, "idle_timeout");
        assert.equal(l.bytes_in, 4);
        assert.equal(l.bytes_out, 9);
        assert.ok((l.duration_ms as number) >= 100, String(l.duration_ms));

        await client.send(enc.encode("x"), {
          transport: "udp",
          hostname: "127.0.0.1",
          port: emptyPort,
        });
        await waitFor("the refusal line", lineCount(lines, 2));
        assert.equal(lines[1]!.service, "default/none:53");
        assert.equal(lines[1]!.reason, "no_endpoint");
        assert.match(String(lines[1]!.detail), /has no ready endpoint/);
      },
    );
  } finally {
    client.close();
    backend.close();
    await answering;
  }
});

// This session's own backends for the HTTP/2 and unrouted cases (ops2: 127.0.67.0/24).
const H2_HOST = "127.0.67.1";

/**
 * An h2c backend on {@linkcode H2_HOST}: it answers gRPC-style (body back with its name, then
 * trailers).
 */
function h2Backend(name: string): Promise<{ port: number; close(): Promise<void> }> {
  const server = http2.createServer();
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  server.on("stream", (stream: http2.ServerHttp2Stream) => {
    stream.on("error", () => {});
    stream.respond({ ":status": 200, "content-type": "application/grpc" }, {
      waitForTrailers: true,
    });
    stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
    stream.on("data", (chunk: Uint8Array) => stream.write(`${name}:${chunk.length};`));
    stream.on("end", () => stream.end());
  });
  return new Promise((resolve) => {
    server.listen(0, H2_HOST, () => {
      resolve({
        port: (server.address() as { port: number }).port,
        close: () =>
          new Promise((done) => {
            for (const s of sessions) s.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}

/**
 * An h2c backend on meshd's own frame layer (node:http2 here resets with NO_ERROR whatever the
 * code): every stream gets headers and 7 bytes, then RST_STREAM INTERNAL_ERROR.
 */
function resettingBackend(): { port: number; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: H2_HOST, port: 0 });
  const conns: H2Connection[] = [];
  const accepting = (async () => {
    for await (const c of listener) {
      conns.push(
        new H2Connection(c, {
          role: "server",
          onStream: (st) => {
            st.sendHeaders([[":status", "200"]], false);
            st.sendData(enc.encode("partial"), false);
            st.reset(ERROR.INTERNAL_ERROR);
          },
        }),
      );
    }
  })();
  return {
    port: listener.addr.port,
    close: async () => {
      listener.close();
      await accepting.catch(() => {});
      for (const c of conns) c.destroy();
    },
  };
}

/** One HTTP/2 request: its status (0 when none came), its body, and whether it was reset. */
function h2Call(
  client: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  body?: string,
): Promise<{ status: number; body: string; reset: boolean }> {
  return new Promise((resolve) => {
    const req = client.request(headers);
    let status = 0;
    let got = "";
    req.on("response", (h) => status = Number(h[":status"]));
    req.on("data", (d: Uint8Array) => got += new TextDecoder().decode(d));
    req.on("error", () => {});
    req.on("close", () => resolve({ status, body: got, reset: req.rstCode !== 0 }));
    if (body !== undefined) req.write(body);
    req.end();
  });
}

async function withH2Client(
  port: number,
  fn: (c: http2.ClientHttp2Session) => Promise<void>,
): Promise<void> {
  const client = http2.connect(`http://127.0.0.1:${port}`);
  client.on("error", () => {});
  try {
    await fn(client);
  } finally {
    await new Promise<void>((r) => client.close(() => r()));
  }
}

const grpc = (authority: string, path = "/pkg.Svc/Call"): http2.OutgoingHttpHeaders => ({
  ":method": "POST",
  ":path": path,
  ":authority": authority,
  "content-type": "application/grpc",
  "te": "trailers",
});

Deno.test("NodeProxy logs an h2c stream with the fields of an HTTP/1 line: split, endpoint, retries, bytes", async () => {
  const live = await h2Backend("v2");
  const dead = freePort(H2_HOST);
  try {
    const config = meshConfig([
      {
        name: "greeter",
        scheme: "h2c",
        ports: [{
          port: 80,
          endpoints: [endpoint(H2_HOST, 9, { ready: false })],
          split: {
            name: "default/canary",
            matches: [],
            backends: [{ service: "greeter-v2", weight: 1 }],
          },
        }],
      },
      {
        name: "greeter-v2",
        scheme: "h2c",
        retryAttempts: 2,
        ports: [{ port: 80, endpoints: [endpoint(H2_HOST, dead), endpoint(H2_HOST, live.port)] }],
      },
    ], { identities: { "127.0.0.1": "default/client" } });
    await withLoggedProxy(
      config,
      { accessLog: "json", outlier: { consecutiveFailures: 1000 } },
      (port, lines) =>
        withH2Client(port, async (client) => {
          let sent = 0;
          let retried: Line | undefined;
          while (!retried && sent < 40) {
            const r = await h2Call(
              client,
              { ...grpc("greeter.default.mesh", "/pkg.Svc/Call?x=1"), "x-request-id": "h2-1" },
              "hello",
            );
            assert.equal(r.status, 200);
            sent++;
            await waitFor("the stream's line", lineCount(lines, sent));
            const l = lines[sent - 1]!;
            assert.ok(ISO.test(String(l.time)), JSON.stringify(l));
            assert.equal(l.protocol, "http");
            assert.match(String(l.source), /^127\.0\.0\.1:\d+$/);
            assert.equal(l.identity, "default/client");
            assert.equal(l.service, "default/greeter:80");
            assert.equal(l.backend, "default/greeter-v2:80");
            assert.equal(l.endpoint, `${H2_HOST}:${live.port}`);
            assert.equal(l.method, "POST");
            assert.equal(l.authority, "greeter.default.mesh");
            assert.equal(l.path, "/pkg.Svc/Call", "the query is left out");
            assert.equal(l.request_id, "h2-1");
            assert.equal(l.status, 200);
            assert.equal(l.reason, undefined, JSON.stringify(l));
            assert.equal(l.bytes_in, 5);
            assert.equal(l.bytes_out, enc.encode(r.body).length);
            assert.ok((l.duration_ms as number) >= 0);
            if (l.retries === 1) retried = l;
            else assert.equal(l.retries, 0);
          }
          assert.ok(retried, `no stream of ${sent} was retried: ${JSON.stringify(lines)}`);
        }),
    );
  } finally {
    await live.close();
  }
});

Deno.test("NodeProxy logs an HTTP/1 request to an h2c service with its endpoint, bytes and retries", async () => {
  const live = await h2Backend("v2");
  const dead = freePort(H2_HOST);
  try {
    const config = meshConfig([{
      name: "greeter",
      scheme: "h2c",
      retryAttempts: 2,
      ports: [{ port: 80, endpoints: [endpoint(H2_HOST, dead), endpoint(H2_HOST, live.port)] }],
    }]);
    await withLoggedProxy(
      config,
      { accessLog: "json", outlier: { consecutiveFailures: 1000 } },
      async (port, lines) => {
        let sent = 0;
        let retried: Line | undefined;
        while (!retried && sent < 40) {
          const r = await rawRequest(port, "greeter.default.mesh", {
            method: "POST",
            path: "/pkg.Svc/Call",
            body: "hello",
          });
          assert.equal(r.status, 200);
          sent++;
          await waitFor("the request's line", lineCount(lines, sent));
          const l = lines[sent - 1]!;
          assert.equal(l.service, "default/greeter:80");
          assert.equal(l.endpoint, `${H2_HOST}:${live.port}`, JSON.stringify(l));
          assert.equal(l.status, 200);
          assert.equal(l.bytes_in, 5);
          assert.equal(l.bytes_out, enc.encode(r.body).length);
          if (l.retries === 1) retried = l;
          else assert.equal(l.retries, 0);
        }
        assert.ok(retried, `no request of ${sent} was retried: ${JSON.stringify(lines)}`);
      },
    );
  } finally {
    await live.close();
  }
});

Deno.test("NodeProxy logs h2c denials, resets and streams no service answers, with the reason", async () => {
  const b = await h2Backend("a");
  const r = resettingBackend();
  try {
    const config = meshConfig([{
      name: "open",
      scheme: "h2c",
      ports: [{ port: 80, endpoints: [endpoint(H2_HOST, r.port)] }],
    }, {
      name: "locked",
      scheme: "h2c",
      ports: [{
        port: 80,
        endpoints: [endpoint(H2_HOST, b.port, { serviceAccount: "default/locked" })],
        access: [],
      }],
    }], { acl: true, identities: { "127.0.0.1": "default/client" } });
    await withLoggedProxy(
      config,
      { accessLog: "logfmt", requestId: true },
      (port, lines) =>
        withH2Client(port, async (client) => {
          const denied = await h2Call(client, grpc("locked.default.mesh"));
          assert.equal(denied.status, 200, "gRPC: a trailers-only answer");
          await waitFor("the denial's line", lineCount(lines, 1));
          assert.equal(lines[0]!.service, "default/locked:80");
          assert.equal(lines[0]!.status, 403);
          assert.equal(lines[0]!.reason, "acl");
          assert.match(String(lines[0]!.detail), /no TrafficTarget lets ServiceAccount/);
          assert.match(String(lines[0]!.request_id), /^[0-9a-f-]{36}$/, "--request-id adds one");

          const reset = await h2Call(client, { ...grpc("open.default.mesh", "/reset") });
          assert.equal(reset.reset, true);
          await waitFor("the reset stream's line", lineCount(lines, 2));
          assert.equal(lines[1]!.service, "default/open:80");
          assert.equal(lines[1]!.status, 200);
          assert.equal(lines[1]!.reason, "reset");
          assert.match(String(lines[1]!.detail), /endpoint reset the stream.*INTERNAL_ERROR/);
          assert.equal(lines[1]!.bytes_out, 7);

          const lost = await h2Call(client, {
            ":method": "GET",
            ":path": "/x?q=1",
            ":authority": "nowhere.default.mesh",
          });
          assert.equal(lost.status, 404);
          await waitFor("the unrouted stream's line", lineCount(lines, 3));
          const l = lines[2]!;
          assert.equal(l.service, undefined);
          assert.equal(l.status, 404);
          assert.equal(l.reason, "unknown_host");
          assert.equal(l.authority, "nowhere.default.mesh");
          assert.equal(l.path, "/x");
          assert.match(String(l.detail), /No mesh service answers to "nowhere\.default\.mesh"/);
        }),
    );
  } finally {
    await b.close();
    await r.close();
  }
});

Deno.test("NodeProxy logs HTTP/1 requests that reach no service: 404 for an unknown Host, 400 malformed", async () => {
  const config = meshConfig([{ name: "web", ports: [{ port: 80, endpoints: [] }] }]);
  await withLoggedProxy(config, { accessLog: "json" }, async (port, lines) => {
    const lost = await rawRequest(port, "nowhere.default.mesh", { path: "/a?b=c" });
    assert.equal(lost.status, 404);
    await waitFor("the 404's line", lineCount(lines, 1));
    assert.equal(lines[0]!.service, undefined);
    assert.equal(lines[0]!.status, 404);
    assert.equal(lines[0]!.reason, "unknown_host");
    assert.equal(lines[0]!.method, "GET");
    assert.equal(lines[0]!.authority, "nowhere.default.mesh");
    assert.equal(lines[0]!.path, "/a");
    assert.match(String(lines[0]!.detail), /No mesh service answers to Host/);
    assert.match(String(lines[0]!.source), /^127\.0\.0\.1:\d+$/);

    const two = await rawRequest(port, "web.default.mesh", { headers: ["Host: other"] });
    assert.equal(two.status, 400);
    await waitFor("the 400's line", lineCount(lines, 2));
    assert.equal(lines[1]!.status, 400);
    assert.equal(lines[1]!.reason, "bad_request");
    assert.match(String(lines[1]!.detail), /^Bad request: /);

    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    await c.write(enc.encode("NOT HTTP\r\n\r\n"));
    await c.read(new Uint8Array(1024)).catch(() => null);
    c.close();
    await waitFor("the unparsed request's line", lineCount(lines, 3));
    assert.equal(lines[2]!.status, 400);
    assert.equal(lines[2]!.reason, "bad_request");
    assert.equal(lines[2]!.method, undefined);
  });
  // A Service turned on by its annotation alone does not turn on the lines of no service.
  const annotated = meshConfig([{ name: "web", accessLog: true, ports: [{ port: 80 }] }]);
  await withLoggedProxy(annotated, { accessLog: "off" }, async (port, lines) => {
    assert.equal((await rawRequest(port, "nowhere.default.mesh")).status, 404);
    assert.equal((await rawRequest(port, "web.default.mesh")).status, 503);
    await waitFor("the service's line", lineCount(lines, 1));
    assert.equal(lines.length, 1);
    assert.equal(lines[0]!.service, "default/web:80");
  });
});

Deno.test("AccessLog.write() cuts long text fields so a line fits in one atomic pipe write", () => {
  for (const mode of ["json", "logfmt"] as const) {
    const out: string[] = [];
    const log = new AccessLog({ mode, write: (l) => out.push(l) });
    const entry = {
      start: 0,
      source: "127.0.67.9",
      protocol: "http" as const,
      service: "shop/web:80",
      method: "GET",
      path: "/" + "p".repeat(9000),
      detail: "d\u00e9".repeat(3000),
      durationMs: 1,
      bytesIn: 0,
      bytesOut: 0,
      retries: 0,
    };
    log.write(entry);
    log.write({ ...entry, path: "/short", detail: undefined });
    const line = out[0]!;
    assert.ok(enc.encode(line).length <= MAX_LINE, `${mode}: ${enc.encode(line).length} bytes`);
    assert.ok(line.endsWith("\n"));
    const parsed = mode === "json" ? JSON.parse(line) : parseLogfmt(line);
    assert.match(String(parsed.path), /^\/p+\.\.\.$/);
    assert.equal(parsed.service, "shop/web:80");
    assert.equal(parsed.status, undefined);
    assert.match(out[1]!, /\/short/, "a short line is left whole");
  }
});
