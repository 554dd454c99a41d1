import assert from "node:assert/strict";
import { RoundRobin } from "./balancer.ts";
import { endpoint } from "../../tests/testenv/mesh.ts";

Deno.test("RoundRobin.pick() cycles over ready endpoints only", () => {
  const rr = new RoundRobin();
  const eps = [
    endpoint("10.0.0.1", 80),
    endpoint("10.0.0.2", 80, { ready: false }),
    endpoint("10.0.0.3", 80),
  ];
  const picks = Array.from({ length: 4 }, () => rr.pick("k", eps)?.address);
  assert.deepEqual(picks, ["10.0.0.1", "10.0.0.3", "10.0.0.1", "10.0.0.3"]);
  assert.equal(rr.pick("k", [endpoint("10.0.0.9", 80, { ready: false })]), null);
  assert.equal(rr.pick("empty", []), null);
});

Deno.test("RoundRobin keeps each port's position across endpoint changes until retained away", () => {
  const rr = new RoundRobin();
  const two = [endpoint("10.0.0.1", 80), endpoint("10.0.0.2", 80)];
  assert.equal(rr.pick("a", two)?.address, "10.0.0.1");
  assert.equal(rr.pick("b", two)?.address, "10.0.0.1");
  // A new endpoint list (a reload) goes on from where the port was.
  const three = [...two, endpoint("10.0.0.3", 80)];
  assert.equal(rr.pick("a", three)?.address, "10.0.0.2");
  assert.equal(rr.pick("a", three)?.address, "10.0.0.3");
  rr.retain(new Set(["b"]));
  assert.equal(rr.pick("a", three)?.address, "10.0.0.1");
  assert.equal(rr.pick("b", three)?.address, "10.0.0.2");
});
