import assert from "node:assert/strict";
import { decodeFiles, ObjectLoader } from "../provider/mod.ts";
import { compileMeshConfig, type CompileOptions, type MeshConfig } from "../topology/mod.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { applyDelta, DeltaError, diffConfigs, isEmptyDelta } from "./config_delta.ts";

const FIXTURES = new URL("../../tests/fixtures/topology/", import.meta.url);

/** What the real builder makes of each golden fixture. */
async function fixtureConfigs(): Promise<{ name: string; config: MeshConfig }[]> {
  const out = [];
  for (const e of [...Deno.readDirSync(FIXTURES)].sort((a, b) => a.name.localeCompare(b.name))) {
    const dir = new URL(`${e.name}/`, FIXTURES);
    const yaml = Deno.readTextFileSync(new URL("objects.yaml", dir));
    let options: CompileOptions = {};
    try {
      options = JSON.parse(Deno.readTextFileSync(new URL("options.json", dir)));
    } catch { /* defaults */ }
    const loaded = new ObjectLoader().merge(
      await decodeFiles([{ path: "objects.yaml", text: yaml }]),
    );
    out.push({ name: e.name, config: compileMeshConfig(loaded.objects, options).config });
  }
  return out;
}

Deno.test("applyDelta(a, diffConfigs(a, b)) is b for every pair of golden configs", async () => {
  const configs = await fixtureConfigs();
  assert.ok(configs.length >= 20);
  let pairs = 0;
  for (const a of configs) {
    for (const b of configs) {
      const next = { ...b.config, version: a.config.version + 1 };
      const d = diffConfigs(a.config, next);
      assert.deepEqual(applyDelta(a.config, d), next, `${a.name} -> ${b.name}`);
      // Fixtures that say one thing two ways (acl-headers-map, acl-headers-list) are equal.
      const same = JSON.stringify({ ...a.config, version: 0 }) ===
        JSON.stringify({ ...b.config, version: 0 });
      assert.equal(isEmptyDelta(d), same, `${a.name} -> ${b.name}`);
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

Deno.test("diffConfigs() reads only the services the next config does not share", () => {
  // The builder keeps every unchanged service object: at 10,000 services the delta of one
  // change must not cost a key and a lookup for each of them.
  const reads = new Set<string>();
  const plain = big(1000).services;
  const watched = plain.map((s) =>
    new Proxy(s, {
      get: (t, k) => {
        reads.add(`${t.namespace}/${t.name}`);
        return Reflect.get(t, k);
      },
    })
  );
  const a: MeshConfig = { ...big(0), services: watched };
  const changed = structuredClone(plain[500]!);
  changed.ports[0]!.endpoints[1]!.ready = false;
  const b: MeshConfig = { ...a, version: 2, services: a.services.with(500, changed) };
  const d = diffConfigs(a, b);
  assert.equal(d.upserts.length, 1);
  assert.equal(d.upserts[0], changed);
  assert.deepEqual(d.removes, []);
  assert.deepEqual([...reads], [`${changed.namespace}/${changed.name}`]);
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

Deno.test("a chain of deltas (changes, adds, removes, in any mix) makes each next version", () => {
  // A deterministic walk: each step changes, adds or removes a few services, so a delta
  // applied to a config made by an earlier delta (whose service index was carried over, or
  // rebuilt after an add) is checked against the config the builder would have sent.
  let seed = 7;
  const rand = (n: number) => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;
  let want = big(50);
  let have = want;
  let next = 100;
  for (let step = 0; step < 200; step++) {
    const b: MeshConfig = structuredClone(want);
    b.version = want.version + 1;
    const kind = rand(4);
    if (kind === 0 && b.services.length > 1) b.services.splice(rand(b.services.length), 1);
    if (kind === 1) {
      b.services.push({
        ...structuredClone(b.services[0]!),
        name: `svc-${String(rand(99999)).padStart(5, "0")}-${next++}`,
      });
      b.services.sort((x, y) =>
        x.namespace.localeCompare(y.namespace) || x.name.localeCompare(y.name)
      );
    }
    const i = rand(b.services.length);
    b.services[i]!.ports[0]!.endpoints[0]!.ready = !b.services[i]!.ports[0]!.endpoints[0]!.ready;
    if (kind === 3) b.identities = { ...b.identities, [`10.9.0.${step % 250}`]: "ns-1/api" };
    const d = diffConfigs(want, b);
    have = applyDelta(have, d);
    assert.deepEqual(have, b, `step ${step}`);
    want = b;
  }
});

Deno.test("applyDelta() shares what a delta leaves alone", () => {
  const a = big(100);
  const b = structuredClone(a);
  b.version = 2;
  b.services[40]!.ports[0]!.endpoints[0]!.ready = false;
  const next = applyDelta(a, diffConfigs(a, b));
  assert.equal(next.identities, a.identities, "an untouched identity table is the same object");
  assert.equal(next.services[39], a.services[39], "an unchanged service is the same object");
  assert.notEqual(next.services[40], a.services[40]);
  assert.notEqual(next.services, a.services, "the base's list is not changed");
  assert.equal(a.services[40]!.ports[0]!.endpoints[0]!.ready, true);
});
