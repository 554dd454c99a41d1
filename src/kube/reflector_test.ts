import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import type { KubeApi, RawObject, WatchEvent } from "./api.ts";
import { Reflector } from "./reflector.ts";

const LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration";
import { waitFor } from "../_testing.ts";

/** A Service as `kubectl apply` and server-side apply leave it. */
const applied = (name: string): RawObject => ({
  metadata: {
    name,
    namespace: "shop",
    resourceVersion: "7",
    annotations: {
      "meshd.io/retry-attempts": "2",
      [LAST_APPLIED_ANNOTATION]: JSON.stringify({ kind: "Service", metadata: { name } }),
    },
    managedFields: [{ manager: "kubectl", operation: "Apply", fieldsV1: { "f:spec": {} } }],
  },
  spec: { ports: [{ port: 80 }] },
});

Deno.test("Reflector stores listed and watched objects without managedFields and last-applied", async () => {
  const api = {
    request: () => Promise.resolve({ metadata: { resourceVersion: "7" }, items: [applied("a")] }),
    watch: async (
      _path: string,
      _rv: string,
      onEvent: (e: WatchEvent) => void,
      { signal }: { signal: AbortSignal },
    ) => {
      onEvent({ type: "ADDED", object: applied("b") });
      await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
    },
  } as unknown as KubeApi;
  const r = new Reflector({
    api,
    path: "/api/v1/services",
    apiVersion: "v1",
    kind: "Service",
    logger: new Logger({ level: "error", write: () => {} }),
    onChange: () => {},
  });
  r.start();
  try {
    await waitFor("both objects stored", () => r.items.size === 2 ? true : undefined);
  } finally {
    await r.stop();
  }
  for (const key of ["shop/a", "shop/b"]) {
    const meta = r.items.get(key)?.["metadata"] as Record<string, unknown>;
    assert.equal(meta["managedFields"], undefined, key);
    assert.deepEqual(meta["annotations"], { "meshd.io/retry-attempts": "2" }, key);
    assert.equal(meta["resourceVersion"], "7", key);
  }
});

Deno.test("Reflector applies its transform to listed and watched objects", async () => {
  const api = {
    request: () => Promise.resolve({ metadata: { resourceVersion: "7" }, items: [applied("a")] }),
    watch: async (
      _path: string,
      _rv: string,
      onEvent: (e: WatchEvent) => void,
      { signal }: { signal: AbortSignal },
    ) => {
      onEvent({ type: "MODIFIED", object: applied("b") });
      await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
    },
  } as unknown as KubeApi;
  const r = new Reflector({
    api,
    path: "/api/v1/services",
    apiVersion: "v1",
    kind: "Service",
    logger: new Logger({ level: "error", write: () => {} }),
    onChange: () => {},
    transform: (o) => delete o["spec"],
  });
  r.start();
  try {
    await waitFor("both objects stored", () => r.items.size === 2 ? true : undefined);
  } finally {
    await r.stop();
  }
  for (const key of ["shop/a", "shop/b"]) assert.equal(r.items.get(key)?.["spec"], undefined, key);
});
