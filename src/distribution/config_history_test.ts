import assert from "node:assert/strict";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { applyDelta } from "./config_delta.ts";
import { ConfigHistory } from "./config_history.ts";

const config = (version: number, ready: boolean): MeshConfig =>
  meshConfig([
    { name: "a", ports: [{ port: 80, endpoints: [endpoint("10.0.0.1", 80, { ready })] }] },
    { name: "b", ports: [{ port: 80, endpoints: [endpoint("10.0.0.2", 80)] }] },
  ], { version });

const at = (version: number, epoch = "e1") => ({ epoch, version });

Deno.test("ConfigHistory.updateFor() sends a delta from a known version, else a snapshot", () => {
  const h = new ConfigHistory(2);
  assert.deepEqual(h.updateFor(null), { kind: "none" }, "nothing to send yet");
  h.push(config(1, true), "e1");
  assert.equal(h.updateFor(null).kind, "snapshot", "a new node");
  assert.deepEqual(h.updateFor(at(1)), { kind: "none" }, "up to date");
  h.push(config(2, false), "e1");
  const u = h.updateFor(at(1));
  assert.equal(u.kind, "delta");
  if (u.kind === "delta") {
    assert.equal(u.epoch, "e1");
    assert.equal(u.delta.upserts.length, 1);
    assert.deepEqual(applyDelta(config(1, true), u.delta), config(2, false));
    const again = h.updateFor(at(1));
    assert.ok(again.kind === "delta" && again.delta === u.delta, "made once per starting config");
  }
  h.push(config(3, true), "e1");
  assert.equal(h.updateFor(at(2)).kind, "delta");
  // with a limit of 2, version 1 is forgotten: that node gets the whole config
  assert.equal(h.updateFor(at(1)).kind, "snapshot");
  // a version this leader never had
  assert.equal(h.updateFor(at(99)).kind, "snapshot");
});

Deno.test("ConfigHistory tells two leaders' equal version numbers apart by epoch", () => {
  const h = new ConfigHistory();
  // the new leader seeds its history with the config its own node applied (old epoch)...
  h.push(config(4, true), "old");
  h.push(config(5, false), "new");
  // ...so a node with that config gets a delta across the change of leader
  const u = h.updateFor(at(4, "old"));
  assert.ok(u.kind === "delta" && u.epoch === "new" && u.delta.from === 4 && u.delta.to === 5);
  // a node at version 4 of some other epoch has another config: it gets the whole one
  const other = h.updateFor(at(4, "other"));
  assert.ok(other.kind === "snapshot" && other.epoch === "new");
  // the same version number in another epoch is not "up to date"
  assert.equal(h.updateFor(at(5, "old")).kind, "snapshot");
  assert.deepEqual(h.updateFor(at(5, "new")), { kind: "none" });
});

Deno.test("ConfigHistory.push() refuses versions that do not grow", () => {
  const h = new ConfigHistory();
  h.push(config(5, true), "e1");
  assert.throws(() => h.push(config(5, false), "e2"), /versions only grow/);
  assert.throws(() => new ConfigHistory(0), RangeError);
});
