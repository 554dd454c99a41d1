import assert from "node:assert/strict";
import { ConfigStoreError } from "./config_store.ts";
import { ZONE_STORE_FORMAT, ZoneStore } from "./zone_store.ts";

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-zone-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const entry = (name: string, ip: string) => ({
  namespace: "shop",
  name,
  ipv4: [ip],
  ipv6: [] as string[],
});

Deno.test("ZoneStore keeps the newest names given, and load() gives them back", async () => {
  await withDir(async (dir) => {
    const store = new ZoneStore(`${dir}/dns.json`, (e) => {
      throw e;
    });
    assert.equal(await store.load(), null);
    // saves given while one is being written: the last one wins, none is lost half-written
    for (let i = 1; i <= 20; i++) store.save([entry("web", `198.51.100.${i}`)]);
    store.save([entry("web", "198.51.100.99"), entry("cart", "198.51.100.7")]);
    await store.flush();
    assert.deepEqual(await store.load(), [
      entry("web", "198.51.100.99"),
      entry("cart", "198.51.100.7"),
    ]);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["dns.json"]);
  });
});

Deno.test("ZoneStore reports a save it cannot make, and refuses files that are not its own", async () => {
  await withDir(async (dir) => {
    const errors: Error[] = [];
    const gone = new ZoneStore(`${dir}/missing/dns.json`, (e) => errors.push(e));
    gone.save([entry("web", "198.51.100.1")]);
    await gone.flush();
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof ConfigStoreError);
    assert.match(errors[0]!.message, /^Cannot save the DNS names to ".*missing\/dns.json": /);

    const path = `${dir}/dns.json`;
    const store = new ZoneStore(path);
    for (
      const [text, why] of [
        ["{nope", /not JSON/],
        [JSON.stringify({ format: "meshd.dns/v0", entries: [] }), /format is "meshd.dns\/v0"/],
        [
          JSON.stringify({ format: ZONE_STORE_FORMAT, entries: [{ name: "web" }] }),
          /not mesh DNS entries/,
        ],
      ] as const
    ) {
      await Deno.writeTextFile(path, text);
      await assert.rejects(
        store.load(),
        (e: Error) => e instanceof ConfigStoreError && why.test(e.message),
      );
    }
  });
});
