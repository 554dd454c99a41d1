import assert from "node:assert/strict";
import { decodeObject } from "../topology/mod.ts";
import { slimPod } from "./kube_provider.ts";

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
