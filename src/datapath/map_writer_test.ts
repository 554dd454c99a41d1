import assert from "node:assert/strict";
import type { DatapathMap, WrittenMaps } from "./datapath_map.ts";
import type { DatapathEntry } from "./entries.ts";
import { MapWriter } from "./map_writer.ts";

const hex = (b: Uint8Array): string => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
const unhex = (s: string): Uint8Array<ArrayBuffer> =>
  new Uint8Array(s.match(/../g)!.map((x) => parseInt(x, 16)));

/** One log of every map operation, in order, shared by the fake maps of one test. */
type Op = { map: string; op: "update" | "delete"; key: string; value?: string };

/**
 * A map in memory, keyed by the hex of the key. `fail` is asked before each update and
 * delete; when it says true, the operation throws as the kernel would (ENOMEM, say).
 */
class FakeMap implements DatapathMap {
  readonly entries = new Map<string, string>();
  constructor(
    readonly name: string,
    readonly log: Op[],
    readonly fail: () => boolean,
    readonly after: () => void,
  ) {}
  update(key: Uint8Array<ArrayBuffer>, value: Uint8Array<ArrayBuffer>): void {
    if (this.fail()) throw new Error(`fake ${this.name}: update refused`);
    this.entries.set(hex(key), hex(value));
    this.log.push({ map: this.name, op: "update", key: hex(key), value: hex(value) });
    this.after();
  }
  lookup(key: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> | null {
    const v = this.entries.get(hex(key));
    return v === undefined ? null : unhex(v);
  }
  delete(key: Uint8Array<ArrayBuffer>): boolean {
    if (this.fail()) throw new Error(`fake ${this.name}: delete refused`);
    const had = this.entries.delete(hex(key));
    this.log.push({ map: this.name, op: "delete", key: hex(key) });
    this.after();
    return had;
  }
  keys(): Uint8Array<ArrayBuffer>[] {
    return [...this.entries.keys()].map(unhex);
  }
}

interface Fakes {
  maps: Record<keyof WrittenMaps, FakeMap>;
  log: Op[];
  /** Operations left before one fails (Infinity: none fails). */
  budget: { left: number };
}

/**
 * The five maps, checking after every operation what a hook would read: each service entry's
 * `count` slots of its half in force are all there (never a mix, never a hole).
 */
function fakes(): Fakes {
  const log: Op[] = [];
  const budget = { left: Infinity };
  const fail = () => budget.left-- <= 0;
  const maps = {} as Record<string, FakeMap>;
  const check = () => {
    for (const family of ["4", "6"]) {
      for (const [k, v] of maps[`svc${family}`]!.entries) {
        const b = unhex(v);
        const dv = new DataView(b.buffer);
        const [id, half, count] = [
          dv.getUint32(0, true),
          dv.getUint32(4, true),
          dv.getUint32(8, true),
        ];
        for (let i = 0; i < count; i++) {
          const slot = new Uint8Array(8);
          new DataView(slot.buffer).setUint32(0, id, true);
          new DataView(slot.buffer).setUint32(4, half * 4096 + i, true);
          assert.ok(
            maps[`be${family}`]!.entries.has(hex(slot)),
            `service ${k} reads slot ${half}/${i}, which is missing after ${
              JSON.stringify(log.at(-1))
            }`,
          );
        }
      }
    }
  };
  for (const name of ["svc4", "svc6", "be4", "be6", "meta"]) {
    maps[name] = new FakeMap(name, log, fail, check);
  }
  return { maps: maps as Fakes["maps"], log, budget };
}

const NOW = 5_000_000_000n;
const writer = (f: Fakes, now = () => NOW) =>
  new MapWriter(f.maps, { now, cgroupIno: 4242n, graceMs: 1_000 });

function entry(backends: string[], o: Partial<DatapathEntry> = {}): DatapathEntry {
  return {
    family: 4,
    address: "10.96.0.10",
    port: 7000,
    protocol: "tcp",
    backends: backends.map((address) => ({ address, port: 8080 })),
    redirect: false,
    service: "default/echo:7000",
    ...o,
  };
}

const A = "127.0.66.1", B = "127.0.66.2", C = "127.0.66.3";
/** The svc4 key of 10.96.0.10:7000/tcp: address and port in network order, then proto 6. */
const SVC_KEY = "0a6000" + "0a" + "1b58" + "06" + "00";
/** A meshd_be_key: id, then slot (half * 4096 + index), both u32 little-endian. */
const beKey = (id: number, slot: number) => hex(new Uint8Array(new Uint32Array([id, slot]).buffer));
/** A meshd_svc value: id, half, count, flags, u32 little-endian each. */
const svcValue = (id: number, half: number, count: number, flags = 0) =>
  hex(new Uint8Array(new Uint32Array([id, half, count, flags]).buffer));

Deno.test("MapWriter.apply() writes a new service's backends and then its entry, in meshd.h's layout", () => {
  const f = fakes();
  const r = writer(f).apply([entry([A, B])], 7);
  assert.deepEqual(r, { written: 1, removed: 0 });
  assert.deepEqual(f.log.filter((o) => o.map !== "meta"), [
    // meshd_be4: 127.0.66.1 and .2, port 8080 (0x1f90) in network order, then 2 bytes of pad.
    { map: "be4", op: "update", key: beKey(1, 0), value: "7f004201" + "1f90" + "0000" },
    { map: "be4", op: "update", key: beKey(1, 1), value: "7f004202" + "1f90" + "0000" },
    { map: "svc4", op: "update", key: SVC_KEY, value: svcValue(1, 0, 2) },
  ]);
});

Deno.test("MapWriter.apply() keys IPv6 and UDP entries by 16 address bytes and proto 17, and flags redirects", () => {
  const f = fakes();
  writer(f).apply([
    entry(["fd00::1"], { family: 6, address: "fd00:96::10", protocol: "udp", redirect: true }),
  ], 1);
  const key = "fd000096" + "00000000" + "00000000" + "00000010" + "1b58" + "11" + "00";
  assert.deepEqual([...f.maps.svc6.entries], [[key, svcValue(1, 0, 1, 1)]]);
  assert.deepEqual([...f.maps.be6.entries], [[
    beKey(1, 0),
    "fd000000" + "00000000" + "00000000" + "00000001" + "1f90" + "0000",
  ]]);
  assert.equal(f.maps.svc4.entries.size + f.maps.be4.entries.size, 0);
});

Deno.test("MapWriter.apply() writes a change into the other half, switches the entry, then trims", () => {
  const f = fakes();
  const w = writer(f);
  w.apply([entry([A, B, C])], 1);
  f.log.length = 0;
  w.apply([entry([C, A])], 2);
  assert.deepEqual(f.log.filter((o) => o.map !== "meta").map((o) => `${o.op} ${o.map} ${o.key}`), [
    `update be4 ${beKey(1, 4096)}`,
    `update be4 ${beKey(1, 4097)}`,
    `update svc4 ${SVC_KEY}`,
  ]);
  assert.equal(f.maps.svc4.entries.get(SVC_KEY), svcValue(1, 1, 2));
  f.log.length = 0;
  // Back to half 0, now one backend: slots 1 and 2 there were the array before last.
  w.apply([entry([B])], 3);
  assert.deepEqual(f.log.filter((o) => o.map !== "meta").map((o) => `${o.op} ${o.map} ${o.key}`), [
    `update be4 ${beKey(1, 0)}`,
    `update svc4 ${SVC_KEY}`,
    `delete be4 ${beKey(1, 2)}`,
    `delete be4 ${beKey(1, 1)}`,
  ]);
  assert.deepEqual([...f.maps.be4.entries.keys()].sort(), [
    beKey(1, 0),
    beKey(1, 4096),
    beKey(1, 4097),
  ]);
  assert.deepEqual(w.counts().backends, 1);
});

Deno.test("MapWriter.apply() writes nothing for entries that did not change", () => {
  const f = fakes();
  const w = writer(f);
  w.apply([entry([A, B])], 1);
  f.log.length = 0;
  assert.deepEqual(w.apply([entry([A, B])], 2), { written: 0, removed: 0 });
  assert.deepEqual(f.log.map((o) => o.map), ["meta"]);
});

Deno.test("MapWriter.apply() removes a service's entry before its slots, and reuses its id", () => {
  const f = fakes();
  const w = writer(f);
  w.apply([entry([A, B]), entry([C], { port: 7001 })], 1);
  w.apply([entry([A]), entry([C], { port: 7001 })], 2); // slots in both halves of id 1
  f.log.length = 0;
  assert.deepEqual(w.apply([entry([C], { port: 7001 })], 3), { written: 0, removed: 1 });
  const ops = f.log.filter((o) => o.map !== "meta").map((o) => `${o.op} ${o.map}`);
  assert.deepEqual(ops, ["delete svc4", "delete be4", "delete be4", "delete be4"]);
  assert.deepEqual([...f.maps.be4.entries.keys()], [beKey(2, 0)]);
  w.apply([entry([C], { port: 7001 }), entry([B], { port: 7002 })], 4);
  assert.equal(f.maps.be4.entries.has(beKey(1, 0)), true, "the freed id 1 is used again");
});

Deno.test("MapWriter.apply() keeps the first of two services on one address and port", () => {
  const f = fakes();
  writer(f).apply([entry([A]), entry([B, C], { service: "default/other:7000" })], 1);
  assert.equal(f.maps.svc4.entries.get(SVC_KEY), svcValue(1, 0, 1));
});

Deno.test("MapWriter.apply() that fails part-way leaves every entry whole, and the next apply finishes", () => {
  const f = fakes();
  const w = writer(f);
  w.apply([entry([A, B])], 1);
  // A change and a new service; the second backend slot of the change is refused.
  f.budget.left = 1;
  assert.throws(
    () => w.apply([entry([C, B, A]), entry([A, B], { port: 7001 })], 2),
    /fake be4: update refused/,
  );
  // The hook still reads the old array (the check after every operation held, too).
  assert.equal(f.maps.svc4.entries.get(SVC_KEY), svcValue(1, 0, 2));
  assert.equal(w.counts().version, 1, "meta is not moved to a version not written");
  f.budget.left = Infinity;
  w.apply([entry([C, B, A]), entry([A, B], { port: 7001 })], 2);
  assert.equal(f.maps.svc4.entries.get(SVC_KEY), svcValue(1, 1, 3));
  assert.equal(f.maps.svc4.entries.size, 2);
  assert.deepEqual(w.counts().backends, 5);
});

Deno.test("MapWriter.apply() cleans up after a new service whose first write failed, once it is dropped", () => {
  const f = fakes();
  const w = writer(f);
  f.budget.left = 2; // two backend slots written, the service entry refused
  assert.throws(() => w.apply([entry([A, B, C])], 1), /fake be4: update refused/);
  assert.equal(f.maps.svc4.entries.size, 0);
  assert.equal(f.maps.be4.entries.size, 2);
  assert.equal(w.counts().services4, 0);
  f.budget.left = Infinity;
  w.apply([], 2);
  assert.equal(f.maps.be4.entries.size, 0, "no slot left behind");
});

Deno.test("MapWriter.apply() that fails while deleting goes on from there the next time", () => {
  const f = fakes();
  const w = writer(f);
  w.apply([entry([A, B, C])], 1);
  f.budget.left = 2; // the service entry and one slot deleted, then refused
  assert.throws(() => w.apply([], 2), /fake be4: delete refused/);
  f.budget.left = Infinity;
  w.apply([], 3);
  assert.equal(f.maps.svc4.entries.size + f.maps.be4.entries.size, 0);
  assert.deepEqual(w.counts().services4, 0);
});

Deno.test("MapWriter.readBack() rebuilds what an earlier meshd wrote and deletes slots nothing reads", () => {
  const f = fakes();
  const first = writer(f);
  first.apply([entry([A, B]), entry([C], { port: 7001, redirect: true })], 9);
  first.apply([entry([A]), entry([C], { port: 7001, redirect: true })], 10);
  // A write cut off half-way: slots of an id no service entry names.
  f.maps.be4.entries.set(beKey(7, 0), "7f0042090000" + "0000");
  const w = writer(f);
  w.readBack();
  assert.equal(f.maps.be4.entries.has(beKey(7, 0)), false);
  assert.deepEqual(
    { ...w.counts(), writes: 0, deletes: 0 },
    { services4: 2, services6: 0, redirects: 1, backends: 2, writes: 0, deletes: 0, version: 0 },
  );
  f.log.length = 0;
  // Read back, an entry has no signature: it is written once more, then the diff holds.
  w.apply([entry([A]), entry([C], { port: 7001, redirect: true })], 11);
  w.apply([entry([A]), entry([B], { port: 7002 })], 12);
  assert.equal(f.maps.svc4.entries.size, 2);
  assert.equal(
    f.log.filter((o) => o.op === "update" && o.map === "be4").at(-1)!.key,
    beKey(3, 0),
    "port 7002 gets a new id: ids 1 and 2, read back, are still in use when it is written",
  );
  assert.equal(f.maps.be4.entries.has(beKey(1, 4096)), true);
});

Deno.test("MapWriter meta: layout, version, cgroup and a deadline a grace period ahead, renewed after the first apply", () => {
  const f = fakes();
  let now = NOW;
  const w = writer(f, () => now);
  w.writeMeta(3, 123n);
  const meta = () => {
    const v = new DataView(unhex(f.maps.meta.entries.get("00000000")!).buffer);
    return [
      v.getUint32(0, true),
      v.getUint32(4, true),
      v.getBigUint64(8, true),
      v.getBigUint64(16, true),
      v.getBigUint64(24, true),
    ];
  };
  assert.deepEqual(meta(), [2, 0, 3n, 4242n, 123n]);
  w.renew();
  assert.deepEqual(meta(), [2, 0, 3n, 4242n, 123n], "maps taken over keep their deadline");
  w.apply([], 4);
  assert.deepEqual(meta(), [2, 0, 4n, 4242n, NOW + 1_000_000_000n]);
  now += 400_000_000n;
  assert.equal(w.expiresInMs(), 600);
  w.renew();
  assert.equal(w.expiresInMs(), 1_000);
  now += 5_000_000_000n;
  assert.equal(w.expiresInMs(), 0);
});

Deno.test("MapWriter.apply() balances at most MAX_BACKENDS backends of one port", () => {
  const f = fakes();
  const many = Array.from({ length: 4100 }, (_, i) => `127.0.${66 + (i >> 8)}.${i & 255}`);
  writer(f).apply([entry(many)], 1);
  assert.equal(f.maps.svc4.entries.get(SVC_KEY), svcValue(1, 0, 4096));
  assert.equal(f.maps.be4.entries.size, 4096);
});
