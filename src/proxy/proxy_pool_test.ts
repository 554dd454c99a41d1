import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { ProxyPool, ProxyWorkerError } from "./proxy_pool.ts";

const HOST = "127.0.63.20";

function freePort(): number {
  const l = Deno.listen({ hostname: HOST, port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A config with one TCP service per listen port. */
function config(version: number, ports: number[]): MeshConfig {
  return {
    version,
    domain: "mesh",
    acl: false,
    identities: {},
    services: ports.map((p) => ({
      name: `s${p}`,
      namespace: "t",
      clusterIP: null,
      scheme: "http",
      retryAttempts: 0,
      circuitBreaker: null,
      rateLimit: null,
      ports: [{
        name: "tcp",
        port: 80,
        protocol: "tcp",
        listenPort: p,
        endpoints: [],
        split: null,
        access: null,
      }],
    })),
  };
}

async function waitUntil(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

Deno.test("ProxyPool.apply() is all or nothing, and a dead worker is started again on the config in force", async () => {
  const lines: string[] = [];
  const pool = new ProxyPool({
    workers: 2,
    proxy: { hostname: HOST, httpPort: 0 },
    logger: new Logger({ level: "warn", format: "json", write: (l) => lines.push(l) }),
    entry: new URL("./testdata/faulty_proxy_worker.ts", import.meta.url),
  });
  const [p, q] = [freePort(), freePort()];
  try {
    await pool.start();
    await pool.apply(config(1, [p]));
    assert.equal(pool.version, 1);
    assert.equal(pool.listening().own.tcp.get(p), 2, "both workers bind the TCP port");
    assert.deepEqual(pool.listener("tcp", p), { address: `${HOST}:${p}`, served: true });

    // Worker 1 refuses version 13: worker 0, which took it, goes back to version 1.
    await assert.rejects(
      () => pool.apply(config(13, [p, q])),
      (e: Error) => {
        assert.ok(e instanceof ProxyWorkerError);
        assert.match(
          e.message,
          /^Cannot apply config version 13 in proxy worker 1: refused by the test; every worker keeps version 1$/,
        );
        return true;
      },
    );
    assert.equal(pool.version, 1);
    assert.equal(pool.listening().own.tcp.get(q), undefined, "the new port is let go again");
    assert.equal(pool.listening().own.tcp.get(p), 2);

    // Worker 1 dies on version 66: the apply fails, and the worker comes back on version 1.
    await assert.rejects(() => pool.apply(config(66, [p])), /proxy worker 1 died/);
    assert.match(
      lines.join("\n"),
      /"msg":"proxy worker died; starting it again".*crashed by the test/,
    );
    await waitUntil(
      "worker 1 back on version 1",
      () => pool.version === 1 && pool.listening().own.tcp.get(p) === 2,
    );
    assert.match(await pool.metrics(), /^meshd_proxy_worker_restarts_total 1$/m);

    // And it takes the next config with the other.
    await pool.apply(config(2, [q]));
    assert.equal(pool.version, 2);
    assert.equal(pool.listening().own.tcp.get(q), 2);
  } finally {
    await pool.stop();
  }
});
