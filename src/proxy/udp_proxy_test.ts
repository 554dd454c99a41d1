import assert from "node:assert/strict";
import type { DropReason } from "./proxy_metrics.ts";
import { UdpFlowTable } from "./udp_proxy.ts";

Deno.test("UdpFlowTable evicts the least recently active flow over its cap, and counts it", () => {
  const dropped: DropReason[] = [];
  const ended: string[] = [];
  const table = new UdpFlowTable(2, (r) => dropped.push(r));
  const a = { name: "a" };
  const b = { name: "b" };
  const c = { name: "c" };
  table.add(a, () => ended.push("a"));
  table.add(b, () => ended.push("b"));
  table.touch(a); // b is now the least recently active
  table.add(c, () => ended.push("c"));
  assert.deepEqual(ended, ["b"]);
  assert.deepEqual(dropped, ["udp_flow_evicted"]);
  assert.equal(table.size, 2);
  table.remove(a);
  assert.equal(table.size, 1);
});
