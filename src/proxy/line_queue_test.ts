import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { ATOMIC_WRITE, LineQueue, type LineWriter } from "./line_queue.ts";
import { waitFor } from "../../tests/testenv/process.ts";

const dec = new TextDecoder();

/** A writer that takes at most `max` bytes a call, recording each write. */
function recorder(max = Infinity): LineWriter & { writes: string[] } {
  const writes: string[] = [];
  return {
    writes,
    write(p) {
      const n = Math.min(p.length, max);
      writes.push(dec.decode(p.subarray(0, n)));
      return Promise.resolve(n);
    },
  };
}

/** A writer whose writes never finish, as stdout's to a pipe nobody reads. */
function stuck(): LineWriter & { calls: number } {
  const w = {
    calls: 0,
    write(_p: Uint8Array): Promise<number> {
      w.calls++;
      return new Promise<number>(() => {});
    },
  };
  return w;
}

Deno.test("LineQueue.push() never waits on a stuck writer: lines past the bound are dropped and counted", () => {
  const warnings: string[] = [];
  const logger = new Logger({ level: "warn", format: "json", write: (l) => warnings.push(l) });
  let now = 0;
  let counted = 0;
  const w = stuck();
  const q = new LineQueue({
    writer: w,
    maxBytes: 1000,
    onDrop: () => counted++,
    logger,
    warnEveryMs: 10_000,
    now: () => now,
  });
  const line = "x".repeat(99) + "\n"; // 100 bytes
  for (let i = 0; i < 25; i++) q.push(line); // returns at once: this loop would hang otherwise
  assert.equal(w.calls, 1, "one write in flight at a time");
  assert.equal(q.queuedBytes, 1000);
  assert.equal(q.dropped, 15);
  assert.equal(counted, 15);
  // One warning per interval, with the count since the last one.
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /access log lines dropped/);
  assert.match(warnings[0]!, /"dropped":1\b/);
  now += 9_999;
  q.push(line);
  assert.equal(warnings.length, 1);
  now += 1;
  q.push(line);
  assert.equal(warnings.length, 2);
  assert.match(warnings[1]!, /"dropped":16\b/, "the drops since the last warning");
  assert.equal(q.dropped, 17);
});

Deno.test("LineQueue writes whole lines in order, at most ATOMIC_WRITE bytes a write unless one line is longer", async () => {
  const w = recorder();
  const q = new LineQueue({ writer: w });
  const lines: string[] = [];
  for (let i = 0; i < 300; i++) {
    const l = `${i}:${"a".repeat((i * 37) % 900)}\n`;
    lines.push(l);
    q.push(l);
  }
  const long = `long:${"b".repeat(ATOMIC_WRITE * 2)}\n`;
  lines.push(long);
  q.push(long);
  lines.push("last\n");
  q.push("last\n");
  assert.equal(await q.flush(5_000), true);
  assert.equal(w.writes.join(""), lines.join(""));
  assert.ok(w.writes.length > 1 && w.writes.length < 200, `batched: ${w.writes.length} writes`);
  for (const chunk of w.writes) {
    assert.ok(chunk.endsWith("\n"), "every write ends a line");
    assert.ok(chunk.length <= ATOMIC_WRITE || chunk === long, `${chunk.length} bytes`);
  }
  assert.equal(q.queuedBytes, 0);
});

Deno.test("LineQueue finishes a line the writer took in part before the next one", async () => {
  const w = recorder(7);
  const q = new LineQueue({ writer: w });
  q.push("first line\n");
  q.push("second line\n");
  assert.equal(await q.flush(5_000), true);
  assert.equal(w.writes.join(""), "first line\nsecond line\n");
});

Deno.test("LineQueue.flush() is false at its deadline when the writer is stuck, true when idle", async () => {
  const q = new LineQueue({ writer: stuck() });
  assert.equal(await new LineQueue({ writer: recorder() }).flush(10), true);
  q.push("a\n");
  const t0 = performance.now();
  assert.equal(await q.flush(50), false);
  assert.ok(performance.now() - t0 >= 45);
});

Deno.test("LineQueue drops and counts every line once the writer failed (stdout closed)", async () => {
  let counted = 0;
  const warnings: string[] = [];
  const q = new LineQueue({
    writer: {
      write: () => Promise.reject(new Deno.errors.BrokenPipe("Broken pipe (os error 32)")),
    },
    onDrop: () => counted++,
    logger: new Logger({ level: "warn", format: "json", write: (l) => warnings.push(l) }),
  });
  q.push("a\n");
  q.push("b\n");
  await waitFor("the failed write", () => counted === 2 ? true : undefined);
  q.push("c\n");
  assert.equal(counted, 3);
  assert.equal(q.queuedBytes, 0);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /stdout failed: Broken pipe/);
});
