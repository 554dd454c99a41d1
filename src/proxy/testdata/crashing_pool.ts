/**
 * A ProxyPool whose worker 1 dies of an uncaught error (the faulty worker, on config version
 * 66) and is started again, with the pool's log as JSON on stderr: for `proxy_pool_test.ts`,
 * which reads what this process wrote there. Argument: the address to serve on.
 *
 * @module
 */
import { Logger } from "../../observability/mod.ts";
import type { MeshConfig } from "../../topology/mod.ts";
import { ProxyPool } from "../proxy_pool.ts";

const host = Deno.args[0]!;
const config = (version: number): MeshConfig => ({
  version,
  domain: "mesh",
  acl: false,
  identities: {},
  services: [],
});
const pool = new ProxyPool({
  workers: 2,
  proxy: { hostname: host, httpPort: 0 },
  logger: new Logger({ level: "info", format: "json" }),
  entry: new URL("./faulty_proxy_worker.ts", import.meta.url),
});
await pool.start();
try {
  await pool.apply(config(1));
  await pool.apply(config(66)).catch(() => {});
  const deadline = Date.now() + 10_000;
  while (pool.version !== 1) {
    if (Date.now() > deadline) throw new Error("worker 1 did not start again");
    await new Promise((r) => setTimeout(r, 20));
  }
} finally {
  await pool.stop();
}
