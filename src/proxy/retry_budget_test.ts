import assert from "node:assert/strict";
import { RetryBudget } from "./retry_budget.ts";

Deno.test("RetryBudget allows 20% of the requests plus the minimum, per window", () => {
  let now = 0;
  const budget = new RetryBudget({ ratio: 0.2, minRetries: 10, windowMs: 10_000, now: () => now });
  for (let i = 0; i < 100; i++) budget.request();
  let allowed = 0;
  while (budget.retry()) allowed++;
  assert.equal(allowed, 30); // 10 + 20% of 100
  // A window later, the old requests and retries are forgotten: the minimum is back.
  now = 10_000;
  allowed = 0;
  while (budget.retry()) allowed++;
  assert.equal(allowed, 10);
});

Deno.test("RetryBudget lets old slots leave the window one by one", () => {
  let now = 0;
  const budget = new RetryBudget({ ratio: 0, minRetries: 2, windowMs: 1000, now: () => now });
  assert.ok(budget.retry());
  now = 500;
  assert.ok(budget.retry());
  assert.equal(budget.retry(), false);
  now = 1000; // the first retry's slot has left the window
  assert.ok(budget.retry());
  assert.equal(budget.retry(), false);
});
