import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { waitFor } from "../_testing.ts";
import { httpBackend, httpServed } from "./_testing.ts";
import { ConnectionLimiter } from "./conn_limiter.ts";
import { NodeProxy } from "./node_proxy.ts";
import type { DropReason } from "./proxy_metrics.ts";
import {
  ADMIT,
  MAX_TABLE_SLOTS,
  MIN_TABLE_SLOTS,
  releaseColumn,
  SharedCounts,
  sharedCountsBuffer,
  sourceKey,
} from "./shared_counts.ts";
import type { SharedCountsJob } from "./testdata/shared_counts_worker.ts";
import type { ZombieJob } from "./testdata/shared_counts_zombie_worker.ts";

const WORKER = new URL("./testdata/shared_counts_worker.ts", import.meta.url);
const ZOMBIE = new URL("./testdata/shared_counts_zombie_worker.ts", import.meta.url);

function key(source: string): number[] {
  const out = new Int32Array(5);
  sourceKey(source, out);
  return [...out];
}

Deno.test("sourceKey() reads IPv4 and IPv6 as Deno writes them, IPv4 as IPv4-mapped IPv6", () => {
  const cases: [string, number[]][] = [
    ["10.1.2.3", [1, 0, 0, 0xffff, 0x0a010203]],
    ["255.255.255.255", [1, 0, 0, 0xffff, -1]],
    ["::ffff:10.1.2.3", [1, 0, 0, 0xffff, 0x0a010203]],
    ["::1", [1, 0, 0, 0, 1]],
    ["::", [1, 0, 0, 0, 0]],
    ["2001:db8::1", [1, 0x20010db8, 0, 0, 1]],
    ["2001:DB8:0:0:0:0:0:1", [1, 0x20010db8, 0, 0, 1]],
    ["fe80::1:2%eth0", [1, 0xfe800000 | 0, 0, 0, 0x00010002]],
    ["1::", [1, 0x00010000, 0, 0, 0]],
    ["1:2:3:4:5:6:7:8", [1, 0x00010002, 0x00030004, 0x00050006, 0x00070008]],
    ["64:ff9b::192.0.2.33", [1, 0x0064ff9b, 0, 0, 0xc0000221 | 0]],
  ];
  for (const [source, want] of cases) assert.deepEqual(key(source), want, source);
  // Anything else is a name, hashed: distinct from every address and from each other.
  for (const bad of ["1.2.3", "1.2.3.256", "1:2:3:4:5:6:7:8:9", "1:::2", "12345::", "web", ""]) {
    assert.equal(key(bad)[0], 2, bad);
  }
  assert.notDeepEqual(key("web"), key("db"));
});

Deno.test("sharedCountsBuffer() sizes the table of sources at twice the total cap, within bounds", () => {
  const slots = (max: number) => {
    const b = sharedCountsBuffer({ max, perSource: 1, columns: 1 });
    return (new Int32Array(b)[4]! + 1);
  };
  assert.equal(slots(1), MIN_TABLE_SLOTS);
  assert.equal(slots(1000), 2048);
  assert.equal(slots(7000), 16384);
  assert.equal(slots(367_001), MAX_TABLE_SLOTS);
  assert.throws(
    () => sharedCountsBuffer({ max: 10, perSource: 1, columns: 1, tableSlots: 12 }),
    /Cannot make a source table of 12 slots: expected a power of two/,
  );
  assert.throws(() => new SharedCounts(new SharedArrayBuffer(64), 0), /not made by/);
  const b = sharedCountsBuffer({ max: 10, perSource: 1, columns: 2 });
  assert.throws(() => new SharedCounts(b, 2), /Cannot count in column 2: the buffer has 2/);
  assert.deepEqual(new SharedCounts(b, 0).caps, { max: 10, perSource: 1 });
});

Deno.test("SharedCounts holds the total and per-source caps over every column, and gives back each connection where it was taken", () => {
  const buffer = sharedCountsBuffer({ max: 5, perSource: 3, columns: 2 });
  const a = new SharedCounts(buffer, 0);
  const b = new SharedCounts(buffer, 1);
  assert.equal(a.acquire("10.0.0.1"), ADMIT.counted);
  assert.equal(b.acquire("10.0.0.1"), ADMIT.counted);
  // The same source written as IPv4-mapped IPv6 (a dual-stack listener) is the same source.
  assert.equal(b.acquire("::ffff:10.0.0.1"), ADMIT.counted);
  assert.equal(a.acquire("10.0.0.1"), ADMIT.overSource);
  assert.equal(b.acquire("10.0.0.1"), ADMIT.overSource);
  assert.equal(a.countOf("10.0.0.1"), 3);
  assert.equal(a.acquire("10.0.0.2"), ADMIT.counted);
  assert.equal(b.acquire("10.0.0.3"), ADMIT.counted);
  assert.equal(a.acquire("10.0.0.4"), ADMIT.overTotal);
  assert.equal(a.openAll, 5);
  assert.deepEqual([a.open, b.open], [2, 3]);

  // A release gives back the slot of the isolate that took it; a release of nothing held
  // (twice, or a source never taken) changes nothing: no count goes below 0.
  b.release("10.0.0.1");
  assert.equal(a.acquire("10.0.0.1"), ADMIT.counted);
  a.release("10.0.0.3");
  a.release("10.0.0.9");
  assert.equal(a.openAll, 5);
  b.release("10.0.0.3");
  b.release("10.0.0.3");
  assert.equal(a.openAll, 4);
  for (const s of ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1"]) a.release(s);
  b.release("::ffff:10.0.0.1");
  assert.equal(a.openAll, 0);
  assert.deepEqual([a.open, b.open], [0, 0]);
  assert.equal(a.countOf("10.0.0.1"), 0);
  // Every slot back: the caps are whole again.
  for (let i = 0; i < 3; i++) assert.equal(b.acquire("10.0.0.2"), ADMIT.counted);
  assert.equal(a.acquire("10.0.0.2"), ADMIT.overSource);
});

Deno.test("SharedCounts admits a source under the total cap alone when the table of sources is full, counts it, and gives nothing back wrongly", () => {
  const buffer = sharedCountsBuffer({ max: 10, perSource: 2, columns: 1, tableSlots: 2 });
  const c = new SharedCounts(buffer, 0);
  assert.equal(c.acquire("10.0.0.1"), ADMIT.counted);
  assert.equal(c.acquire("10.0.0.2"), ADMIT.counted);
  // Both slots hold a live source: a third has none.
  assert.equal(c.acquire("10.0.0.3"), ADMIT.uncounted);
  assert.equal(c.acquire("10.0.0.3"), ADMIT.uncounted);
  assert.equal(c.uncounted, 2);
  assert.equal(c.openAll, 4);
  // The total cap holds still.
  for (let i = 0; i < 6; i++) c.acquire(`10.0.1.${i}`);
  assert.equal(c.openAll, 10);
  assert.equal(c.acquire("10.0.0.4"), ADMIT.overTotal);
  for (let i = 0; i < 6; i++) c.release(`10.0.1.${i}`);
  // An uncounted connection's release takes nothing off another source's count.
  c.release("10.0.0.3");
  assert.equal(c.countOf("10.0.0.1"), 1);
  assert.equal(c.countOf("10.0.0.2"), 1);
  // A source gone frees its slot for the next new one, which is counted again.
  c.release("10.0.0.2");
  assert.equal(c.acquire("10.0.0.5"), ADMIT.counted);
  assert.equal(c.acquire("10.0.0.5"), ADMIT.counted);
  assert.equal(c.acquire("10.0.0.5"), ADMIT.overSource);
  // The source that had a slot before comes back to a table full again.
  assert.equal(c.acquire("10.0.0.2"), ADMIT.uncounted);
  for (const s of ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.5"]) c.release(s);
  assert.equal(c.openAll, 0);
  assert.equal(c.open, 0);
});

Deno.test("SharedCounts does not count a source in the slot it remembers once another isolate took that slot for another source", () => {
  const buffer = sharedCountsBuffer({ max: 10, perSource: 5, columns: 2, tableSlots: 1 });
  const a = new SharedCounts(buffer, 0);
  const b = new SharedCounts(buffer, 1);
  assert.equal(a.acquire("10.0.0.1"), ADMIT.counted);
  a.release("10.0.0.1"); // remembered, its count 0: the slot is free to take
  assert.equal(b.acquire("10.0.0.2"), ADMIT.counted);
  assert.equal(a.acquire("10.0.0.1"), ADMIT.uncounted);
  assert.equal(a.countOf("10.0.0.2"), 1);
  b.release("10.0.0.2");
  a.release("10.0.0.1");
  // And when the slot is free again, the source is counted there anew.
  assert.equal(a.acquire("10.0.0.1"), ADMIT.counted);
  assert.equal(a.countOf("10.0.0.1"), 1);
  assert.equal(a.countOf("10.0.0.2"), 0);
});

Deno.test("ConnectionLimiter with shared counts drops over the caps with the usual reasons, and reports uncounted sources", () => {
  const buffer = sharedCountsBuffer({ max: 3, perSource: 2, columns: 2, tableSlots: 1 });
  const drops: DropReason[] = [];
  const uncounted: number[] = [];
  const limiter = (column: number) =>
    new ConnectionLimiter({
      // Not read: the buffer's caps hold.
      max: 1000,
      perSource: 1000,
      shared: { buffer, column },
      onUncounted: (n) => uncounted.push(n),
    }, (r) => drops.push(r));
  const [a, b] = [limiter(0), limiter(1)];
  assert.equal(a.acquire("10.0.0.1"), true);
  assert.equal(b.acquire("10.0.0.1"), true);
  assert.equal(b.acquire("10.0.0.1"), false);
  assert.equal(a.acquire("10.0.0.2"), true);
  assert.equal(b.acquire("10.0.0.3"), false);
  assert.deepEqual(drops, ["source_limit", "connection_limit"]);
  assert.deepEqual(uncounted, [1]);
  assert.deepEqual([a.open, b.open], [2, 1]);
  a.release("10.0.0.2");
  a.release("10.0.0.1");
  b.release("10.0.0.1");
  assert.deepEqual([a.open, b.open], [0, 0]);
});

Deno.test("releaseColumn() gives back a dead isolate's connections, and the lock it held", () => {
  const buffer = sharedCountsBuffer({ max: 6, perSource: 3, columns: 3 });
  const live = new SharedCounts(buffer, 0);
  const dead = new SharedCounts(buffer, 2);
  for (let i = 0; i < 3; i++) assert.equal(dead.acquire("10.0.0.1"), ADMIT.counted);
  assert.equal(dead.acquire("10.0.0.2"), ADMIT.counted);
  assert.equal(live.acquire("10.0.0.1"), ADMIT.overSource);
  assert.equal(live.acquire("10.0.0.3"), ADMIT.counted);
  // The dead one held the insert lock (header word 6 is the holder's column + 1).
  Atomics.store(new Int32Array(buffer), 6, 3);
  const t0 = performance.now();
  assert.equal(live.acquire("10.0.0.4"), ADMIT.uncounted, "a new source waits, then goes on");
  assert.ok(performance.now() - t0 < 1000);
  assert.equal(releaseColumn(buffer, 2), 4);
  assert.equal(live.openAll, 2);
  assert.equal(live.countOf("10.0.0.1"), 0);
  for (let i = 0; i < 3; i++) assert.equal(live.acquire("10.0.0.1"), ADMIT.counted);
  assert.equal(live.acquire("10.0.0.5"), ADMIT.counted, "the lock is free again");
  assert.equal(live.openAll, 6);
  // Twice, or a column with nothing: nothing more.
  assert.equal(releaseColumn(buffer, 2), 0);
  assert.equal(releaseColumn(buffer, 1), 0);
  assert.equal(live.openAll, 6);
  assert.throws(() => releaseColumn(buffer, 3), /Cannot release column 3: the buffer has 3/);
});

/** Runs `job` in a worker of its own, with its answer; the worker is ended after. */
async function inWorker<T>(
  job: SharedCountsJob,
  end = true,
): Promise<{ answer: T; worker: Worker }> {
  const worker = new Worker(WORKER, { type: "module" });
  try {
    const answer = await new Promise<T>((resolve, reject) => {
      worker.onmessage = (e) => resolve(e.data);
      worker.onerror = (e) => {
        e.preventDefault();
        reject(new Error(e.message));
      };
      worker.postMessage(job);
    });
    return { answer, worker };
  } finally {
    if (end) worker.terminate();
  }
}

for (
  const { max, perSource, slots } of [
    { max: 8, perSource: 2, slots: 16 },
    { max: 4, perSource: 1, slots: 8 },
  ]
) {
  Deno.test(`SharedCounts in two workers racing on one buffer never lets a cap through, and ends at 0 (caps ${max}/${perSource}, ${slots} slots)`, async () => {
    // 64 sources over a small table: sources come and go, so slots are rekeyed all along under
    // the racers' pins, and remembered slots go stale.
    const sources = Array.from({ length: 64 }, (_, i) => i % 2 ? `10.9.0.${i}` : `fd00::${i}`);
    const buffer = sharedCountsBuffer({ max, perSource, columns: 2, tableSlots: slots });
    const truth = new SharedArrayBuffer(4 * (2 + sources.length));
    const job = (column: number): SharedCountsJob => ({
      t: "race",
      buffer,
      column,
      truth,
      sources,
      max,
      perSource,
      turns: 400_000,
    });
    type Figures = { taken: number; refused: number; uncounted: number; open: number };
    const [a, b] = await Promise.all([inWorker<Figures>(job(0)), inWorker<Figures>(job(1))]);
    const t = new Int32Array(truth);
    assert.equal(t[0], 0, "connections held over a cap");
    for (const f of [a.answer, b.answer]) {
      assert.ok(f.taken > 10_000 && f.refused > 1_000, JSON.stringify(f));
      // The table always has room here: a connection goes uncounted only when the insert lock
      // was held past its 20 ms wait (its holder off the CPU on a loaded machine), rarely.
      assert.ok(f.uncounted * 100 <= f.taken, `uncounted: ${JSON.stringify(f)}`);
      assert.equal(f.open, 0);
    }
    const counts = new SharedCounts(buffer, 0);
    assert.equal(counts.openAll, 0);
    for (const s of sources) assert.equal(counts.countOf(s), 0, s);
    // Whole again: one isolate takes every slot.
    for (let i = 0; i < max; i++) assert.equal(counts.acquire(sources[i]!), ADMIT.counted);
  });
}

Deno.test("SharedCounts: the connections of a worker ended while holding them come back with releaseColumn()", async () => {
  const buffer = sharedCountsBuffer({ max: 100, perSource: 4, columns: 2 });
  const { answer, worker } = await inWorker<{ admitted: number[] }>({
    t: "hold",
    buffer,
    column: 1,
    source: "10.0.0.7",
    n: 3,
  }, false);
  worker.terminate();
  assert.deepEqual(answer.admitted, [ADMIT.counted, ADMIT.counted, ADMIT.counted]);
  const here = new SharedCounts(buffer, 0);
  assert.equal(here.acquire("10.0.0.7"), ADMIT.counted);
  assert.equal(here.acquire("10.0.0.7"), ADMIT.overSource, "the dead worker's 3 count still");
  assert.equal(releaseColumn(buffer, 1), 3);
  for (let i = 0; i < 3; i++) assert.equal(here.acquire("10.0.0.7"), ADMIT.counted);
  assert.equal(here.acquire("10.0.0.7"), ADMIT.overSource);
  assert.equal(here.openAll, 4);
});

Deno.test("releaseColumn() ends the counting of the views made on the column before it, not of those made after", () => {
  const buffer = sharedCountsBuffer({ max: 8, perSource: 4, columns: 2 });
  const here = new SharedCounts(buffer, 0);
  const ended = new SharedCounts(buffer, 1);
  assert.equal(ended.acquire("10.0.0.12"), ADMIT.counted);
  assert.equal(releaseColumn(buffer, 1), 1);
  ended.release("10.0.0.12");
  assert.equal(ended.acquire("10.0.0.12"), ADMIT.overTotal, "an ended isolate serves nothing");
  assert.equal(here.openAll, 0);
  // The column's next isolate counts there.
  const next = new SharedCounts(buffer, 1);
  assert.equal(next.acquire("10.0.0.12"), ADMIT.counted);
  assert.equal(here.acquire("10.0.0.12"), ADMIT.counted);
  assert.equal(here.openAll, 2);
  assert.equal(here.countOf("10.0.0.12"), 2);
  assert.equal(releaseColumn(buffer, 1), 1);
  assert.equal(here.openAll, 1);
});

/**
 * Runs a {@linkcode ZombieJob} in column 1, ends its worker as soon as it holds its connections,
 * gives its column back as `ProxyPool#giveBack` does (at once, and again 100 ms later), then
 * waits for the ended worker's task to finish.
 */
async function endedMidTask(
  buffer: SharedArrayBuffer,
  job: Omit<ZombieJob, "buffer" | "column" | "flags">,
): Promise<void> {
  const flags = new SharedArrayBuffer(8);
  const f = new Int32Array(flags);
  const worker = new Worker(ZOMBIE, { type: "module" });
  try {
    worker.postMessage({ ...job, buffer, column: 1, flags } satisfies ZombieJob);
    await waitFor("the worker holds its connections", () => Atomics.load(f, 0) === 1 || undefined);
    worker.terminate();
    releaseColumn(buffer, 1);
    await new Promise((r) => setTimeout(r, 100));
    releaseColumn(buffer, 1);
    await waitFor("the ended worker's task ends", () => Atomics.load(f, 1) === 1 || undefined);
  } finally {
    worker.terminate();
  }
}

Deno.test("SharedCounts: a worker ended in a long task that gives back its connections after its column was released does not take them off twice", async () => {
  const buffer = sharedCountsBuffer({ max: 8, perSource: 4, columns: 2 });
  const here = new SharedCounts(buffer, 0);
  for (let i = 0; i < 2; i++) assert.equal(here.acquire("10.0.0.9"), ADMIT.counted);
  await endedMidTask(buffer, {
    source: "10.0.0.9",
    hold: 2,
    busyMs: 300,
    then: "release",
    next: "",
  });
  // Open now: this isolate's 2 (the ended worker's went with it).
  assert.equal(here.openAll, 2, "connections open over every isolate");
  assert.equal(here.countOf("10.0.0.9"), 2, "connections open from 10.0.0.9");
  const admitted = Array.from({ length: 4 }, () => here.acquire("10.0.0.9"));
  assert.deepEqual(admitted, [ADMIT.counted, ADMIT.counted, ADMIT.overSource, ADMIT.overSource]);
});

Deno.test("SharedCounts: a worker ended in a long task that takes a connection after its column was released does not lock its source out", async () => {
  const buffer = sharedCountsBuffer({ max: 8, perSource: 1, columns: 2 });
  const here = new SharedCounts(buffer, 0);
  await endedMidTask(buffer, {
    source: "10.0.0.10",
    hold: 1,
    busyMs: 300,
    then: "acquire",
    next: "10.0.0.11",
  });
  // Nothing is open: the ended worker's connection (it never got to serve) went with it.
  assert.equal(here.openAll, 0, "connections open over every isolate");
  assert.equal(here.acquire("10.0.0.11"), ADMIT.counted, "10.0.0.11 is served");
});

Deno.test("NodeProxy on shared counts serves a source the full table has no room for, under the total cap, with a warning and a count", async () => {
  const host = "127.0.70.30";
  const web = await httpBackend("w", host);
  // One slot, held by a source of another isolate's (column 1).
  const buffer = sharedCountsBuffer({ max: 10, perSource: 5, columns: 2, tableSlots: 1 });
  const other = new SharedCounts(buffer, 1);
  assert.equal(other.acquire("10.0.0.1"), ADMIT.counted);
  const lines: string[] = [];
  const proxy = new NodeProxy({
    hostname: host,
    httpPort: 0,
    logger: new Logger({ level: "warn", format: "json", write: (l) => lines.push(l) }),
    sharedCaps: { buffer, column: 0 },
  });
  await proxy.start();
  try {
    await proxy.apply(meshConfig([
      { name: "web", ports: [{ port: 80, endpoints: [endpoint(host, web.port)] }] },
    ]));
    const port = Number(proxy.httpAddress.split(":").pop());
    for (let i = 0; i < 2; i++) {
      const c = await Deno.connect({ hostname: host, port });
      try {
        assert.ok(await httpServed(c, "web.default.mesh"), `connection ${i + 1} served`);
      } finally {
        c.close();
      }
    }
    const text = await proxy.registry.render();
    assert.match(text, /^meshd_source_uncounted_total 2$/m);
    const warned = lines.filter((l) => l.includes("the table of sources is full"));
    assert.equal(warned.length, 1, "one line a minute");
    assert.equal(JSON.parse(warned[0]!).uncounted, 1);
    await waitFor("the connections given back", () => other.openAll === 1 || undefined);
  } finally {
    await proxy.stop();
    await web.close();
  }
});
