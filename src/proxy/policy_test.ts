import assert from "node:assert/strict";
import type {
  MeshAccessRule,
  MeshConfig,
  MeshEndpoint,
  MeshPort,
  MeshService,
} from "../topology/mod.ts";
import type { RequestInfo } from "./access.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { Logger } from "../observability/mod.ts";
import { admit, ProxyFailure, withoutOwn } from "./policy.ts";
import { buildRouteTable, lookupHttpRoute, newRouteState, type Route } from "./route_table.ts";

Deno.test("ProxyFailure carries the x-meshd-error reason code of its status, or the one given", () => {
  const cases: [number, string][] = [
    [400, "bad-request"],
    [431, "bad-request"],
    [403, "acl-denied"],
    [404, "unknown-host"],
    [429, "rate-limited"],
    [502, "endpoint-failed"],
    [503, "no-endpoint"],
    [504, "timeout"],
    [508, "loop"],
  ];
  for (const [status, code] of cases) assert.equal(new ProxyFailure(status, "x").code, code);
  // 503 is also the open circuit breaker's answer: it says so itself.
  assert.equal(new ProxyFailure(503, "x", {}, false, "circuit-open").code, "circuit-open");
});

// admit(): the traffic policy of one HTTP request, as a table. The configs are written out in
// full here (MeshConfig is plain data) so this test needs nothing from tests/.

const TOOL = "10.0.0.1"; // a Pod running as test/tool
const OTHER = "10.0.0.2"; // a Pod running as test/other

function ep(address: string, serviceAccount: string | null, ready = true): MeshEndpoint {
  const e = { address, port: 8080, ready, serving: ready, terminating: false, nodeName: null };
  return { ...e, serviceAccount };
}

function svc(name: string, endpoints: MeshEndpoint[], o: Partial<MeshPort> = {}): MeshService {
  return {
    name,
    namespace: "test",
    clusterIP: null,
    scheme: "http",
    retryAttempts: 0,
    circuitBreaker: null,
    rateLimit: null,
    ports: [{
      name: "http",
      port: 80,
      protocol: "http",
      listenPort: null,
      endpoints,
      split: null,
      access: null,
      ...o,
    }],
  };
}

function allow(destination: string, o: Partial<MeshAccessRule> = {}): MeshAccessRule {
  return {
    trafficTarget: `test/${destination.split("/")[1]}`,
    destination,
    sources: ["test/tool"],
    http: [{ name: "any", methods: [], pathRegex: "", headers: {} }],
    l4: false,
    ...o,
  };
}

function config(services: MeshService[], acl = false): MeshConfig {
  return {
    version: 1,
    domain: "mesh",
    acl,
    identities: { [TOOL]: "test/tool", [OTHER]: "test/other" },
    services,
  };
}

function request(method: string, path: string): RequestInfo {
  return { method, path, header: () => null };
}

interface AdmitCase {
  name: string;
  config: MeshConfig;
  /** Requests before the one checked (to use up a rate limit, say). */
  before?: number;
  source?: string;
  request?: RequestInfo;
  /** Admitted: the route chosen and its candidates' addresses; refused: status, code, text. */
  want:
    | { target: string; candidates: string[] }
    | { status: number; code: string; message: RegExp; deny: string };
}

const WEB = [ep("10.1.0.1", "test/web"), ep("10.1.0.2", "test/web-canary")];
const SPLIT = {
  name: "test/web-split",
  matches: [],
  backends: [{ service: "web-v2", weight: 1 }],
};

const ADMIT_CASES: AdmitCase[] = [
  {
    name: "with ACL off every ready endpoint is a candidate",
    config: config([svc("web", [...WEB, ep("10.1.0.3", "test/web", false)])]),
    want: { target: "test/web:80", candidates: ["10.1.0.1", "10.1.0.2"] },
  },
  {
    // Traefik Mesh's rate-limit annotations: average per second and burst; over it, 429.
    name: "a request over the service's rate limit is refused with 429 before anything else",
    config: config([{ ...svc("web", WEB), rateLimit: { average: 1, burst: 2 } }], true),
    before: 2,
    source: "10.0.0.9", // not a known Pod: the rate limit answers before access control
    want: {
      status: 429,
      code: "rate-limited",
      message: /over its rate limit of 1 requests a second/,
      deny: "rate_limit",
    },
  },
  {
    // SMI access: deny by default; the 403 names what is missing.
    name: "TrafficTarget: a source no target lets in gets 403 naming why",
    config: config([svc("web", WEB, { access: [allow("test/web")] })], true),
    source: OTHER,
    want: {
      status: 403,
      code: "acl-denied",
      message: /^Access denied: no TrafficTarget lets ServiceAccount "test\/other" send GET \//,
      deny: "acl",
    },
  },
  {
    // SMI: the destination ServiceAccount is what may be reached, not the whole Service.
    name: "TrafficTarget destination: only endpoints running as the destination are candidates",
    config: config([svc("web", WEB, { access: [allow("test/web")] })], true),
    want: { target: "test/web:80", candidates: ["10.1.0.1"] },
  },
  {
    name: "TrafficTarget: allowed, but no ready endpoint runs as the destination: 503",
    config: config([svc("web", WEB, { access: [allow("test/api")] })], true),
    want: {
      status: 503,
      code: "no-endpoint",
      message: /^Service "test\/web:80" has no ready endpoint the source may reach$/,
      deny: "no_endpoint",
    },
  },
  {
    name: "a service with no ready endpoint answers 503",
    config: config([svc("web", [ep("10.1.0.3", "test/web", false)])]),
    want: {
      status: 503,
      code: "no-endpoint",
      message: /^Service "test\/web:80" has no ready endpoint$/,
      deny: "no_endpoint",
    },
  },
  {
    // SMI TrafficSplit: traffic for the root goes to the backends by weight; meshd sends it to
    // the backend's own endpoints in the same hop.
    name: "TrafficSplit: the request goes straight to the backend's endpoints",
    config: config([
      svc("web", WEB, { split: SPLIT }),
      svc("web-v2", [ep("10.2.0.1", "test/web")]),
    ]),
    want: { target: "test/web-v2:80", candidates: ["10.2.0.1"] },
  },
  {
    // SMI TrafficSplit v1alpha3 matches: only requests matching an HTTPRouteGroup are split.
    name: "TrafficSplit with matches: a request that matches none stays on the root",
    config: config([
      svc("web", WEB, {
        split: { ...SPLIT, matches: [{ name: "v2", methods: [], pathRegex: "/v2", headers: {} }] },
      }),
      svc("web-v2", [ep("10.2.0.1", "test/web")]),
    ]),
    request: request("GET", "/v1"),
    want: { target: "test/web:80", candidates: ["10.1.0.1", "10.1.0.2"] },
  },
  {
    // Through a split, access is checked on the backend chosen: access to the root is not enough.
    name: "TrafficSplit under ACL: the source needs a TrafficTarget to the backend chosen",
    config: config([
      svc("web", WEB, { split: SPLIT, access: [allow("test/web")] }),
      svc("web-v2", [ep("10.2.0.1", "test/web-v2")], { access: [] }),
    ], true),
    want: {
      status: 403,
      code: "acl-denied",
      message: /^Access denied: no TrafficTarget lets .* to HTTP port 80 of service "test\/web-v2"/,
      deny: "acl",
    },
  },
  {
    name: "TrafficSplit: a backend with no ready endpoint is named in the 503",
    config: config([
      svc("web", WEB, { split: SPLIT }),
      svc("web-v2", [ep("10.2.0.1", "test/web", false)]),
    ]),
    want: {
      status: 503,
      code: "no-endpoint",
      message: /^Backend "test\/web-v2:80" of split "test\/web-split" has no ready endpoint$/,
      deny: "no_endpoint",
    },
  },
];

for (const c of ADMIT_CASES) {
  Deno.test(`admit() ${c.name}`, () => {
    let now = 1_000_000;
    const state = newRouteState({ now: () => now });
    const table = buildRouteTable(c.config, state);
    const root = lookupHttpRoute(table, "web.test.mesh")!;
    const source = c.source ?? TOOL;
    const req = c.request ?? request("GET", "/");
    for (let i = 0; i < (c.before ?? 0); i++) admit(root, source, req);
    now += 1; // less than a token's worth of time
    const w = c.want;
    if ("target" in w) {
      const a = admit(root, source, req);
      assert.equal(a.target.key, w.target);
      assert.deepEqual(a.candidates.map((s) => s.key.split(":")[0]).sort(), w.candidates);
      return;
    }
    assert.throws(() => admit(root, source, req), (e: unknown) => {
      assert.ok(e instanceof ProxyFailure, String(e));
      assert.equal(e.status, w.status);
      assert.equal(e.code, w.code);
      assert.match(e.message, w.message);
      return true;
    });
    const text = state.metrics.registry.render();
    assert.match(
      text,
      new RegExp(`^meshd_denied_total\\{[^}]*reason="${w.deny}"[^}]*\\} 1$`, "m"),
      text.split("\n").filter((l) => l.startsWith("meshd_denied")).join("\n"),
    );
  });
}

function webRoute(extra: Record<string, unknown> = {}): Route {
  const table = buildRouteTable(meshConfig([{
    name: "web",
    ports: [{
      port: 80,
      endpoints: [endpoint("127.0.62.20", 8080), endpoint("127.0.62.21", 8080)],
    }],
    ...extra,
  }]));
  return lookupHttpRoute(table, "web.default.mesh")!;
}

const info = { method: "GET", path: "/", header: () => null };

Deno.test("admit() holds HTTP requests to the rate limit and never a TCP connection", () => {
  const root = webRoute({ rateLimit: { average: 1, burst: 1 } });
  assert.equal(admit(root, "127.0.62.5", info).candidates.length, 2);
  assert.throws(
    () => admit(root, "127.0.62.5", info),
    (e) => e instanceof ProxyFailure && e.status === 429 && e.extraHeaders["retry-after"] === "1",
  );
  // The rate limit is an HTTP middleware: with no request, the same route still admits.
  const l4 = admit(root, "127.0.62.5", null);
  assert.equal(l4.target, root);
  assert.deepEqual(l4.candidates, root.readyStates);
});

Deno.test("admit() answers 503 for a route with no ready endpoint, over TCP as over HTTP", () => {
  const table = buildRouteTable(meshConfig([{ name: "web", ports: [{ port: 80 }] }]));
  const root = lookupHttpRoute(table, "web.default.mesh")!;
  for (const request of [info, null]) {
    assert.throws(
      () => admit(root, "127.0.62.5", request),
      (e) =>
        e instanceof ProxyFailure && e.status === 503 && /has no ready endpoint$/.test(e.message),
    );
  }
  assert.equal(root.metrics.denied("no_endpoint").value, 2);
});

Deno.test("withoutOwn() drops meshd's own listeners, and answers 508 when nothing else is left", () => {
  const root = webRoute();
  const drops: string[] = [];
  const guard = {
    isOwn: (address: string) => address === "127.0.62.20",
    drop: (r: string) => drops.push(r),
    logger: new Logger({ level: "error", write: () => {} }),
  };
  const rest = withoutOwn({ target: root, candidates: root.readyStates }, guard);
  assert.deepEqual(rest.map((c) => c.address), ["127.0.62.21"]);
  assert.throws(
    () => withoutOwn({ target: root, candidates: root.readyStates.slice(0, 1) }, guard),
    (e) => e instanceof ProxyFailure && e.status === 508 && e.code === "loop",
  );
  assert.deepEqual(drops, ["loop"]);
  // No guard function: every candidate stays.
  assert.equal(
    withoutOwn({ target: root, candidates: root.readyStates }, { ...guard, isOwn: undefined })
      .length,
    2,
  );
});
