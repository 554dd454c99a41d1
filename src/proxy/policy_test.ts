import assert from "node:assert/strict";
import { ProxyFailure } from "./policy.ts";

Deno.test("ProxyFailure carries the x-meshd-error reason code of its status, or the one given", () => {
  const cases: [number, string][] = [
    [400, "bad-request"],
    [431, "bad-request"],
    [403, "acl-denied"],
    [404, "unknown-host"],
    [429, "rate-limited"],
    [502, "endpoint-failed"],
    [503, "no-endpoint"],
    [504, "timeout"],
    [508, "loop"],
  ];
  for (const [status, code] of cases) assert.equal(new ProxyFailure(status, "x").code, code);
  // 503 is also the open circuit breaker's answer: it says so itself.
  assert.equal(new ProxyFailure(503, "x", {}, false, "circuit-open").code, "circuit-open");
});
