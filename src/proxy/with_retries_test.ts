import assert from "node:assert/strict";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import type { EndpointState } from "./endpoint_pool.ts";
import { ProxyFailure } from "./policy.ts";
import { RetryBudget } from "./retry_budget.ts";
import { buildRouteTable, lookupHttpRoute, newRouteState, type Route } from "./route_table.ts";
import { UpstreamError } from "./upstream_error.ts";
import { ClientGone, type RetryOptions, withRetries } from "./with_retries.ts";

/** A route with `n` endpoints (nothing listens on them: the exchanges here are fakes). */
function route(n: number): { root: Route; options: RetryOptions } {
  const state = newRouteState();
  const table = buildRouteTable(
    meshConfig([{
      name: "web",
      ports: [{
        port: 80,
        endpoints: Array.from({ length: n }, (_, i) => endpoint(`127.0.62.${i + 10}`, 8080)),
      }],
    }]),
    state,
  );
  const root = lookupHttpRoute(table, "web.default.mesh")!;
  return {
    root,
    options: {
      pool: state.pool,
      root,
      target: root,
      candidates: root.readyStates,
      attempts: 3,
    },
  };
}

const notSent = () => new UpstreamError("cannot connect: refused", { requestSent: false });
const sent = () => new UpstreamError("connection closed before a response", { requestSent: true });

Deno.test("withRetries() sends an unsent request to another endpoint and counts the retry", async () => {
  const { root, options } = route(2);
  const seen: EndpointState[] = [];
  const { value, ep } = await withRetries((ep) => {
    seen.push(ep);
    return seen.length === 1 ? Promise.reject(notSent()) : Promise.resolve("ok");
  }, options);
  assert.equal(value, "ok");
  assert.equal(seen.length, 2);
  assert.notEqual(seen[0], seen[1], "the endpoint that failed was tried again first");
  assert.equal(ep, seen[1]);
  // The caller owns the successful try's inflight; the failed one gave its back.
  assert.equal(seen[1]!.inflight, 1);
  assert.equal(seen[0]!.inflight, 0);
  assert.equal(seen[0]!.failures, 1);
  assert.equal(root.metrics.retries.value, 1);
});

Deno.test("withRetries() answers 502 for a sent request that may not be sent again", async () => {
  const { options } = route(2);
  let tries = 0;
  await assert.rejects(
    withRetries(() => (tries++, Promise.reject(sent())), options),
    (e) =>
      e instanceof ProxyFailure && e.status === 502 && e.network &&
      /^Endpoint 127\.0\.62\.1\d:8080 of service "[^"]+" failed: connection closed before a response$/
        .test(e.message),
  );
  assert.equal(tries, 1);
});

Deno.test("withRetries() sends a sent request again when retrySent allows it", async () => {
  const { options } = route(2);
  let tries = 0;
  await assert.rejects(
    withRetries(() => (tries++, Promise.reject(sent())), { ...options, retrySent: true }),
    (e) => e instanceof ProxyFailure && e.status === 502,
  );
  assert.equal(tries, 3);
});

Deno.test("withRetries() answers 504 naming the timeout when no response came in time", async () => {
  const { options } = route(1);
  await assert.rejects(
    withRetries(
      () => Promise.reject(new UpstreamError("timed out", { requestSent: true, timeoutMs: 250 })),
      options,
    ),
    (e) => e instanceof ProxyFailure && e.status === 504 && /within 250 ms/.test(e.message),
  );
});

Deno.test("withRetries() retries a stale pooled connection once, free, without blaming the endpoint", async () => {
  const { root, options } = route(1);
  const ep = root.readyStates[0]!;
  let tries = 0;
  const { value } = await withRetries((_, attempt) => {
    tries++;
    if (attempt === 0) {
      return Promise.reject(
        new UpstreamError("connection reset", { requestSent: true, stale: true }),
      );
    }
    return Promise.resolve("fresh");
  }, { ...options, attempts: 1, budget: new RetryBudget({ minRetries: 0, ratio: 0 }) });
  assert.equal(value, "fresh");
  assert.equal(tries, 2);
  assert.equal(ep.failures, 0);
  assert.equal(root.metrics.retries.value, 0);
});

Deno.test("withRetries() answers a failure of this process's own (out of descriptors) at once, and blames no endpoint", async () => {
  const { root, options } = route(2);
  let tries = 0;
  let told = 0;
  await assert.rejects(
    withRetries(() => {
      tries++;
      return Promise.reject(
        new UpstreamError("cannot connect: Too many open files (os error 24)", {
          requestSent: false,
          local: true,
        }),
      );
    }, { ...options, onFailure: () => told++ }),
    (e) => e instanceof ProxyFailure && e.status === 502 && /Too many open files/.test(e.message),
  );
  assert.equal(tries, 1, "another endpoint would fare no better");
  assert.equal(told, 0);
  assert.deepEqual(root.readyStates.map((s) => s.failures), [0, 0]);
});

Deno.test("withRetries() with reuseFailed false stops once every endpoint has failed", async () => {
  const { options } = route(2);
  let tries = 0;
  await assert.rejects(
    withRetries(() => (tries++, Promise.reject(notSent())), {
      ...options,
      attempts: 5,
      reuseFailed: false,
    }),
    (e) => e instanceof ProxyFailure && e.status === 502 && /cannot connect/.test(e.message),
  );
  assert.equal(tries, 2);
});

Deno.test("withRetries() makes no retry for a client that left", async () => {
  const { options } = route(2);
  let tries = 0;
  await assert.rejects(
    withRetries(() => (tries++, Promise.reject(notSent())), { ...options, gone: () => true }),
    ClientGone,
  );
  assert.equal(tries, 1);
});

Deno.test("withRetries() stops when the retry budget is spent, and says so", async () => {
  const { options } = route(2);
  let tries = 0;
  let spent = 0;
  await assert.rejects(
    withRetries(() => (tries++, Promise.reject(notSent())), {
      ...options,
      budget: new RetryBudget({ minRetries: 0, ratio: 0 }),
      onBudgetSpent: () => spent++,
    }),
    (e) => e instanceof ProxyFailure && e.status === 502,
  );
  assert.equal(tries, 1);
  assert.equal(spent, 1);
});

Deno.test("withRetries() passes other errors through and gives the endpoint back", async () => {
  const { root, options } = route(1);
  await assert.rejects(
    withRetries(() => Promise.reject(new ProxyFailure(400, "Bad request: x")), options),
    (e) => e instanceof ProxyFailure && e.status === 400,
  );
  assert.equal(root.readyStates[0]!.inflight, 0);
  assert.equal(root.readyStates[0]!.failures, 0);
});
