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
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";
import { waitFor } from "../testenv/process.ts";
import net from "node:net";
import {
  alive,
  httpStatus,
  logLines,
  type Meshd,
  metric,
  service,
  startMeshd,
  stopMeshd,
} from "./_load_env.ts";

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

/**
 * A backend that answers any request with 101 and then writes 64 KiB blocks until its
 * connection fails; `closed` counts the connections that failed.
 */
function floodingUpgradeBackend(hostname: string): {
  port: number;
  closed: () => number;
  close: () => void;
} {
  const listener = Deno.listen({ hostname, port: 0 });
  let closed = 0;
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
        const block = new Uint8Array(64 * 1024).fill(120);
        await conn.write(
          new TextEncoder().encode(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
          ),
        );
        for (;;) await conn.write(block);
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

Deno.test("HttpProxy applies the write timeout to an upgraded connection whose client never reads", async () => {
  const backend = floodingUpgradeBackend("127.0.100.21");
  const drops: string[] = [];
  const limiter = new ConnectionLimiter({ max: 100, perSource: 100 }, () => {});
  const config = meshConfig([{
    name: "ws",
    ports: [{ port: 80, endpoints: [endpoint("127.0.100.21", backend.port)] }],
  }]);
  const table = buildRouteTable(config);
  const proxy = new HttpProxy({
    hostname: ADDRESS,
    port: 0,
    routes: () => table,
    pool: new EndpointPool(),
    logger: quiet,
    writeTimeoutMs: 500,
    limiter,
    drop: (reason) => drops.push(reason),
  });
  const conn = await Deno.connect({ hostname: ADDRESS, port: proxy.addr.port });
  try {
    await conn.write(
      new TextEncoder().encode(
        "GET /chat HTTP/1.1\r\nHost: ws.default.mesh\r\nConnection: Upgrade\r\n" +
          "Upgrade: websocket\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n",
      ),
    );
    // The client reads nothing: the proxy's writes to it stop making progress.
    await waitFor(
      "the backend connection of the stalled tunnel to be closed",
      () => backend.closed() >= 1 || undefined,
      20_000,
      100,
    );
    await waitFor("the client's slot back", () => limiter.open === 0 || undefined, 10_000);
    assert.ok(drops.includes("write_timeout"), `drops: ${JSON.stringify(drops)}`);
  } finally {
    try {
      conn.close();
    } catch { /* closed by the proxy */ }
    await proxy.close();
    backend.close();
  }
});

/** An EndpointSlice of Service `svc` whose only endpoint is not ready. */
function unreadySlice(svc: string, port: number, protocol = "TCP"): string {
  return `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: ${svc}-a, namespace: hl, labels: { kubernetes.io/service-name: ${svc} } }
addressType: IPv4
ports: [{ name: p, port: ${port}, protocol: ${protocol} }]
endpoints:
  - { addresses: ["127.0.100.30"], conditions: { ready: false } }
`;
}

/** Opens a TCP connection from `source` and waits until meshd closes it (or 5 s pass). */
function connectAndWait(m: Meshd, source: string): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect({ host: m.address, port: m.tcp, localAddress: source });
    const timer = setTimeout(() => s.destroy(), 5000);
    s.on("error", () => {});
    s.on("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

Deno.test("meshd logs a repeated failure a client can trigger at will once in a while, not per request", async () => {
  const client = "127.0.101.1";
  let m: Meshd | undefined;
  const udp = Deno.listenDatagram({ transport: "udp", hostname: client, port: 0 });
  try {
    // Services whose only endpoint is not ready: every request, connection and datagram fails.
    m = await startMeshd({
      address: "127.0.100.6",
      nofile: 1024,
      services: 3,
      config: () => [
        service("web", 80),
        unreadySlice("web", 8080),
        service("tcp", 9000, { annotations: { "meshd.io/traffic-type": "tcp" } }),
        unreadySlice("tcp", 9000),
        service("dns", 53, { protocol: "UDP" }),
        unreadySlice("dns", 53, "UDP"),
      ],
    });
    const mesh = m;
    const N = 200;
    const statuses = new Set<number>();
    for (let i = 0; i < N; i++) {
      statuses.add(await httpStatus(mesh, "web.hl.mesh", { source: client }));
    }
    assert.deepEqual([...statuses], [503]);
    for (let i = 0; i < N; i++) await connectAndWait(mesh, client);
    const datagram = new TextEncoder().encode("x");
    const dropped = () => metric(mesh, "meshd_denied_total", 'reason="no_endpoint"');
    const before = await dropped();
    for (let i = 0; i < N; i++) {
      await udp.send(datagram, { transport: "udp", hostname: mesh.address, port: mesh.udp });
    }
    await waitFor(
      "most datagrams to be counted as dropped",
      async () => (await dropped()) - before >= N / 2 || undefined,
      10_000,
      50,
    );
    // Meanwhile each was counted; a handful of lines is enough to tell an operator.
    const lines = {
      http: logLines(mesh, /http request failed/),
      tcp: logLines(mesh, /tcp connection refused/),
      udp: logLines(mesh, /udp datagram dropped/),
    };
    assert.ok(alive(mesh));
    for (const [what, n] of Object.entries(lines)) {
      assert.ok(n <= 5, `${n} ${what} log lines for ${N} failures: ${JSON.stringify(lines)}`);
    }
  } finally {
    udp.close();
    if (m) await stopMeshd(m);
  }
});
