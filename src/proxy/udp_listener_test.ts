import assert from "node:assert/strict";
import type { DropReason } from "./proxy_metrics.ts";
import { UdpFlowTable } from "./udp_listener.ts";

Deno.test("UdpFlowTable evicts the least recently active flow over its cap, and counts it", () => {
  const dropped: DropReason[] = [];
  const ended: string[] = [];
  const table = new UdpFlowTable({ max: 2 }, (r) => dropped.push(r));
  const a = { name: "a" };
  const b = { name: "b" };
  const c = { name: "c" };
  table.add(a, { source: "x", end: () => ended.push("a") });
  table.add(b, { source: "y", end: () => ended.push("b") });
  table.touch(a); // b is now the least recently active
  table.add(c, { source: "z", end: () => ended.push("c") });
  assert.deepEqual(ended, ["b"]);
  assert.deepEqual(dropped, ["udp_flow_evicted"]);
  assert.equal(table.size, 2);
  table.remove(a);
  assert.equal(table.size, 1);
});

Deno.test("UdpFlowTable ends a source's own least recently active flow over its per-source cap", () => {
  const dropped: DropReason[] = [];
  const ended: string[] = [];
  const table = new UdpFlowTable({ max: 10, perSource: 2 }, (r) => dropped.push(r));
  const flow = (name: string, source: string) => {
    const f = { name };
    table.add(f, { source, end: () => ended.push(name) });
    return f;
  };
  flow("victim", "10.0.0.1");
  const a1 = flow("a1", "10.0.0.2");
  flow("a2", "10.0.0.2");
  table.touch(a1); // a2 is now the attacker's least recently active
  flow("a3", "10.0.0.2");
  flow("a4", "10.0.0.2");
  assert.deepEqual(ended, ["a2", "a1"]);
  assert.deepEqual(dropped, ["udp_source_limit", "udp_source_limit"]);
  assert.equal(table.sourceSize("10.0.0.2"), 2);
  assert.equal(table.sourceSize("10.0.0.1"), 1);
  assert.equal(table.size, 3);
});
