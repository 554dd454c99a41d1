import assert from "node:assert/strict";
import type { MeshConfig, MeshPort, MeshService } from "../topology/mod.ts";
import { siblingPorts, workerShare } from "./worker_share.ts";

const port = (protocol: MeshPort["protocol"], listenPort: number | null): MeshPort => ({
  name: `${protocol}-${listenPort}`,
  port: 80,
  protocol,
  listenPort,
  endpoints: [],
  split: null,
  access: null,
});

const service = (name: string, ports: MeshPort[], rate?: [number, number]): MeshService => ({
  name,
  namespace: "ns",
  clusterIP: null,
  scheme: "http",
  retryAttempts: 0,
  circuitBreaker: null,
  rateLimit: rate ? { average: rate[0], burst: rate[1] } : null,
  ports,
});

const CONFIG: MeshConfig = {
  version: 7,
  domain: "mesh",
  acl: false,
  identities: {},
  services: [
    service("web", [port("http", null)], [100, 5]),
    service("db", [port("tcp", 10000)]),
    service("dns", [port("udp", 15000), port("udp", 15001), port("tcp", 10001)]),
  ],
};

const udpPorts = (c: MeshConfig) =>
  c.services.flatMap((s) => s.ports.filter((p) => p.protocol === "udp").map((p) => p.listenPort));

Deno.test("workerShare() gives each UDP port to one worker and every HTTP and TCP port to all", () => {
  const a = workerShare(CONFIG, { index: 0, count: 2 });
  const b = workerShare(CONFIG, { index: 1, count: 2 });
  assert.deepEqual(udpPorts(a), [15000]);
  assert.deepEqual(udpPorts(b), [15001]);
  for (const share of [a, b]) {
    assert.equal(share.version, 7);
    assert.deepEqual(
      share.services.flatMap((s) => s.ports.filter((p) => p.protocol !== "udp")).map((p) =>
        p.listenPort
      ),
      [null, 10000, 10001],
    );
  }
  // Untouched services are the same objects (the proxy reuses their routes).
  assert.equal(a.services[1], CONFIG.services[1]);
  // The input is not changed.
  assert.deepEqual(udpPorts(CONFIG), [15000, 15001]);
});

Deno.test("workerShare() splits a rate limit over the workers, a burst of at least 1 each", () => {
  assert.deepEqual(workerShare(CONFIG, { index: 0, count: 2 }).services[0]!.rateLimit, {
    average: 50,
    burst: 3,
  });
  assert.deepEqual(workerShare(CONFIG, { index: 3, count: 8 }).services[0]!.rateLimit, {
    average: 12.5,
    burst: 1,
  });
  assert.equal(workerShare(CONFIG, { index: 0, count: 1 }), CONFIG);
});

Deno.test("workerShare() gives HTTP workers the HTTP ports and the L4 worker every TCP and UDP port", () => {
  const ports = (c: MeshConfig) =>
    c.services.flatMap((s) => s.ports.map((p) => `${p.protocol}:${p.listenPort}`));
  const cases = [
    // --workers 2 --l4-worker: the HTTP workers split the rate limit, the L4 worker has none.
    { slot: { index: 1, count: 2, role: "http" as const }, ports: ["http:null"], rate: 50 },
    {
      slot: { index: 0, count: 2, role: "l4" as const },
      ports: ["tcp:10000", "udp:15000", "udp:15001", "tcp:10001"],
      rate: 100,
    },
    // --l4-worker alone: the HTTP side in the main isolate (count 1), the L4 worker (count 0).
    { slot: { index: 0, count: 1, role: "http" as const }, ports: ["http:null"], rate: 100 },
    {
      slot: { index: 0, count: 0, role: "l4" as const },
      ports: ["tcp:10000", "udp:15000", "udp:15001", "tcp:10001"],
      rate: 100,
    },
  ];
  for (const c of cases) {
    const share = workerShare(CONFIG, c.slot);
    assert.deepEqual(ports(share), c.ports, JSON.stringify(c.slot));
    assert.equal(share.services[0]!.rateLimit?.average, c.rate, JSON.stringify(c.slot));
  }
});

Deno.test("siblingPorts() names the ports another proxy of the same meshd serves", () => {
  const sorted = (o: { tcp: ReadonlySet<number>; udp: ReadonlySet<number> }) => ({
    tcp: [...o.tcp].sort(),
    udp: [...o.udp].sort(),
  });
  // The HTTP side: the L4 worker's TCP and UDP ports.
  assert.deepEqual(sorted(siblingPorts(CONFIG, "http", 5000)), {
    tcp: [10000, 10001],
    udp: [15000, 15001],
  });
  // The L4 worker: the HTTP entrypoint.
  assert.deepEqual(sorted(siblingPorts(CONFIG, "l4", 5000)), { tcp: [5000], udp: [] });
  // A proxy that serves every port has no sibling.
  assert.deepEqual(sorted(siblingPorts(CONFIG, "all", 5000)), { tcp: [], udp: [] });
});
