import assert from "node:assert/strict";
import { buildMeshConfig } from "./build_mesh_config.ts";
import type { Topology, TopologyService } from "./build_topology.ts";

function svc(name: string, ...ports: [number, "http" | "tcp" | "udp"][]): TopologyService {
  return {
    name,
    namespace: "default",
    clusterIP: null,
    scheme: "http",
    retryAttempts: 0,
    circuitBreaker: null,
    rateLimit: null,
    ports: ports.map(([port, protocol]) => ({
      name: "",
      port,
      protocol,
      endpoints: [],
      split: null,
      access: null,
    })),
  };
}

const topo = (...services: TopologyService[]): Topology => ({
  acl: false,
  services,
  identities: { "10.0.0.1": "default/a" },
  diagnostics: [],
});

const listen = (r: ReturnType<typeof buildMeshConfig>) =>
  Object.fromEntries(
    r.config.services.flatMap((s) => s.ports.map((p) => [`${s.name}:${p.port}`, p.listenPort])),
  );

Deno.test("buildMeshConfig() bumps the version only when the content changes", () => {
  const first = buildMeshConfig(topo(svc("a", [80, "http"])));
  assert.equal(first.config.version, 1);
  const same = buildMeshConfig(topo(svc("a", [80, "http"])), { previous: first.config });
  assert.equal(same.config, first.config, "an unchanged rebuild returns the config in force");
  const changed = buildMeshConfig(topo(svc("a", [81, "http"])), { previous: first.config });
  assert.equal(changed.config.version, 2);
  const domain = buildMeshConfig(topo(svc("a", [81, "http"])), {
    previous: changed.config,
    domain: "corp",
  });
  assert.equal(domain.config.version, 3);
  // Identities only matter, and only count as content, when ACL is on.
  assert.deepEqual(domain.config.identities, {});
});

Deno.test("buildMeshConfig() keeps the previous object of every unchanged service", () => {
  const first = buildMeshConfig(topo(svc("a", [80, "http"]), svc("b", [80, "http"]))).config;
  const next = buildMeshConfig(topo(svc("a", [80, "http"]), svc("b", [81, "http"]), svc("c")), {
    previous: first,
  }).config;
  assert.equal(next.version, 2);
  assert.equal(next.services[0], first.services[0], "a is unchanged: the same object");
  assert.notEqual(next.services[1], first.services[1], "b changed: a new object");
  assert.deepEqual(next.services[1]!.ports.map((p) => p.port), [81]);
  assert.deepEqual(next.services.map((s) => s.name), ["a", "b"], "c has no ports: left out");
});

Deno.test("buildMeshConfig() keeps a service made from the same topology service without comparing it", () => {
  const a = svc("a", [80, "http"], [5432, "tcp"]);
  const first = buildMeshConfig(topo(a, svc("b", [80, "http"]))).config;
  // A read of any field but the name, namespace and ports is a field-by-field comparison.
  const old = first.services[0]!;
  let reads = 0;
  const scheme = old.scheme;
  Object.defineProperty(old, "scheme", {
    enumerable: true,
    get: () => (reads++, scheme),
  });
  const next = buildMeshConfig(topo(a, svc("b", [81, "http"])), { previous: first }).config;
  assert.equal(next.services[0], old);
  assert.equal(reads, 0, "the unchanged service was compared field by field");
  // A new topology object with the same content is compared, and kept.
  const again = buildMeshConfig(topo(svc("a", [80, "http"], [5432, "tcp"]), next.services[1]!), {
    previous: next,
  }).config;
  assert.equal(again.services[0], old);
  assert.ok(reads > 0);
});

Deno.test("buildMeshConfig() keeps each TCP and UDP port's proxy port while it exists", () => {
  const tcpPorts = { first: 20000, last: 20009 };
  const udpPorts = { first: 21000, last: 21009 };
  const opts = { tcpPorts, udpPorts };
  const v1 = buildMeshConfig(topo(svc("b", [1, "tcp"]), svc("c", [2, "tcp"], [2, "udp"])), opts);
  assert.deepEqual(listen(v1), { "b:1": 20000, "c:2": 21000 } as Record<string, number>);
  assert.deepEqual(
    v1.config.services[1]!.ports.map((p) => p.listenPort),
    [20001, 21000],
  );
  // A service added before the others in sort order does not move them.
  const v2 = buildMeshConfig(
    topo(svc("a", [9, "tcp"]), svc("b", [1, "tcp"]), svc("c", [2, "tcp"], [2, "udp"])),
    { ...opts, previous: v1.config },
  );
  assert.equal(v2.config.services[0]!.ports[0]!.listenPort, 20002);
  assert.equal(v2.config.services[1]!.ports[0]!.listenPort, 20000);
  assert.deepEqual(v2.config.services[2]!.ports.map((p) => p.listenPort), [20001, 21000]);
  // A removed port frees its number for the next new one.
  const v3 = buildMeshConfig(topo(svc("a", [9, "tcp"]), svc("d", [4, "tcp"])), {
    ...opts,
    previous: v2.config,
  });
  assert.deepEqual(v3.config.services.map((s) => s.ports[0]!.listenPort), [20002, 20000]);
  // HTTP ports share the entrypoint and get none.
  assert.equal(
    buildMeshConfig(topo(svc("h", [80, "http"]))).config.services[0]!.ports[0]!
      .listenPort,
    null,
  );
});

Deno.test("buildMeshConfig() re-allocates a held port that falls outside a new range", () => {
  const v1 = buildMeshConfig(topo(svc("a", [1, "tcp"])), { tcpPorts: { first: 100, last: 101 } });
  const v2 = buildMeshConfig(topo(svc("a", [1, "tcp"])), {
    previous: v1.config,
    tcpPorts: { first: 200, last: 201 },
  });
  assert.equal(v2.config.services[0]!.ports[0]!.listenPort, 200);
});

Deno.test("buildMeshConfig() reports a port it cannot place and keeps the rest", () => {
  const r = buildMeshConfig(
    topo(svc("a", [1, "tcp"], [2, "tcp"]), svc("b", [3, "tcp"], [80, "http"])),
    {
      tcpPorts: { first: 100, last: 101 },
    },
  );
  assert.deepEqual(r.diagnostics, [{
    level: "error",
    object: "Service/default/b",
    message: "Cannot give TCP port 3 a proxy port: all of 100-101 are taken",
  }]);
  assert.deepEqual(r.config.services.map((s) => s.ports.map((p) => p.port)), [[1, 2], [80]]);
});
