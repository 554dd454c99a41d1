import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { type MeshDnsEntry, MeshZone } from "../dns/mod.ts";
import { ZoneStore } from "../node/mod.ts";
import { DnsFeed, type DnsFeedOptions, RESYNC_BATCH_MS, ZONE_BATCH_MS } from "./dns_feed.ts";

const entry = (name: string, ip: string): MeshDnsEntry => ({
  namespace: "shop",
  name,
  ipv4: [ip],
  ipv6: [],
});

/** Timers the test runs by hand: each task set, with its delay, until run or cancelled. */
class FakeTimers {
  readonly pending: { fn: () => void; ms: number; cancelled: boolean }[] = [];
  schedule = (fn: () => void, ms: number) => {
    const task = { fn, ms, cancelled: false };
    this.pending.push(task);
    return { cancel: () => task.cancelled = true };
  };
  /** The delays of the tasks waiting now. */
  waiting(): number[] {
    return this.pending.filter((t) => !t.cancelled).map((t) => t.ms);
  }
  /** Runs every task waiting now (not those they set). */
  runAll(): void {
    for (const t of this.pending.splice(0)) if (!t.cancelled) t.fn();
  }
}

/** A feed over a zone, with every call it makes recorded. */
function setup(o: { store?: ZoneStore | null; leader?: boolean; zone?: boolean } = {}) {
  const names: MeshDnsEntry[] = [];
  const calls = { onNames: [] as number[], started: 0, resyncs: 0 };
  const lines: Record<string, unknown>[] = [];
  const zone = o.zone === false
    ? null
    : new MeshZone({ domain: "mesh", aliases: [], ttlSeconds: 5 });
  const timers = new FakeTimers();
  const options: DnsFeedOptions = {
    zone,
    store: o.store ?? null,
    names: () => [...names],
    onNames: (e) => calls.onNames.push(e.length),
    startResponder: () => calls.started++,
    isLeader: () => o.leader ?? false,
    resync: () => calls.resyncs++,
    logger: new Logger({ level: "debug", format: "json", write: (l) => lines.push(JSON.parse(l)) }),
    schedule: timers.schedule,
  };
  return { feed: new DnsFeed(options), zone, names, calls, lines, timers };
}

Deno.test("DnsFeed.changed() feeds the first names at once, then a burst of changes once", () => {
  const { feed, zone, names, calls, lines, timers } = setup();
  names.push(entry("web", "198.51.100.1"));
  feed.changed();
  assert.deepEqual(timers.waiting(), [0], "the first names are not held back");
  timers.runAll();
  assert.equal(zone!.lookup("shop", "web")?.ipv4[0], "198.51.100.1");
  assert.deepEqual(calls.onNames, [1]);
  assert.equal(calls.started, 1, "the responder binds once it has names");
  // A burst after the first feed: one rebuild, after ZONE_BATCH_MS, with the last names.
  names.push(entry("cart", "198.51.100.2"));
  for (let i = 0; i < 50; i++) feed.changed();
  assert.deepEqual(timers.waiting(), [ZONE_BATCH_MS]);
  timers.runAll();
  assert.equal(zone!.size, 2);
  assert.deepEqual(calls.onNames, [1, 2]);
  // "DNS names loaded" is said once, for the first names from the API.
  assert.equal(lines.filter((l) => l["msg"] === "DNS names loaded").length, 1);
});

Deno.test("DnsFeed.changed() has the leader resync once for a burst, and a follower never", () => {
  for (const leader of [true, false]) {
    const { feed, calls, timers } = setup({ leader });
    for (let i = 0; i < 20; i++) feed.changed();
    assert.deepEqual(timers.waiting(), leader ? [0, RESYNC_BATCH_MS] : [0]);
    timers.runAll();
    assert.equal(calls.resyncs, leader ? 1 : 0);
    assert.deepEqual(timers.waiting(), []);
  }
});

Deno.test("DnsFeed.stop() cancels both timers, and waits for the names to be saved", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-dns-feed-" });
  try {
    const path = `${dir}/dns.json`;
    const { feed, names, calls, timers } = setup({ leader: true, store: new ZoneStore(path) });
    names.push(entry("web", "198.51.100.1"));
    feed.changed();
    timers.runAll(); // fed and saved in the background, and resynced
    feed.changed();
    assert.equal(timers.waiting().length, 2);
    await feed.stop();
    assert.deepEqual(timers.waiting(), []);
    assert.deepEqual((await new ZoneStore(path).load())?.map((e) => e.name), ["web"]);
    assert.equal(calls.resyncs, 1, "the resync set before stop() never runs");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DnsFeed.restore() serves the saved names before the API has any", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-dns-feed-" });
  try {
    const path = `${dir}/dns.json`;
    const saved = new ZoneStore(path);
    saved.save([entry("web", "198.51.100.1")]);
    await saved.flush();
    const { feed, zone, calls, lines } = setup({ store: new ZoneStore(path) });
    await feed.restore();
    assert.equal(zone!.lookup("shop", "web")?.ipv4[0], "198.51.100.1");
    assert.deepEqual(calls.onNames, [1]);
    assert.equal(calls.started, 1);
    assert.ok(lines.some((l) => l["msg"] === "DNS names restored" && l["names"] === 1));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DnsFeed.restore() binds no responder while there are no names", async () => {
  const { feed, calls } = setup();
  await feed.restore();
  assert.equal(calls.started, 0);
});

Deno.test("DnsFeed does nothing for DNS with no zone (--dns-port 0)", async () => {
  const { feed, calls, timers } = setup({ zone: false });
  await feed.restore();
  feed.changed();
  assert.deepEqual(timers.waiting(), []);
  await feed.stop();
  assert.deepEqual(calls, { onNames: [], started: 0, resyncs: 0 });
});
