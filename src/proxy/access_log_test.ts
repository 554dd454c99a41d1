/**
 * The access log, from MeshConfig to the lines a real proxy writes for real HTTP, TCP and UDP
 * traffic on loopback (backends on 127.0.68.x).
 */
import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { AccessLog } from "./access_log.ts";
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
