import assert from "node:assert/strict";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { CONFIG_STORE_FORMAT, ConfigStore, ConfigStoreError } from "./config_store.ts";

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-store-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const config = (version: number) =>
  meshConfig([{ name: "web", ports: [{ port: 80, endpoints: [endpoint("10.0.0.1", 8080)] }] }], {
    version,
  });

Deno.test("ConfigStore.load() gives back what save() wrote, and null before any save", async () => {
  await withDir(async (dir) => {
    const store = new ConfigStore(`${dir}/config.json`);
    assert.equal(await store.load(), null);
    await store.save({ epoch: "e1", config: config(3) });
    await store.save({ epoch: "e1", config: config(4) });
    assert.deepEqual(await store.load(), { epoch: "e1", config: config(4) });
    // only the file itself is left: no temporary files
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["config.json"]);
    assert.equal((await Deno.stat(`${dir}/config.json`)).mode! & 0o777, 0o600);
  });
});

Deno.test("ConfigStore.load() ignores a temporary file a crash left, and keeps the last whole save", async () => {
  await withDir(async (dir) => {
    const store = new ConfigStore(`${dir}/config.json`);
    await store.save({ epoch: "e1", config: config(7) });
    // a save cut off before its rename
    await Deno.writeTextFile(
      `${dir}/config.json.tmp-1-deadbeef`,
      '{"format":"meshd.config/v1","con',
    );
    assert.equal((await store.load())?.config.version, 7);
  });
});

const broken: { name: string; text: string; message: RegExp }[] = [
  { name: "text that is not JSON", text: '{"format":', message: /not JSON/ },
  {
    name: "another format",
    text: '{"format":"meshd.config/v0","config":{}}',
    message: /format is "meshd\.config\/v0", expected "meshd\.config\/v1"/,
  },
  {
    name: "a config without services",
    text: `{"format":"${CONFIG_STORE_FORMAT}","config":{"version":1}}`,
    message: /not a MeshConfig/,
  },
];
for (const c of broken) {
  Deno.test(`ConfigStore.load() refuses ${c.name} with a plain message`, async () => {
    await withDir(async (dir) => {
      await Deno.writeTextFile(`${dir}/config.json`, c.text);
      await assert.rejects(new ConfigStore(`${dir}/config.json`).load(), (e: unknown) => {
        assert.ok(e instanceof ConfigStoreError);
        assert.match(e.message, c.message);
        assert.match(e.message, /^Cannot use the saved config ".*config\.json"/);
        return true;
      });
    });
  });
}

Deno.test("ConfigStore works with a path relative to the working folder", async () => {
  await withDir(async (dir) => {
    const cwd = Deno.cwd();
    Deno.chdir(dir);
    try {
      const store = new ConfigStore("config.json");
      await store.save({ epoch: "e1", config: config(2) });
      assert.equal((await store.load())?.config.version, 2);
    } finally {
      Deno.chdir(cwd);
    }
  });
});

Deno.test("ConfigStore.save() says where it could not write", async () => {
  await withDir(async (dir) => {
    const store = new ConfigStore(`${dir}/missing/config.json`);
    await assert.rejects(
      store.save({ epoch: "e1", config: config(1) }),
      /^ConfigStoreError: Cannot save the config to ".*missing\/config\.json"/,
    );
  });
});
