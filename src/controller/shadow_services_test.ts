import assert from "node:assert/strict";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { waitFor } from "../_testing.ts";
import type { KubeApi } from "../kube/mod.ts";
import { Logger } from "../observability/mod.ts";
import {
  desiredShadowServices,
  shadowDnsEntries,
  ShadowServiceController,
  shadowServiceName,
} from "./shadow_services.ts";

const DNS_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;

Deno.test("shadowServiceName() is a DNS label of at most 63 characters for any names", () => {
  const long = "a".repeat(63);
  const cases: [string, string][] = [
    ["default", "whoami"],
    [long, long],
    ["ns-", "svc-"],
    ["a", "b-c"],
    ["a-b", "c"],
  ];
  const names = cases.map(([ns, n]) => shadowServiceName(ns, n));
  for (const n of names) {
    assert.ok(n.length <= 63, `${n} has ${n.length} characters`);
    assert.match(n, DNS_LABEL);
  }
  assert.equal(new Set(names).size, names.length, "distinct pairs, distinct names");
  // Truncation alone would make these equal; the hash keeps them apart.
  assert.notEqual(
    shadowServiceName(long, `${"b".repeat(40)}-x`),
    shadowServiceName(long, `${"b".repeat(40)}-y`),
  );
  assert.equal(shadowServiceName("default", "whoami"), shadowServiceName("default", "whoami"));
});

Deno.test("desiredShadowServices() makes one node-local Service per meshed service", () => {
  const config = meshConfig([
    {
      name: "web",
      ports: [
        { port: 80, endpoints: [endpoint("10.0.0.1", 8080)] },
        { port: 9000, protocol: "tcp", listenPort: 10001 },
        { port: 53, protocol: "udp", listenPort: 15001 },
        { port: 7000, protocol: "tcp", listenPort: null },
      ],
    },
    { name: "empty", ports: [{ port: 1, protocol: "tcp", listenPort: null }] },
  ]);
  const out = desiredShadowServices(config, {
    meshNamespace: "meshd",
    selector: { "app.kubernetes.io/name": "meshd" },
    httpPort: 5000,
  });
  assert.equal(out.length, 1, "a service with no placeable port gets none");
  const svc = out[0] as {
    metadata: { namespace: string; labels: Record<string, string> };
    spec: {
      internalTrafficPolicy: string;
      publishNotReadyAddresses: boolean;
      ports: unknown[];
      selector: unknown;
    };
  };
  assert.equal(svc.metadata.namespace, "meshd");
  assert.equal(svc.metadata.labels["meshd.io/shadow-of-name"], "web");
  assert.equal(svc.metadata.labels["meshd.io/shadow-of-namespace"], "default");
  assert.equal(svc.spec.internalTrafficPolicy, "Local");
  // A surge pod shares the node's address with the pod it replaces: kube-proxy keeps one
  // endpoint per address, so a not-ready one would hide the ready one.
  assert.equal(svc.spec.publishNotReadyAddresses, true);
  assert.deepEqual(svc.spec.selector, { "app.kubernetes.io/name": "meshd" });
  assert.deepEqual(svc.spec.ports, [
    { name: "tcp-80", port: 80, protocol: "TCP", targetPort: 5000 },
    { name: "tcp-9000", port: 9000, protocol: "TCP", targetPort: 10001 },
    { name: "udp-53", port: 53, protocol: "UDP", targetPort: 15001 },
  ]);
});

Deno.test("shadowDnsEntries() maps shadow Services to their ClusterIPs by family", () => {
  const svc = (labels: Record<string, string>, spec: Record<string, unknown>) => ({
    metadata: { name: "x", labels },
    spec,
  });
  const of = { "meshd.io/shadow-of-name": "web", "meshd.io/shadow-of-namespace": "shop" };
  assert.deepEqual(
    shadowDnsEntries([
      svc(of, { clusterIP: "10.96.0.1", clusterIPs: ["10.96.0.1", "fd00::1"] }),
      // not allocated yet, headless, or not a shadow: no name
      svc({ ...of, "meshd.io/shadow-of-name": "pending" }, {}),
      svc({ ...of, "meshd.io/shadow-of-name": "headless" }, { clusterIP: "None" }),
      svc({}, { clusterIP: "10.96.0.2" }),
      // a Service from before dual-stack fields: clusterIP alone
      svc({ ...of, "meshd.io/shadow-of-name": "old" }, { clusterIP: "10.96.0.3" }),
    ]),
    [
      { namespace: "shop", name: "web", ipv4: ["10.96.0.1"], ipv6: ["fd00::1"] },
      { namespace: "shop", name: "old", ipv4: ["10.96.0.3"], ipv6: [] },
    ],
  );
});

Deno.test("ShadowServiceController tries a failed pass again with no new config or watch event", async () => {
  // Under load a write can time out; the watch then sees no change and no config follows, so
  // nothing else would start the next pass.
  const applied: string[] = [];
  let failuresLeft = 2;
  const api = {
    request(method: string, path: string): Promise<Record<string, unknown>> {
      if (method === "GET") return Promise.resolve({ items: [] });
      if (failuresLeft > 0) {
        failuresLeft--;
        return Promise.reject(new Error("the request timed out"));
      }
      applied.push(path.slice(path.lastIndexOf("/") + 1, path.indexOf("?")));
      return Promise.resolve({});
    },
  } as unknown as KubeApi;
  const shadows = new ShadowServiceController({
    api,
    logger: new Logger({ level: "error", write: () => {} }),
    meshNamespace: "meshd",
    selector: { app: "meshd" },
    httpPort: 5000,
    isLeader: () => true,
    concurrency: 1,
    retryMs: 5,
  });
  try {
    await shadows.update(meshConfig([{ name: "web", ports: [{ port: 80 }] }]));
    assert.deepEqual(applied, [], "the first pass failed");
    await waitFor(
      "the shadow Service written by a later pass",
      () => applied.length > 0 ? applied : undefined,
      5_000,
      5,
    );
    assert.deepEqual(applied, [shadowServiceName("default", "web")]);
    assert.equal(shadows.writes, 1);
  } finally {
    await shadows.stop();
  }
});

Deno.test("ShadowServiceController writes only the shadows whose service changed", async () => {
  // The API as the watch shows it: what was applied, by name.
  const stored = new Map<string, Record<string, unknown>>();
  const writes: string[] = [];
  const api = {
    request(method: string, path: string, body?: Record<string, unknown>) {
      if (method === "GET") return Promise.resolve({ items: [...stored.values()] });
      const n = path.slice(path.lastIndexOf("/") + 1, path.indexOf("?"));
      writes.push(n);
      stored.set(n, structuredClone(body!));
      return Promise.resolve({});
    },
  } as unknown as KubeApi;
  const shadows = new ShadowServiceController({
    api,
    logger: new Logger({ level: "error", write: () => {} }),
    meshNamespace: "meshd",
    selector: { app: "meshd" },
    httpPort: 5000,
    isLeader: () => true,
    existing: () => stored.values(),
  });
  try {
    const first = meshConfig([
      { name: "web", ports: [{ port: 80 }] },
      { name: "db", ports: [{ port: 5432, protocol: "tcp", listenPort: 10000 }] },
    ]);
    await shadows.update(first);
    assert.equal(writes.length, 2);
    // The next config keeps web's object and changes db's proxy port.
    const db = meshConfig([{
      name: "db",
      ports: [{ port: 5432, protocol: "tcp", listenPort: 10001 }],
    }])
      .services[0]!;
    await shadows.update({ ...first, version: 2, services: [first.services[0]!, db] });
    assert.deepEqual(writes.slice(2), [shadowServiceName("default", "db")]);
    const dbShadow = stored.get(shadowServiceName("default", "db")) as {
      spec: { ports: { targetPort: number }[] };
    };
    assert.equal(dbShadow.spec.ports[0]!.targetPort, 10001);
    // Nothing changed: nothing written.
    await shadows.update({ ...first, version: 3, services: [first.services[0]!, db] });
    assert.equal(writes.length, 3);
  } finally {
    await shadows.stop();
  }
});

Deno.test("shadowDnsEntries() reads each shadow object once, and a changed one (a new object) again", () => {
  const of = { "meshd.io/shadow-of-name": "web", "meshd.io/shadow-of-namespace": "shop" };
  const a = { metadata: { name: "x", labels: of }, spec: { clusterIP: "10.96.0.1" } };
  const [first] = shadowDnsEntries([a]);
  const [again] = shadowDnsEntries([a]);
  assert.equal(again, first, "the same object gives the same entry");
  // A watch event brings a new object for a changed Service.
  const [changed] = shadowDnsEntries([{ ...a, spec: { clusterIP: "10.96.0.2" } }]);
  assert.deepEqual(changed?.ipv4, ["10.96.0.2"]);
});
