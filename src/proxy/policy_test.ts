import assert from "node:assert/strict";
import { endpoint, meshConfig } from "../../tests/testenv/mesh.ts";
import { Logger } from "../observability/mod.ts";
import { admit, ProxyFailure, withoutOwn } from "./policy.ts";
import { buildRouteTable, type Route } from "./route_table.ts";

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

function webRoute(extra: Record<string, unknown> = {}): Route {
  const table = buildRouteTable(meshConfig([{
    name: "web",
    ports: [{
      port: 80,
      endpoints: [endpoint("127.0.62.20", 8080), endpoint("127.0.62.21", 8080)],
    }],
    ...extra,
  }]));
  return table.http.get("web.default.mesh")!;
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
  const root = table.http.get("web.default.mesh")!;
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
