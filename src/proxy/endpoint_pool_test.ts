import assert from "node:assert/strict";
import { EndpointPool } from "./endpoint_pool.ts";

/** A random source that replays `values`. */
function replay(...values: number[]) {
  let i = 0;
  return () => values[i++ % values.length]!;
}

Deno.test("EndpointPool.pick() takes the one of two with fewer requests in flight", () => {
  // Draws i = floor(0.1 * 3) = 0, j = floor(0.9 * 2) = 1 -> 2 (skips i): endpoints 0 and 2.
  const pool = new EndpointPool({ random: replay(0.1, 0.9) });
  const [a, b, c] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"].map((ip) =>
    pool.state({ address: ip, port: 80 })
  );
  a!.inflight = 4;
  c!.inflight = 1;
  assert.equal(pool.pick([a!, b!, c!]), c);
  c!.inflight = 9;
  assert.equal(pool.pick([a!, b!, c!]), a);
});

Deno.test("EndpointPool.pick() breaks ties towards the least recently picked", () => {
  const pool = new EndpointPool({ random: replay(0.1, 0.1) }); // always endpoints 0 and 1
  const [a, b] = ["10.0.0.1", "10.0.0.2"].map((ip) => pool.state({ address: ip, port: 80 }));
  const picks = Array.from({ length: 4 }, () => pool.pick([a!, b!])!.address);
  assert.deepEqual(picks, ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]);
  assert.equal(pool.pick([]), null);
});

Deno.test("EndpointPool ejects after failures in a row, longer each time, and brings it back", () => {
  let now = 1_000;
  const ejected: number[] = [];
  const pool = new EndpointPool({
    now: () => now,
    outlier: { consecutiveFailures: 3, baseEjectionMs: 100, maxEjectionMs: 250 },
    onEject: (_, ms) => ejected.push(ms),
  });
  const a = pool.state({ address: "10.0.0.1", port: 80 });
  const b = pool.state({ address: "10.0.0.2", port: 80 });
  assert.equal(pool.failure(a), false);
  pool.success(a); // a success ends the streak
  assert.equal(pool.failure(a), false);
  assert.equal(pool.failure(a), false);
  assert.equal(pool.failure(a), true);
  assert.ok(pool.ejected(a));
  for (let i = 0; i < 5; i++) assert.equal(pool.pick([a, b]), b);
  now += 100;
  assert.equal(pool.ejected(a), false);
  // Failing again straight after it returns: a longer ejection, capped.
  for (let i = 0; i < 3; i++) pool.failure(a);
  for (let i = 0; i < 3; i++) pool.failure(a);
  assert.deepEqual(ejected, [100, 200]);
  now += 200;
  for (let i = 0; i < 3; i++) pool.failure(a);
  assert.deepEqual(ejected, [100, 200, 250]);
  // When every candidate is ejected, they are all used rather than none.
  for (let i = 0; i < 3; i++) pool.failure(b);
  assert.ok(pool.ejected(b));
  assert.ok(pool.pick([a, b]) !== null);
  // A success after the ejection has run out forgives the streak of ejections.
  now += 1_000;
  pool.success(a);
  assert.equal(a.ejections, 0);
});

Deno.test("EndpointPool keeps state across configs and forgets idle removed endpoints", () => {
  const pool = new EndpointPool();
  const a = pool.state({ address: "10.0.0.1", port: 80 });
  const v6 = pool.state({ address: "fd00::1", port: 80 });
  assert.equal(v6.key, "[fd00::1]:80");
  a.inflight = 1;
  assert.equal(pool.state({ address: "10.0.0.1", port: 80 }), a);
  pool.retain(new Set());
  assert.equal(pool.state({ address: "10.0.0.1", port: 80 }), a, "in flight: kept to drain");
  a.inflight = 0;
  pool.retain(new Set());
  assert.notEqual(pool.state({ address: "10.0.0.1", port: 80 }), a);
});

Deno.test("EndpointPool.forget() drops idle gone endpoints and the busy ones once idle", () => {
  const pool = new EndpointPool();
  const a = pool.state({ address: "10.0.0.1", port: 80 });
  const b = pool.state({ address: "10.0.0.2", port: 80 });
  const c = pool.state({ address: "10.0.0.3", port: 80 });
  b.inflight = 1;
  pool.forget(["10.0.0.1:80", "10.0.0.2:80"], new Set(["10.0.0.3:80"]));
  assert.equal(pool.size, 2, "a is gone; b drains");
  assert.notEqual(pool.state({ address: "10.0.0.1", port: 80 }), a);
  assert.equal(pool.state({ address: "10.0.0.2", port: 80 }), b);
  // A later change, of other endpoints, lets b go once its request is done.
  pool.forget([], new Set(["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]));
  assert.equal(pool.state({ address: "10.0.0.2", port: 80 }), b, "listed again: kept");
  pool.forget(["10.0.0.2:80"], new Set(["10.0.0.1:80", "10.0.0.3:80"]));
  assert.equal(pool.state({ address: "10.0.0.2", port: 80 }), b, "still busy");
  b.inflight = 0;
  pool.forget([], new Set(["10.0.0.1:80", "10.0.0.3:80"]));
  assert.notEqual(pool.state({ address: "10.0.0.2", port: 80 }), b);
  assert.equal(pool.state({ address: "10.0.0.3", port: 80 }), c);
});
