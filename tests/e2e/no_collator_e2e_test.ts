/**
 * End to end: a file-mode meshd makes no ICU collator while its names are plain (issue 21: the
 * first collator in a process costs it about 2-3 MiB of ICU code and data). meshd runs with a
 * preload that reports every `Intl.Collator` made and every `localeCompare` called on its main
 * thread, through loading a config, serving a request, its API and metrics, and a reload.
 *
 * The preload does not reach worker threads: the config reader's thread sorts file names with
 * the same `compareNames`, which `src/topology/compare_names_test.ts` checks.
 */
import assert from "node:assert/strict";
import { type Child, freePort, waitFor, waitForPort } from "../testenv/process.ts";
import { FILE_PERMISSIONS, spawnMeshd } from "../testenv/meshd.ts";
import { rawGet, startWhoami } from "../testenv/backends.ts";

const BACKEND_IP = "127.0.67.2";
const MARK = "collator-watch:";

// Every way a collator comes to be: `new Intl.Collator`, `Intl.Collator()` without `new`, and
// `localeCompare`, which makes one inside V8 (cached, but with all of ICU's collation behind it).
const PRELOAD = `
const report = (what) => console.error(
  "${MARK} made " + what + " at " +
    (new Error().stack ?? "").split("\\n").slice(2, 6).map((l) => l.trim()).join(" < "),
);
const Collator = Intl.Collator;
Intl.Collator = new Proxy(Collator, {
  construct(target, args, newTarget) {
    report("new Intl.Collator(" + JSON.stringify(args) + ")");
    return Reflect.construct(target, args, newTarget);
  },
  apply(target, self, args) {
    report("Intl.Collator(" + JSON.stringify(args) + ")");
    return Reflect.apply(target, self, args);
  },
});
const localeCompare = String.prototype.localeCompare;
String.prototype.localeCompare = function (...args) {
  report("localeCompare");
  return localeCompare.apply(this, args);
};
console.error("${MARK} armed");
`;

function objects(extra = ""): string {
  // Endpoint addresses out of order, so that the topology sorts them.
  const apiAddresses = [30, 4, 12, 100, 9, 21, 3].map((n) => `"127.0.67.${n}"`).join(", ");
  return `apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { ports: [{ name: http, port: 80 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, namespace: shop, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ name: http, port: ${backendPort}, protocol: TCP }]
endpoints:
  - addresses: ["${BACKEND_IP}"]
---
apiVersion: v1
kind: Service
metadata: { name: api, namespace: shop }
spec: { ports: [{ name: http, port: 8080 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: api-1, namespace: shop, labels: { kubernetes.io/service-name: api } }
addressType: IPv4
ports: [{ name: http, port: 8080, protocol: TCP }]
endpoints:
  - addresses: [${apiAddresses}]
---
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: data
  annotations: { meshd.io/traffic-type: tcp }
spec: { ports: [{ name: pg, port: 5432 }] }
${extra}`;
}

let backendPort = 0;

Deno.test("meshd run makes no collator for plain names: config, request, API, metrics, reload", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-no-collator-" });
  const children: Child[] = [];
  try {
    await Deno.writeTextFile(`${dir}/preload.js`, PRELOAD);
    await Deno.mkdir(`${dir}/config`);
    backendPort = freePort(BACKEND_IP);
    children.push(startWhoami(BACKEND_IP, backendPort));
    await Deno.writeTextFile(`${dir}/config/shop.yaml`, objects());
    const http = freePort();
    const api = freePort();
    const tcp = freePort();
    const udp = freePort();
    const meshd = spawnMeshd([
      "--config-dir",
      `${dir}/config`,
      "--http-port",
      String(http),
      "--api-port",
      String(api),
      "--tcp-ports",
      `${tcp}-${tcp}`,
      "--udp-ports",
      `${udp}-${udp}`,
    ], { deno: [...FILE_PERMISSIONS, "--preload", `${dir}/preload.js`], name: "meshd" });
    children.push(meshd);
    const get = async (path: string) => {
      const r = await fetch(`http://127.0.0.1:${api}${path}`);
      return { status: r.status, body: await r.text() };
    };
    await waitFor("meshd to be ready", async () => {
      const r = await get("/readyz").catch(() => undefined);
      return r?.status === 200 ? true : undefined;
    }, 30_000);
    await waitForPort(BACKEND_IP, backendPort);
    assert.equal((await rawGet(http, "web.shop.mesh")).status, 200);
    await rawGet(http, "nothing.shop.mesh"); // an unknown host: its answer and metrics
    for (const path of ["/metrics", "/api/services", "/api/config", "/api/status"]) {
      assert.equal((await get(path)).status, 200, path);
    }
    // A reload: one more service, and the delta from the config before.
    await Deno.writeTextFile(
      `${dir}/config/shop.yaml`,
      objects(`---
apiVersion: v1
kind: Service
metadata: { name: cart, namespace: shop }
spec: { ports: [{ name: http, port: 80 }] }
`),
    );
    await waitFor("the reloaded config to list shop/cart", async () => {
      const r = await get("/api/services");
      return r.body.includes("cart") ? true : undefined;
    }, 30_000);
    assert.equal((await rawGet(http, "web.shop.mesh")).status, 200);
    assert.equal((await get("/metrics")).status, 200);

    assert.ok(
      meshd.stderr.includes(`${MARK} armed`),
      `the preload did not run:\n${meshd.lines.slice(-10).join("\n")}`,
    );
    const made = meshd.lines.filter((l) => l.startsWith(`${MARK} made`));
    assert.deepEqual(made, [], "meshd made a collator for plain names");
  } finally {
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(dir, { recursive: true });
  }
});
