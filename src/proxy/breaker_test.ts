import assert from "node:assert/strict";
import { parseBreakerExpression } from "../topology/mod.ts";
import { CircuitBreaker } from "./breaker.ts";

function breaker(expression: string, random = () => 0.5) {
  const clock = { t: 1_000_000 };
  const b = new CircuitBreaker(
    expression,
    parseBreakerExpression(expression),
    { windowMs: 10_000, fallbackMs: 1_000, recoveryMs: 1_000, checkMs: 0, minRequests: 5 },
    () => clock.t,
    random,
  );
  return { b, clock };
}

Deno.test("CircuitBreaker trips on NetworkErrorRatio and refuses everything for the fallback", () => {
  const { b, clock } = breaker("NetworkErrorRatio() > 0.5");
  for (let i = 0; i < 4; i++) {
    assert.ok(b.allow());
    b.record(502, 1, true);
  }
  // Four failures out of four: under the five-request minimum, so still closed.
  assert.ok(b.allow());
  b.record(200, 1, false);
  assert.ok(!b.allow(), "4 of 5 failed: tripped");
  assert.equal(b.state, "tripped");
  clock.t += 999;
  assert.ok(!b.allow());
  clock.t += 1;
  assert.equal(b.state, "recovering");
});

Deno.test("CircuitBreaker lets a growing share back in while recovering, then closes", () => {
  let r = 0.5;
  const { b, clock } = breaker("ResponseCodeRatio(500, 600, 0, 600) > 0.25", () => r);
  for (let i = 0; i < 5; i++) b.record(500, 1, false);
  assert.ok(!b.allow());
  clock.t += 1_000;
  clock.t += 400; // 40% into recovery
  r = 0.39;
  assert.ok(b.allow());
  r = 0.41;
  assert.ok(!b.allow());
  clock.t += 600;
  assert.equal(b.state, "standby");
  assert.ok(b.allow());
});

Deno.test("CircuitBreaker trips again when recovery traffic still fails", () => {
  const { b, clock } = breaker("ResponseCodeRatio(500, 600, 0, 600) > 0.25", () => 0);
  for (let i = 0; i < 5; i++) b.record(503, 1, false);
  assert.ok(!b.allow());
  clock.t += 1_100;
  assert.equal(b.state, "recovering");
  for (let i = 0; i < 5; i++) b.record(500, 1, false);
  assert.ok(!b.allow());
  assert.equal(b.state, "tripped");
});

Deno.test("CircuitBreaker reads the latency quantile and forgets requests older than the window", () => {
  const { b, clock } = breaker("LatencyAtQuantileMS(50) > 100");
  for (let i = 0; i < 3; i++) b.record(200, 500, false);
  for (let i = 0; i < 3; i++) b.record(200, 10, false);
  assert.ok(b.allow(), "the median of 3x10 ms and 3x500 ms is 10 ms");
  b.record(200, 500, false);
  assert.ok(!b.allow(), "4 of 7 over 100 ms");

  const fresh = breaker("LatencyAtQuantileMS(50) > 100");
  for (let i = 0; i < 10; i++) fresh.b.record(200, 500, false);
  fresh.clock.t += 10_001;
  for (let i = 0; i < 5; i++) fresh.b.record(200, 10, false);
  assert.ok(fresh.b.allow(), "the slow requests left the window");
  void clock;
});

Deno.test("CircuitBreaker evaluates && and || as written", () => {
  const { b } = breaker("NetworkErrorRatio() > 0.5 && ResponseCodeRatio(200, 300, 0, 600) < 0.1");
  for (let i = 0; i < 6; i++) b.record(502, 1, true);
  b.record(200, 1, false);
  assert.ok(b.allow(), "6/7 network errors, but 1/7 of responses are 2xx (not < 0.1)");
  for (let i = 0; i < 4; i++) b.record(502, 1, true);
  assert.ok(!b.allow(), "10/11 network errors and 1/11 2xx: both hold");
});
