/**
 * A worker for `shared_counts_test.ts` that goes on counting after it was ended: Deno's
 * `Worker.terminate()` does not interrupt a task that runs, it lets it finish (and the
 * microtasks it queued). The worker takes `hold` connections from `source`, says so (word 0 of
 * `flags`), runs for `busyMs` within that same task, then gives them back (`release`) or takes
 * one from `next` (`acquire`), and says it did (word 1).
 *
 * @module
 */
import { SharedCounts } from "../shared_counts.ts";

/** What the test sends. */
export interface ZombieJob {
  buffer: SharedArrayBuffer;
  column: number;
  flags: SharedArrayBuffer;
  source: string;
  hold: number;
  busyMs: number;
  then: "release" | "acquire";
  next: string;
}

// deno-lint-ignore no-explicit-any
const scope = self as any as { onmessage: ((e: MessageEvent<ZombieJob>) => void) | null };

scope.onmessage = (e) => {
  const job = e.data;
  const flags = new Int32Array(job.flags);
  const counts = new SharedCounts(job.buffer, job.column);
  for (let i = 0; i < job.hold; i++) counts.acquire(job.source);
  Atomics.store(flags, 0, 1);
  const until = performance.now() + job.busyMs;
  while (performance.now() < until) {
    // A long task: a big config compiled, say, so long that the pool ends the worker.
  }
  if (job.then === "release") { for (let i = 0; i < job.hold; i++) counts.release(job.source); }
  else counts.acquire(job.next);
  Atomics.store(flags, 1, 1);
};
