import assert from "node:assert/strict";
import { ObjectLoader } from "../provider/mod.ts";
import { compileMeshConfig, type CompileOptions, type MeshConfig } from "../topology/mod.ts";
import { endpoint, meshConfig } from "../../tests/testenv/mesh.ts";
import { applyDelta, DeltaError, diffConfigs, isEmptyDelta } from "./config_delta.ts";

const FIXTURES = new URL("../../tests/fixtures/topology/", import.meta.url);

/** What the real builder makes of each golden fixture. */
function fixtureConfigs(): { name: string; config: MeshConfig }[] {
  const out = [];
  for (const e of [...Deno.readDirSync(FIXTURES)].sort((a, b) => a.name.localeCompare(b.name))) {
    const dir = new URL(`${e.name}/`, FIXTURES);
    const yaml = Deno.readTextFileSync(new URL("objects.yaml", dir));
    let options: CompileOptions = {};
    try {
      options = JSON.parse(Deno.readTextFileSync(new URL("options.json", dir)));
    } catch { /* defaults */ }
    const loaded = new ObjectLoader().load([{ path: "objects.yaml", text: yaml }]);
    out.push({ name: e.name, config: compileMeshConfig(loaded.objects, options).config });
  }
  return out;
}

Deno.test("applyDelta(a, diffConfigs(a, b)) is b for every pair of golden configs", () => {
  const configs = fixtureConfigs();
  assert.ok(configs.length >= 20);
  let pairs = 0;
  for (const a of configs) {
    for (const b of configs) {
      const next = { ...b.config, version: a.config.version + 1 };
      const d = diffConfigs(a.config, next);
      assert.deepEqual(applyDelta(a.config, d), next, `${a.name} -> ${b.name}`);
      assert.equal(isEmptyDelta(d), a === b, `${a.name} -> ${b.name}`);
      pairs++;
    }
  }
  assert.equal(pairs, configs.length ** 2);
});

/** A config of `n` services with two endpoints each, sorted as the builder sorts them. */
function big(n: number): MeshConfig {
  const names = Array.from({ length: n }, (_, i) => `svc-${String(i).padStart(5, "0")}`);
  return meshConfig(
    names.map((name, i) => ({
      name,
      namespace: `ns-${i % 7}`,
      ports: [{
        port: 80,
        endpoints: [
          endpoint(`10.1.${i >> 8}.${i & 255}`, 8080),
          endpoint(`10.2.${i >> 8}.${i & 255}`, 8080),
        ],
      }],
    })).sort((a, b) => a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name)),
    { identities: { "10.1.0.1": "ns-0/web" } },
  );
}

Deno.test("diffConfigs() sends one service for a one-endpoint change", () => {
  const a = big(1000);
  const b = structuredClone(a);
  b.version = 2;
  b.services[500]!.ports[0]!.endpoints[1]!.ready = false;
  const d = diffConfigs(a, b);
  assert.equal(d.upserts.length, 1);
  assert.equal(d.removes.length, 0);
  assert.deepEqual(applyDelta(a, d), b);
  const ratio = JSON.stringify(d).length / JSON.stringify(b).length;
  assert.ok(ratio < 0.01, `delta is ${(ratio * 100).toFixed(3)}% of the config`);
});

Deno.test("diffConfigs() carries removals, domain, ACL and identity changes", () => {
  const a = big(20);
  const b = structuredClone(a);
  b.version = 7;
  b.services.splice(3, 2);
  b.domain = "traefik.mesh";
  b.acl = true;
  b.identities = { "10.1.0.2": "ns-1/api" };
  const d = diffConfigs(a, b);
  assert.equal(d.removes.length, 2);
  assert.equal(d.domain, "traefik.mesh");
  assert.equal(d.acl, true);
  assert.deepEqual(d.identitiesSet, { "10.1.0.2": "ns-1/api" });
  assert.deepEqual(d.identitiesRemoved, ["10.1.0.1"]);
  assert.deepEqual(applyDelta(a, d), b);
});

Deno.test("applyDelta() refuses a delta from another version, or one that does not fit", () => {
  const a = big(3);
  const b = { ...structuredClone(a), version: 2 };
  b.services.pop();
  const d = diffConfigs(a, b);
  assert.throws(() => applyDelta({ ...a, version: 5 }, d), DeltaError);
  assert.throws(() => applyDelta({ ...a, version: 5 }, d), /delta 1->2 to version 5/);
  // the same delta twice: the service it removes is gone already
  const once = applyDelta(a, d);
  assert.throws(() => applyDelta({ ...once, version: 1 }, d), /removes "ns-\d\/svc-\d+", not in 1/);
  assert.equal(a.services.length, 3, "the input is not changed");
});
