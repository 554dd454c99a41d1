/**
 * The default per-source connection cap: a handful of client addresses must not be able to
 * take every connection slot from the rest.
 */
import assert from "node:assert/strict";
import { ConnectionLimiter } from "../../src/proxy/conn_limiter.ts";
import { defaultLimits } from "../../src/proxy/limits.ts";

/** How many addresses, each opening all it may, fill a limiter with `limits`. */
function sourcesToFill(limits: { max: number; perSource: number }): number {
  const limiter = new ConnectionLimiter(limits, () => {});
  let sources = 0;
  while (limiter.acquire(`10.0.0.${sources}`)) {
    sources++;
    while (limiter.acquire(`10.0.0.${sources - 1}`)) { /* take all it may */ }
  }
  return sources;
}

Deno.test("defaultLimits() per-source cap makes filling the proxy take 16 addresses at a large fd limit, and 8 at a small one", () => {
  for (const fd of [4096, 20_000, 65_536, 1_048_576]) {
    const d = defaultLimits(fd);
    const n = sourcesToFill({ max: d.maxConnections, perSource: d.maxConnectionsPerSource });
    assert.ok(n >= 16, `open-file limit ${fd}: ${n} addresses take every connection slot`);
  }
  for (const fd of [64, 256, 1024, 2048]) {
    const d = defaultLimits(fd);
    const n = sourcesToFill({ max: d.maxConnections, perSource: d.maxConnectionsPerSource });
    assert.ok(n >= 8, `open-file limit ${fd}: ${n} addresses take every connection slot`);
  }
});
