/**
 * The proxy worker's entry over its messages, as {@linkcode ProxyPool} sends them, on
 * 127.0.67.202.
 */
import assert from "node:assert/strict";
import type { MeshConfig } from "../topology/mod.ts";
import type { WorkerRequest } from "./proxy_pool.ts";
import { freePort } from "../_testing.ts";

const HOST = "127.0.67.202";

/** A config with one TCP service on `listenPort`. */
function config(version: number, listenPort: number): MeshConfig {
  return {
    version,
    domain: "mesh",
    acl: false,
    identities: {},
    services: [{
      name: "echo",
      namespace: "t",
      clusterIP: null,
      scheme: "http",
      retryAttempts: 0,
      circuitBreaker: null,
      rateLimit: null,
      ports: [{
        name: "tcp",
        port: 7,
        protocol: "tcp",
        listenPort,
        endpoints: [],
        split: null,
        access: null,
      }],
    }],
  };
}

Deno.test("proxy worker applies a config sent while it starts once it has started, so the L4 worker binds its ports on its engine", async () => {
  // ProxyPool.apply sends a new config to every worker that exists, one it is starting again
  // (after it died) included. The config applied while the L4 worker still loaded its engine:
  // its ports were bound on Deno's I/O, in a thread the engine's loop holds while it is busy.
  const ledger = new SharedArrayBuffer(4096);
  const held = () => new Uint8Array(ledger).reduce((n, b) => n + b, 0);
  const worker = new Worker(new URL("./proxy_worker.ts", import.meta.url), { type: "module" });
  const replies = new Map<number, (r: { t: string; message?: string }) => void>();
  worker.onmessage = (e) => replies.get(e.data.id)?.(e.data);
  let id = 0;
  const call = (m: WorkerRequest) =>
    new Promise<{ t: string; message?: string }>((resolve) => {
      replies.set(++id, resolve);
      worker.postMessage({ ...m, id });
    });
  const port = freePort(HOST);
  try {
    // Sent together, as to a worker started again: the apply does not wait for the start.
    const [started, applied] = await Promise.all([
      call({
        t: "start",
        index: 0,
        count: 0,
        role: "l4",
        options: { hostname: HOST, httpPort: 0, reusePort: true, entrypoint: false, engine: true },
        log: { level: "error", format: "json" },
        udpWaitMs: 5_000,
        fdLedger: ledger,
      }),
      call({ t: "apply", config: config(1, port) }),
    ]);
    assert.equal(started.t, "ok", started.message ?? "");
    assert.equal(applied.t, "ok", applied.message ?? "");
    // The loop's epoll and wake descriptors, and the listening socket of the port.
    assert.equal(held(), 3, "descriptors the engine holds");
    const c = await Deno.connect({ hostname: HOST, port });
    c.close();
  } finally {
    await call({ t: "stop" });
    worker.terminate();
  }
});
