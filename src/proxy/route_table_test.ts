import assert from "node:assert/strict";
import {
  buildRouteTable,
  buildRouteTableWithChanges,
  lookupHttpRoute,
  newRouteState,
} from "./route_table.ts";
import { ProxyMetrics } from "./proxy_metrics.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";

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
  assert.equal(
    [...t.http.values()].some((h) => h.ports.some((r) => r.port.protocol !== "http")),
    false,
  );
  assert.equal(t.http.size, 3, "web, api and multi: one entry a service, whatever the domains");
});

Deno.test("buildRouteTable() reuses the routes of ports whose service object did not change", () => {
  const a = meshConfig([
    { name: "web", ports: [{ port: 80, endpoints: [endpoint("10.0.0.1", 8080)] }] },
    { name: "api", ports: [{ port: 80, endpoints: [endpoint("10.0.0.2", 8080)] }] },
  ], { version: 1 });
  const state = newRouteState();
  const first = buildRouteTable(a, state);
  // A build updates the last one's maps in place: take what the test compares now.
  const [web1, api1] = [
    lookupHttpRoute(first, "web.default.mesh"),
    lookupHttpRoute(first, "api.default.mesh"),
  ];
  // The next version keeps web's object and replaces api's, as applyDelta does.
  const api = meshConfig([
    { name: "api", ports: [{ port: 80, endpoints: [endpoint("10.0.0.3", 8080)] }] },
  ]).services[0]!;
  const b = { ...a, version: 2, services: [a.services[0]!, api] };
  const second = buildRouteTable(b, state);
  const web = (t: typeof first) => lookupHttpRoute(t, "web.default.mesh")!;
  const apiRoute = (t: typeof first) => lookupHttpRoute(t, "api.default.mesh")!;
  assert.equal(web(second), web1, "web's route is the same object");
  assert.notEqual(apiRoute(second), api1);
  assert.deepEqual(apiRoute(second).readyStates.map((s) => s.key), ["10.0.0.3:8080"]);
  assert.ok(second.endpointKeys.has("10.0.0.1:8080"), "a reused route's endpoints are kept");
  assert.ok(!second.endpointKeys.has("10.0.0.2:8080"));
  // A new identity table rebuilds no route: the policies read the table in force.
  const web2 = web(second);
  const third = buildRouteTable({ ...b, version: 3, identities: { "10.1.0.1": "a/b" } }, state);
  assert.equal(web(third), web2);
  // A service that left and came back is built again.
  const web3 = web(third);
  buildRouteTable(meshConfig([]), state);
  const fifth = buildRouteTable({ ...b, version: 5, identities: { "10.1.0.1": "a/b" } }, state);
  assert.notEqual(web(fifth), web3);
});

Deno.test("buildRouteTable() builds one service again for a one-endpoint change of 1,000", () => {
  const service = (i: number, host: number) =>
    meshConfig([{
      name: `s-${i}`,
      ports: [{ port: 80, endpoints: [endpoint(`10.0.${i >> 8}.${i & 255}`, 8080)] }, {
        port: 5432,
        protocol: "tcp",
        listenPort: 10000 + i,
        endpoints: [endpoint(`10.1.${i >> 8}.${i & 255}`, 5000 + host)],
      }],
    }]).services[0]!;
  const a = meshConfig([], { version: 1 });
  a.services = Array.from({ length: 1000 }, (_, i) => service(i, 1));
  const state = newRouteState();
  const first = buildRouteTableWithChanges(a, state);
  assert.equal(first.changes.built, 1000);
  const httpSize = first.table.http.size;
  const s499 = lookupHttpRoute(first.table, "s-499.default.mesh");
  const services = a.services.slice();
  services[500] = service(500, 2);
  const b = { ...a, version: 2, services };
  const { table, changes } = buildRouteTableWithChanges(b, state);
  assert.equal(changes.built, 1, "only the changed service is built again");
  assert.deepEqual(changes.endpointKeys, ["10.1.1.244:5001"], "its old endpoint is let go of");
  assert.deepEqual(changes.metricKeys, [], "its ports stay, and so do their series");
  assert.equal(table.tcp.get(10500)?.readyStates[0]?.key, "10.1.1.244:5002");
  assert.ok(
    table.endpointKeys.has("10.1.1.244:5002") && !table.endpointKeys.has("10.1.1.244:5001"),
  );
  assert.equal(lookupHttpRoute(table, "s-499.default.mesh"), s499, "the others are kept");
  assert.equal(table.http.size, httpSize);
});

Deno.test("buildRouteTable() drops a removed service's hosts, ports, endpoints and series", () => {
  const state = newRouteState();
  const a = meshConfig([
    {
      name: "web",
      ports: [{ port: 80, endpoints: [endpoint("10.0.0.1", 80), endpoint("10.0.0.9", 80)] }],
    },
    {
      name: "db",
      ports: [{
        port: 5432,
        protocol: "tcp",
        listenPort: 10000,
        endpoints: [endpoint("10.0.0.9", 80)],
      }],
    },
  ]);
  buildRouteTable(a, state);
  const { table, changes } = buildRouteTableWithChanges(
    { ...a, version: 2, services: [a.services[1]!] },
    state,
  );
  assert.equal(lookupHttpRoute(table, "web.default.mesh"), undefined);
  assert.equal(table.http.size, 0);
  assert.equal(table.tcp.get(10000)?.key, "default/db:5432");
  // 10.0.0.9:80 is still db's.
  assert.deepEqual(changes.endpointKeys, ["10.0.0.1:80"]);
  assert.deepEqual([...table.endpointKeys], ["10.0.0.9:80"]);
  assert.deepEqual(changes.metricKeys, [ProxyMetrics.key("default/web", 80, "http")]);
});

Deno.test("buildRouteTable() moves a listen port from one service to another in one version", () => {
  const state = newRouteState();
  const tcp = (name: string, listenPort: number) =>
    meshConfig([{ name, ports: [{ port: 1, protocol: "tcp", listenPort }] }]).services[0]!;
  const a = { ...meshConfig([]), services: [tcp("a", 10000), tcp("b", 10001)] };
  buildRouteTable(a, state);
  // b (after a in the list) takes a's port while a moves.
  const t = buildRouteTable(
    { ...a, version: 2, services: [tcp("a", 10002), tcp("b", 10000)] },
    state,
  );
  assert.deepEqual(
    [...t.tcp].map(([p, r]) => `${p}=${r.serviceKey}`).sort(),
    ["10000=default/b", "10002=default/a"],
  );
});

Deno.test("buildRouteTable() points a kept split at its backend's new route", () => {
  const state = newRouteState();
  const split = {
    name: "default/canary",
    matches: [],
    backends: [{ service: "v1", weight: 1 }, { service: "v2", weight: 1 }],
  };
  const a = meshConfig([
    { name: "web", ports: [{ port: 80, split }] },
    { name: "v1", ports: [{ port: 80, endpoints: [endpoint("10.0.0.1", 80)] }] },
    { name: "v2", ports: [{ port: 80, endpoints: [endpoint("10.0.0.2", 80)] }] },
  ]);
  const root = lookupHttpRoute(buildRouteTable(a, state), "web.default.mesh");
  const v2 = meshConfig([{
    name: "v2",
    ports: [{ port: 80, endpoints: [endpoint("10.0.0.3", 80)] }],
  }])
    .services[0]!;
  const t2 = buildRouteTable(
    { ...a, version: 2, services: [a.services[0]!, a.services[1]!, v2] },
    state,
  );
  const web = lookupHttpRoute(t2, "web.default.mesh")!;
  assert.equal(web, root, "the root is kept");
  const picked = new Set<string>();
  for (let i = 0; i < 4; i++) picked.add(web.split!.backends.next()!.readyStates[0]!.key);
  assert.deepEqual([...picked].sort(), ["10.0.0.1:80", "10.0.0.3:80"]);
});

Deno.test("buildRouteTable() gives a new identity table to the access policies it keeps", () => {
  const state = newRouteState();
  const access = [{
    trafficTarget: "default/tt",
    destination: "default/db",
    sources: ["default/app"],
    http: [],
    l4: true,
  }];
  const a = meshConfig([{
    name: "db",
    ports: [{
      port: 5432,
      protocol: "tcp",
      listenPort: 10000,
      access,
      endpoints: [endpoint("10.0.0.1", 5432, { serviceAccount: "default/db" })],
    }],
  }], { acl: true, identities: {} });
  const route = buildRouteTable(a, state).tcp.get(10000)!;
  assert.equal(route.access.checkL4("10.1.0.1").allowed, false, "an unknown source");
  const b = { ...a, version: 2, identities: { "10.1.0.1": "default/app" } };
  const t = buildRouteTable(b, state);
  assert.equal(t.tcp.get(10000), route, "the route is kept");
  assert.equal(route.access.checkL4("10.1.0.1").allowed, true, "the app's Pod now");
  assert.deepEqual(route.ready.map((c) => c.serviceAccount), ["default/db"]);
  buildRouteTable({ ...b, version: 3, identities: {} }, state);
  assert.equal(route.access.checkL4("10.1.0.1").allowed, false, "gone again");
});

Deno.test("buildRouteTable() keeps the routes of a snapshot's equal services, on its objects", () => {
  const state = newRouteState();
  const a = meshConfig([
    { name: "web", ports: [{ port: 80, endpoints: [endpoint("10.0.0.1", 80)] }] },
    { name: "api", ports: [{ port: 80, endpoints: [endpoint("10.0.0.2", 80)] }] },
  ]);
  const web = lookupHttpRoute(buildRouteTable(a, state), "web.default.mesh")!;
  // The same content in new objects, as a snapshot after a reconnect arrives; api changed.
  const b: typeof a = JSON.parse(JSON.stringify({ ...a, version: 2 }));
  b.services[1]!.ports[0]!.endpoints[0]!.address = "10.0.0.3";
  const { table, changes } = buildRouteTableWithChanges(b, state);
  assert.equal(changes.built, 1, "api only");
  assert.equal(lookupHttpRoute(table, "web.default.mesh"), web);
  assert.equal(web.service, b.services[0], "the route is on the new object");
  assert.equal(web.port, b.services[0]!.ports[0]);
  assert.equal(lookupHttpRoute(table, "api.default.mesh")?.readyStates[0]?.key, "10.0.0.3:80");
});
