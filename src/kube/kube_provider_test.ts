import assert from "node:assert/strict";
import { waitFor } from "../_testing.ts";
import { Logger } from "../observability/mod.ts";
import { decodeObject, type LoadResult } from "../topology/mod.ts";
import { type KubeApi, KubeApiError, type RawObject, type WatchEvent } from "./api.ts";
import { KubeProvider, slimPod } from "./kube_provider.ts";

/** A Pod as the API server sends it, fields meshd does not read included. */
const fullPod = () => ({
  apiVersion: "v1",
  kind: "Pod",
  metadata: {
    name: "web-7d9c6",
    namespace: "shop",
    labels: { app: "web" },
    annotations: { "meshd.io/x": "y" },
    resourceVersion: "42",
    ownerReferences: [{ kind: "ReplicaSet", name: "web-7d9" }],
  },
  spec: {
    serviceAccountName: "web",
    nodeName: "node-1",
    containers: [{ name: "web", image: "nginx", env: [{ name: "A", value: "b".repeat(500) }] }],
    volumes: [{ name: "token", projected: { sources: [] } }],
  },
  status: {
    phase: "Running",
    podIP: "10.0.0.7",
    podIPs: [{ ip: "10.0.0.7" }],
    conditions: [{ type: "Ready", status: "True" }],
    containerStatuses: [{ name: "web", ready: true, restartCount: 0 }],
  },
});

Deno.test("slimPod() keeps every field decodeObject reads of a Pod", () => {
  const source = { file: "shop/web-7d9c6 in the Kubernetes API", doc: -1 };
  const slim = fullPod();
  slimPod(slim);
  assert.deepEqual(decodeObject(slim, source), decodeObject(fullPod(), source));
  assert.ok(JSON.stringify(slim).length < JSON.stringify(fullPod()).length / 3);
  assert.deepEqual(slim.spec, { serviceAccountName: "web", nodeName: "node-1" });
  assert.deepEqual(slim.status, { phase: "Running", podIP: "10.0.0.7" });
});

Deno.test("slimPod() leaves a Pod without spec or status, or with odd ones, for decode to judge", () => {
  const source = { file: "p", doc: -1 };
  for (
    const [name, pod] of [
      ["no spec, no status", { apiVersion: "v1", kind: "Pod", metadata: { name: "p" } }],
      ["spec a string", { apiVersion: "v1", kind: "Pod", metadata: { name: "p" }, spec: "x" }],
    ] as const
  ) {
    const slim = structuredClone(pod) as Record<string, unknown>;
    slimPod(slim);
    assert.deepEqual(slim, pod, name);
    assert.deepEqual(decodeObject(slim, source), decodeObject(pod, source), name);
  }
});

/** An EndpointSlice of Service "shop/web" whose one endpoint is `address`. */
const slice = (address: string, rv: string): RawObject => ({
  apiVersion: "discovery.k8s.io/v1",
  kind: "EndpointSlice",
  metadata: {
    name: "web-1",
    namespace: "shop",
    resourceVersion: rv,
    labels: { "kubernetes.io/service-name": "web" },
  },
  addressType: "IPv4",
  ports: [{ name: "http", port: 8080, protocol: "TCP" }],
  endpoints: [{ addresses: [address], conditions: { ready: true } }],
});

/**
 * A KubeProvider on an API that lists one Service and its slice, serves no SMI kind, and
 * sends the EndpointSlice watch events the test gives; its clock runs `skip()` ms ahead.
 */
async function startProvider(debounceMs: number, maxWaitMs?: number) {
  const loads: { at: number; result: LoadResult }[] = [];
  let sendSlice: ((e: WatchEvent) => void) | null = null;
  let ahead = 0;
  const api = {
    request: (_m: string, path: string) => {
      const p = path.split("?")[0]!;
      const items = p === "/api/v1/services"
        ? [{
          metadata: { name: "web", namespace: "shop", resourceVersion: "1" },
          spec: { ports: [{ name: "http", port: 80, targetPort: 8080 }] },
        }]
        : p === "/apis/discovery.k8s.io/v1/endpointslices"
        ? [slice("127.0.66.1", "1")]
        : p === "/api/v1/pods"
        ? []
        : null;
      if (!items) return Promise.reject(new KubeApiError(`${p} is not served`, 404, "NotFound"));
      return Promise.resolve({ metadata: { resourceVersion: "1" }, items });
    },
    watch: async (
      path: string,
      _rv: string,
      onEvent: (e: WatchEvent) => void,
      { signal }: { signal: AbortSignal },
    ) => {
      if (path.startsWith("/apis/discovery.k8s.io/v1/endpointslices")) sendSlice = onEvent;
      await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
    },
  } as unknown as KubeApi;
  const provider = new KubeProvider({
    api,
    logger: new Logger({ level: "error", write: () => {} }),
    watchNamespaces: [],
    ignoreNamespaces: [],
    debounceMs,
    maxWaitMs,
    now: () => performance.now() + ahead,
    onLoad: (result) => {
      loads.push({ at: performance.now(), result });
    },
  });
  await provider.start();
  await waitFor("the EndpointSlice watch", () => sendSlice ?? undefined);
  return {
    provider,
    loads,
    send: (address: string, rv: string, type: WatchEvent["type"] = "MODIFIED") =>
      sendSlice!({ type, object: slice(address, rv) }),
    sendRaw: (e: WatchEvent) => sendSlice!(e),
    skip: (ms: number) => ahead += ms,
  };
}

/** The endpoint addresses of the slice in a load. */
const addressesOf = (r: LoadResult) =>
  r.objects.flatMap((o) =>
    o.kind === "EndpointSlice" ? o.endpoints.flatMap((e) => e.addresses) : []
  );

Deno.test("KubeProvider loads a lone change at once, without waiting out the debounce", async () => {
  const debounceMs = 4_000;
  const p = await startProvider(debounceMs);
  try {
    p.skip(debounceMs); // a quiet spell since the first load
    const t0 = performance.now();
    p.send("127.0.66.2", "2");
    const load = await waitFor("the load of the change", () => p.loads[1], 3 * debounceMs);
    assert.deepEqual(addressesOf(load.result), ["127.0.66.2"]);
    assert.ok(
      load.at - t0 < debounceMs / 2,
      `the lone change loaded after ${Math.round(load.at - t0)} ms, debounce ${debounceMs} ms`,
    );
  } finally {
    await p.provider.stop();
  }
});

Deno.test("KubeProvider coalesces a burst of changes into one load after it settles", async () => {
  const debounceMs = 300;
  const p = await startProvider(debounceMs);
  try {
    p.skip(debounceMs);
    p.send("127.0.66.2", "2"); // a lone change: loaded at once
    await waitFor("the load of the first change", () => p.loads[1]);
    // Within the debounce of that load: a burst, loaded once, with its last state.
    p.send("127.0.66.3", "3");
    p.send("127.0.66.4", "4");
    p.send("127.0.66.5", "5");
    const load = await waitFor("the load of the burst", () => p.loads[2], 10 * debounceMs);
    assert.deepEqual(addressesOf(load.result), ["127.0.66.5"]);
    await p.provider.stop();
    assert.equal(p.loads.length, 3, "one load for the whole burst");
  } finally {
    await p.provider.stop();
  }
});

Deno.test("KubeProvider loads a burst that never settles after at most maxWaitMs", async () => {
  // Events every 20 ms against a debounce of 1 s: without a longest wait, no load would come
  // while they go on.
  const p = await startProvider(1000, 2000);
  let n = 2;
  const churn = setInterval(() => p.send("127.0.66.7", String(n++)), 20);
  try {
    const load = await waitFor("a load during the churn", () => p.loads[1], 30_000);
    assert.deepEqual(addressesOf(load.result), ["127.0.66.7"]);
  } finally {
    clearInterval(churn);
    await p.provider.stop();
  }
});

Deno.test("KubeProvider forgets the last good version of an object deleted from the API", async () => {
  const p = await startProvider(1);
  try {
    p.send("127.0.66.1", "2", "DELETED");
    await waitFor("the load without the slice", () => p.loads[1]);
    assert.deepEqual(addressesOf(p.loads[1]!.result), []);
    // Created again, broken: nothing of the deleted one may stand in for it.
    const broken = slice("127.0.66.9", "3");
    broken["endpoints"] = "not a list";
    p.sendRaw({ type: "ADDED", object: broken });
    const load = await waitFor("the load with the broken slice", () => p.loads[2]);
    assert.deepEqual(addressesOf(load.result), []);
    assert.equal(load.result.errors.length, 1);
    assert.deepEqual(load.result.warnings, []);
  } finally {
    await p.provider.stop();
  }
});

Deno.test("KubeProvider keeps the last good version of an object that stops decoding", async () => {
  const p = await startProvider(1);
  try {
    const broken = slice("127.0.66.9", "2");
    broken["endpoints"] = "not a list";
    p.sendRaw({ type: "MODIFIED", object: broken });
    const load = await waitFor("the load with the broken slice", () => p.loads[1]);
    assert.deepEqual(addressesOf(load.result), ["127.0.66.1"]);
    assert.equal(load.result.errors.length, 1);
    assert.equal(load.result.warnings.length, 1);
    assert.match(load.result.warnings[0]!, /Keeping the last good version of EndpointSlice/);
  } finally {
    await p.provider.stop();
  }
});
