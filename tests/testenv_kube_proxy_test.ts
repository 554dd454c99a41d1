import assert from "node:assert/strict";
import { kubeProxyNftablesGate } from "./testenv/cluster.ts";

// kube-proxy's nftables mode: alpha behind NFTablesProxyMode in 1.29 and 1.30 (refused without
// the gate), on by default from 1.31; the netns and real-node tiers run kube-proxy in it.
const cases: { version: string; gate: boolean }[] = [
  { version: "v1.30.14", gate: true },
  { version: "1.29.6", gate: true },
  { version: "v1.31.14", gate: false },
  { version: "v1.37.2", gate: false },
];

for (const c of cases) {
  Deno.test(`kubeProxyNftablesGate() ${c.gate ? "sets" : "leaves out"} the gate for ${c.version}`, () => {
    const lines = kubeProxyNftablesGate(c.version);
    assert.deepEqual(lines, c.gate ? ["featureGates:", "  NFTablesProxyMode: true"] : []);
  });
}
