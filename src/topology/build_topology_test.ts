import assert from "node:assert/strict";
import { buildTopology, TopologyCache } from "./build_topology.ts";
import { decodeObject } from "./decode.ts";
import type { MeshObject } from "./objects.ts";

/** Decodes YAML-shaped objects, failing the test on any that does not decode. */
function objects(...raws: Record<string, unknown>[]): MeshObject[] {
  return raws.map((raw) => {
    const r = decodeObject(raw);
    if (r.status !== "ok") throw new Error(`fixture does not decode: ${JSON.stringify(r)}`);
    return r.object;
  });
}

/** A Service `name` in `test` on `port` with one endpoint at 10.0.0.1 run by Pod `server`. */
function service(name: string, port: number, trafficType = "http"): Record<string, unknown>[] {
  return [
    {
      apiVersion: "v1",
      kind: "Service",
      metadata: {
        name,
        namespace: "test",
        annotations: { "mesh.traefik.io/traffic-type": trafficType },
      },
      spec: { ports: [{ name: "p", port }] },
    },
    {
      apiVersion: "discovery.k8s.io/v1",
      kind: "EndpointSlice",
      metadata: { name, namespace: "test", labels: { "kubernetes.io/service-name": name } },
      addressType: "IPv4",
      ports: [{ name: "p", port }],
      endpoints: [{ addresses: ["10.0.0.1"], targetRef: { kind: "Pod", name: "server" } }],
    },
  ];
}

const POD = {
  apiVersion: "v1",
  kind: "Pod",
  metadata: { name: "server", namespace: "test" },
  spec: { serviceAccountName: "server" },
  status: { phase: "Running", podIP: "10.0.0.1" },
};

function target(spec: Record<string, unknown>): Record<string, unknown> {
  return {
    apiVersion: "access.smi-spec.io/v1alpha2",
    kind: "TrafficTarget",
    metadata: { name: "tt", namespace: "test" },
    spec: {
      destination: { kind: "ServiceAccount", name: "server", namespace: "test" },
      sources: [{ kind: "ServiceAccount", name: "tool", namespace: "test" }],
      ...spec,
    },
  };
}

const GROUP = {
  apiVersion: "specs.smi-spec.io/v1alpha3",
  kind: "HTTPRouteGroup",
  metadata: { name: "api", namespace: "test" },
  spec: { matches: [{ name: "api", pathRegex: "/api" }] },
};

interface Case {
  name: string;
  extra: Record<string, unknown>[];
  tt: Record<string, unknown>;
  /** The access rule's HTTP match names on the HTTP port, and l4 on HTTP and TCP ports. */
  http: string[];
  l4: boolean;
  /** A diagnostic of this level must say this. */
  diagnostic?: ["info" | "warn", RegExp];
}

const CASES: Case[] = [
  {
    // Traefik Mesh: a target without rules is routed by Host alone, so its sources may send
    // any HTTP request; its TCP routers need a TCPRoute spec, so TCP stays closed.
    name: "a TrafficTarget without rules allows any HTTP request, at info level",
    extra: [],
    tt: {},
    http: ["(no rules)"],
    l4: false,
    diagnostic: ["info", /has no rules: its sources may send any HTTP request/],
  },
  {
    name: "an empty rules list reads as no rules",
    extra: [],
    tt: { rules: [] },
    http: ["(no rules)"],
    l4: false,
    diagnostic: ["info", /has no rules/],
  },
  {
    // A rule naming a group that is missing is a broken target, not a rule-less one.
    name: "a rule whose HTTPRouteGroup is missing allows nothing",
    extra: [],
    tt: { rules: [{ kind: "HTTPRouteGroup", name: "gone" }] },
    http: [],
    l4: false,
    diagnostic: ["warn", /HTTPRouteGroup "test\/gone" does not exist/],
  },
  {
    name: "an HTTPRouteGroup rule allows its matches only",
    extra: [GROUP],
    tt: { rules: [{ kind: "HTTPRouteGroup", name: "api" }] },
    http: ["api"],
    l4: false,
  },
  {
    name: "a TCPRoute rule allows whole connections",
    extra: [{
      apiVersion: "specs.smi-spec.io/v1alpha3",
      kind: "TCPRoute",
      metadata: { name: "any", namespace: "test" },
      spec: {},
    }],
    tt: { rules: [{ kind: "TCPRoute", name: "any" }] },
    http: [],
    l4: true,
  },
];

for (const c of CASES) {
  Deno.test(`buildTopology() ${c.name}`, () => {
    const t = buildTopology(
      objects(
        ...service("web", 8080),
        ...service("db", 9000, "tcp"),
        POD,
        ...c.extra,
        target(c.tt),
      ),
      { acl: true },
    );
    const web = t.services.find((s) => s.name === "web")!.ports[0]!;
    const db = t.services.find((s) => s.name === "db")!.ports[0]!;
    assert.deepEqual(web.access!.map((r) => r.http.map((m) => m.name)), [c.http]);
    assert.deepEqual([web.access![0]!.l4, db.access![0]!.l4], [c.l4, c.l4]);
    if (c.diagnostic) {
      const [level, re] = c.diagnostic;
      assert.ok(
        t.diagnostics.some((d) => d.level === level && re.test(d.message)),
        `no ${level} diagnostic matching ${re} in ${JSON.stringify(t.diagnostics)}`,
      );
    } else assert.deepEqual(t.diagnostics, []);
  });
}

Deno.test("buildTopology() says an HTTPRouteGroup that could not be read is broken, not absent", () => {
  const t = buildTopology(
    objects(
      ...service("web", 8080),
      POD,
      target({ rules: [{ kind: "HTTPRouteGroup", name: "api" }] }),
    ),
    { acl: true, unreadable: { "HTTPRouteGroup/test/api": 'field "spec" is required' } },
  );
  assert.deepEqual(t.diagnostics.map((d) => d.message), [
    'HTTPRouteGroup "test/api" exists but could not be read (field "spec" is required)',
  ]);
});

Deno.test("buildTopology() with a TopologyCache resolves again only the services whose objects changed", () => {
  const [web, webSlice, api, apiSlice, pod] = objects(
    ...service("web", 8080),
    ...service("api", 9000),
    POD,
  );
  const cache = new TopologyCache();
  const first = buildTopology([web!, webSlice!, api!, apiSlice!, pod!], { cache });
  const endpointsOf = (t: ReturnType<typeof buildTopology>, name: string) =>
    t.services.find((s) => s.name === name)!.ports[0]!.endpoints;

  // A new object for api's slice, as the kube provider makes for a new resourceVersion.
  const [, apiSlice2] = objects(...service("api", 9000));
  (apiSlice2 as { endpoints: { addresses: string[] }[] }).endpoints[0]!.addresses = ["10.0.0.9"];
  const changed = [web!, webSlice!, api!, apiSlice2!, pod!];
  const second = buildTopology(changed, { cache });
  assert.deepEqual(second, buildTopology(changed));
  assert.equal(endpointsOf(second, "web"), endpointsOf(first, "web"), "web was not resolved again");
  assert.deepEqual(endpointsOf(second, "api").map((e) => e.address), ["10.0.0.9"]);

  // A Pod changed: its ServiceAccount may be any service's endpoint's, so all resolve again.
  const [pod2] = objects({ ...POD, spec: { serviceAccountName: "other" } });
  const third = buildTopology([web!, webSlice!, api!, apiSlice2!, pod2!], { cache });
  assert.deepEqual(third, buildTopology([web!, webSlice!, api!, apiSlice2!, pod2!]));
  assert.equal(endpointsOf(third, "web")[0]!.serviceAccount, "test/other");
});

Deno.test("buildTopology() with a TopologyCache gives an unchanged service as the same object unless splits or ACL may change it", () => {
  const [web, webSlice, api, apiSlice, pod] = objects(
    ...service("web", 8080),
    ...service("api", 9000),
    POD,
  );
  const [, apiSlice2] = objects(...service("api", 9000));
  (apiSlice2 as { endpoints: { addresses: string[] }[] }).endpoints[0]!.addresses = ["10.0.0.9"];
  const webOf = (t: ReturnType<typeof buildTopology>) => t.services.find((s) => s.name === "web")!;
  for (const acl of [false, true]) {
    const cache = new TopologyCache();
    const first = buildTopology([web!, webSlice!, api!, apiSlice!, pod!], { cache, acl });
    const second = buildTopology([web!, webSlice!, api!, apiSlice2!, pod!], { cache, acl });
    assert.deepEqual(second, buildTopology([web!, webSlice!, api!, apiSlice2!, pod!], { acl }));
    // With ACL the ports get access rules of this build: they must be fresh objects.
    if (acl) assert.notEqual(webOf(second), webOf(first), "with ACL");
    else assert.equal(webOf(second), webOf(first), "without splits or ACL");
  }
});

Deno.test("buildTopology() gives an address that running Pods of several ServiceAccounts share (hostNetwork) all of them, sorted", () => {
  const node = (name: string, sa: string, phase = "Running") => ({
    ...POD,
    metadata: { name, namespace: "test" },
    spec: { serviceAccountName: sa, hostNetwork: true },
    status: { phase, podIP: "192.0.2.11" },
  });
  const t = buildTopology(
    objects(
      node("agent", "tool"),
      node("exporter", "metrics"),
      node("agent-2", "tool"), // the same ServiceAccount once
      node("done", "admin", "Succeeded"), // a finished Pod owns no address
      POD,
    ),
    { acl: true },
  );
  assert.deepEqual(t.identities, {
    "192.0.2.11": "test/metrics,test/tool",
    "10.0.0.1": "test/server",
  });
});
