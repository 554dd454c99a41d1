/**
 * ProxyPool (`meshd run --workers N`) when a worker dies or hangs: the summed counters never go
 * back, and a worker that stops answering is ended and started again rather than holding up
 * every config and every /metrics scrape.
 */
import assert from "node:assert/strict";
import { Logger } from "../../src/observability/mod.ts";
import type { MeshConfig } from "../../src/topology/mod.ts";
import { ProxyPool } from "../../src/proxy/proxy_pool.ts";

const quiet = new Logger({ level: "error", write: () => {} });

function config(version: number): MeshConfig {
  return { version, domain: "mesh", acl: false, identities: {}, services: [] };
}

function pool(options: Record<string, number> = {}): ProxyPool {
  return new ProxyPool({
    workers: 2,
    proxy: { hostname: "127.0.69.20", httpPort: 0 },
    logger: quiet,
    entry: new URL("./testdata/fake_proxy_worker.ts", import.meta.url),
    ...options,
  });
}

async function waitUntil(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function value(text: string, name: string): number {
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
  assert.ok(m, `no ${name} in:\n${text}`);
  return Number(m[1]);
}

Deno.test("ProxyPool.metrics() keeps a summed counter from going back when a worker dies and starts again", async () => {
  const p = pool();
  try {
    await p.start();
    await p.apply(config(1));
    const seen: number[] = [];
    for (let i = 0; i < 3; i++) seen.push(value(await p.metrics(), "meshd_test_requests_total"));
    assert.deepEqual(seen, [20, 40, 60]);
    // Worker 1 dies with 30 counted; the one started in its place counts from 0.
    await assert.rejects(() => p.apply(config(66)), /proxy worker 1 died/);
    await waitUntil("worker 1 back on version 1", () => p.version === 1);
    const after = await p.metrics();
    // Worker 0 at 40, the new worker 1 at 10, and the 30 the dead one had counted.
    assert.equal(value(after, "meshd_test_requests_total"), 80, after);
    // A gauge is what is open now: the dead worker's connections are gone.
    assert.equal(value(after, "meshd_test_open_connections"), 2, after);
  } finally {
    await p.stop();
  }
});

Deno.test("ProxyPool ends a worker that stops answering, fails the apply, and starts the worker again", async () => {
  const p = pool({ callTimeoutMs: 500 });
  try {
    await p.start();
    await p.apply(config(1));
    const started = Date.now();
    await assert.rejects(() => p.apply(config(77)), /proxy worker 1 died: .*500 ms/);
    assert.ok(Date.now() - started < 5000, `the apply took ${Date.now() - started} ms`);
    await waitUntil("worker 1 back on version 1", () => p.version === 1);
    // /metrics answers with both workers again.
    assert.equal(value(await p.metrics(), "meshd_test_open_connections"), 2);
    await p.apply(config(2));
    assert.equal(p.version, 2);
  } finally {
    await p.stop();
  }
});
