import assert from "node:assert/strict";
import { buildRouteTable, lookupHttpRoute, newRouteState } from "./route_table.ts";
import { endpoint, meshConfig } from "../../tests/testenv/mesh.ts";

const config = meshConfig([
  { name: "web", ports: [{ port: 80 }, { port: 8080 }] },
  { name: "api", namespace: "shop", ports: [{ port: 9000 }] },
  { name: "db", ports: [{ port: 5432, protocol: "tcp", listenPort: 10000 }] },
  { name: "dns", ports: [{ port: 53, protocol: "udp", listenPort: 15000 }] },
  { name: "multi", ports: [{ port: 81 }, { port: 82 }] },
], { domain: "Mesh.", version: 4 });

Deno.test("lookupHttpRoute() finds service ports by Host, with or without port, any case", () => {
  const t = buildRouteTable(config);
  assert.equal(t.version, 4);
  const key = (h: string | null) => lookupHttpRoute(t, h)?.key;
  assert.equal(key("web.default.mesh"), "default/web:80");
  assert.equal(key("web.default.mesh:8080"), "default/web:8080");
  assert.equal(key("WEB.Default.MESH."), "default/web:80");
  assert.equal(key(" web.default.mesh:80 "), "default/web:80");
  // A service with one HTTP port is reached without naming it.
  assert.equal(key("api.shop.mesh"), "shop/api:9000");
  assert.equal(key("api.shop.mesh:9000"), "shop/api:9000");
  // Several ports and none is 80: the port must be named.
  assert.equal(key("multi.default.mesh"), undefined);
  assert.equal(key("multi.default.mesh:82"), "default/multi:82");
  for (const miss of [null, "", "web.default.mesh:9999", "web.other.mesh", "db.default.mesh"]) {
    assert.equal(key(miss), undefined, String(miss));
  }
});

Deno.test("lookupHttpRoute() answers under each domain alias, and under none when there are none", () => {
  // Traefik Mesh's clients call <svc>.<ns>.traefik.mesh (and, before 1.4, <svc>.<ns>.maesh).
  const aliased = buildRouteTable(
    config,
    newRouteState({ domainAliases: ["traefik.mesh", "Maesh.", "mesh"] }),
  );
  const key = (h: string) => lookupHttpRoute(aliased, h)?.key;
  assert.equal(key("web.default.traefik.mesh"), "default/web:80");
  assert.equal(key("web.default.traefik.mesh:8080"), "default/web:8080");
  assert.equal(key("api.shop.maesh"), "shop/api:9000");
  assert.equal(key("web.default.mesh"), "default/web:80");
  assert.equal(key("web.default.other"), undefined);
  const plain = buildRouteTable(config, newRouteState({ domainAliases: [] }));
  assert.equal(lookupHttpRoute(plain, "web.default.traefik.mesh"), undefined);
  assert.equal(lookupHttpRoute(plain, "web.default.mesh")?.key, "default/web:80");
});

Deno.test("buildRouteTable() puts TCP ports by listen port and leaves UDP to its own proxy", () => {
  const t = buildRouteTable(config);
  assert.deepEqual([...t.tcp.keys()], [10000]);
  assert.equal(t.tcp.get(10000)?.key, "default/db:5432");
  assert.equal([...t.http.values()].some((r) => r.port.protocol !== "http"), false);
});

Deno.test("buildRouteTable() reuses the routes of ports whose service object did not change", () => {
  const a = meshConfig([
    { name: "web", ports: [{ port: 80, endpoints: [endpoint("10.0.0.1", 8080)] }] },
    { name: "api", ports: [{ port: 80, endpoints: [endpoint("10.0.0.2", 8080)] }] },
  ], { version: 1 });
  const state = newRouteState();
  const first = buildRouteTable(a, state);
  // The next version keeps web's object and replaces api's, as applyDelta does.
  const api = meshConfig([
    { name: "api", ports: [{ port: 80, endpoints: [endpoint("10.0.0.3", 8080)] }] },
  ]).services[0]!;
  const b = { ...a, version: 2, services: [a.services[0]!, api] };
  const second = buildRouteTable(b, state);
  const web = (t: typeof first) => lookupHttpRoute(t, "web.default.mesh")!;
  const apiRoute = (t: typeof first) => lookupHttpRoute(t, "api.default.mesh")!;
  assert.equal(web(second), web(first), "web's route is the same object");
  assert.notEqual(apiRoute(second), apiRoute(first));
  assert.deepEqual(apiRoute(second).readyStates.map((s) => s.key), ["10.0.0.3:8080"]);
  assert.ok(second.endpointKeys.has("10.0.0.1:8080"), "a reused route's endpoints are kept");
  assert.ok(!second.endpointKeys.has("10.0.0.2:8080"));
  // A new identity table can change who may use any route: nothing is reused.
  const third = buildRouteTable({ ...b, version: 3, identities: { "10.1.0.1": "a/b" } }, state);
  assert.notEqual(web(third), web(second));
  // A route is reused only by the build right after its own.
  buildRouteTable(meshConfig([]), state);
  const fifth = buildRouteTable({ ...b, version: 5, identities: { "10.1.0.1": "a/b" } }, state);
  assert.notEqual(web(fifth), web(third));
});
