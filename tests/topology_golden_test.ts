/**
 * Golden files for the model: every directory under `tests/fixtures/topology/` holds
 * `objects.yaml` (Kubernetes-style objects), optionally `options.json` (the builder options),
 * and `expected.json`: what the loader, the topology builder and the config builder make of
 * them. `deno test --allow-read --allow-write tests/topology_golden_test.ts -- --update` (or
 * `deno task test -- --update`) rewrites the expected files; review and commit the diff with
 * its cause. A missing expected.json fails the case.
 */
import assert from "node:assert/strict";
import { decodeFiles, ObjectLoader } from "../src/provider/mod.ts";
import {
  buildMeshConfig,
  buildTopology,
  type CompileOptions,
  TopologyCache,
  unreadableObjects,
} from "../src/topology/mod.ts";

const DIR = new URL("./fixtures/topology/", import.meta.url);
const UPDATE = Deno.args.includes("--update");

interface Golden {
  errors: string[];
  warnings: string[];
  diagnostics: unknown[];
  config: unknown;
}

async function run(objectsYaml: string, options: CompileOptions): Promise<Golden> {
  const loaded = new ObjectLoader().merge(
    await decodeFiles([{ path: "objects.yaml", text: objectsYaml }]),
  );
  const topology = buildTopology(loaded.objects, {
    ...options,
    unreadable: unreadableObjects(loaded.errors),
  });
  const built = buildMeshConfig(topology, options);
  return {
    errors: loaded.errors.map((e) => e.message),
    warnings: loaded.warnings,
    diagnostics: [...topology.diagnostics, ...built.diagnostics],
    config: built.config,
  };
}

async function readOptional(url: URL): Promise<string | null> {
  try {
    return await Deno.readTextFile(url);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

const cases: string[] = [];
for await (const entry of Deno.readDir(DIR)) if (entry.isDirectory) cases.push(entry.name);
cases.sort();

Deno.test("golden fixtures: there are at least 15 cases", () => {
  assert.ok(cases.length >= 15, `found ${cases.length} cases in ${DIR.pathname}`);
});

for (const name of cases) {
  Deno.test(`golden ${name}`, async () => {
    const dir = new URL(`${name}/`, DIR);
    const yaml = await Deno.readTextFile(new URL("objects.yaml", dir));
    const optionsText = await readOptional(new URL("options.json", dir));
    const options: CompileOptions = optionsText ? JSON.parse(optionsText) : {};
    const actual = await run(yaml, options);
    // Round-trip through JSON, as the file holds it: `undefined` fields disappear.
    const actualJson = JSON.stringify(actual, null, 2) + "\n";
    const expectedUrl = new URL("expected.json", dir);
    if (UPDATE) {
      await Deno.writeTextFile(expectedUrl, actualJson);
      return;
    }
    const expected = await readOptional(expectedUrl);
    assert.ok(
      expected !== null,
      `${name}/expected.json is missing; run \`deno task test -- --update\` and review it`,
    );
    assert.deepEqual(JSON.parse(actualJson), JSON.parse(expected));
    // The same input always gives the same output, byte for byte.
    assert.equal(JSON.stringify(await run(yaml, options), null, 2) + "\n", actualJson);
  });

  Deno.test(`golden ${name}: a build from a TopologyCache equals one without`, async () => {
    const dir = new URL(`${name}/`, DIR);
    const optionsText = await readOptional(new URL("options.json", dir));
    const options: CompileOptions = optionsText ? JSON.parse(optionsText) : {};
    const loaded = new ObjectLoader().merge(
      await decodeFiles([{
        path: "objects.yaml",
        text: await Deno.readTextFile(
          new URL("objects.yaml", dir),
        ),
      }]),
    );
    const o = { ...options, unreadable: unreadableObjects(loaded.errors) };
    const plain = buildTopology(loaded.objects, o);
    const cache = new TopologyCache();
    // The second build takes every service from the cache: splits and access are resolved
    // again on fresh ports, never added to the cached ones.
    for (const round of ["first", "cached"]) {
      assert.deepEqual(buildTopology(loaded.objects, { ...o, cache }), plain, round);
    }
  });
}
