import assert from "node:assert/strict";
import { endpoint, meshConfig } from "../../tests/testenv/mesh.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { applyDelta } from "./config_delta.ts";
import { ConfigHistory } from "./config_history.ts";

const config = (version: number, ready: boolean): MeshConfig =>
  meshConfig([
    { name: "a", ports: [{ port: 80, endpoints: [endpoint("10.0.0.1", 80, { ready })] }] },
    { name: "b", ports: [{ port: 80, endpoints: [endpoint("10.0.0.2", 80)] }] },
  ], { version });

Deno.test("ConfigHistory.updateFor() sends a delta from a known version, else a snapshot", () => {
  const h = new ConfigHistory(2);
  assert.deepEqual(h.updateFor(null), { kind: "none" }, "nothing to send yet");
  h.push(config(1, true));
  assert.equal(h.updateFor(null).kind, "snapshot", "a new node");
  assert.deepEqual(h.updateFor(1), { kind: "none" }, "up to date");
  h.push(config(2, false));
  const u = h.updateFor(1);
  assert.equal(u.kind, "delta");
  if (u.kind === "delta") {
    assert.equal(u.delta.upserts.length, 1);
    assert.deepEqual(applyDelta(config(1, true), u.delta), config(2, false));
    const again = h.updateFor(1);
    assert.ok(again.kind === "delta" && again.delta === u.delta, "made once per starting version");
  }
  h.push(config(3, true));
  assert.equal(h.updateFor(2).kind, "delta");
  // with a limit of 2, version 1 is forgotten: that node gets the whole config
  const old = h.updateFor(1);
  assert.equal(old.kind, "snapshot");
  // a version this leader never had (another leader's numbering)
  assert.equal(h.updateFor(99).kind, "snapshot");
});

Deno.test("ConfigHistory.push() refuses versions that do not grow", () => {
  const h = new ConfigHistory();
  h.push(config(5, true));
  assert.throws(() => h.push(config(5, false)), /versions only grow/);
  assert.throws(() => new ConfigHistory(0), RangeError);
});
