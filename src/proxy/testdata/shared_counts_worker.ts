/**
 * A worker for `shared_counts_test.ts`: counts in one column of shared connection counts.
 *
 * - `race`: takes and gives back connections from random sources for a number of turns, and
 *   keeps in `truth` what it holds (added after a take, taken off before a give-back), so that
 *   a count over a cap in `truth` is a cap the counts let through; answers with its figures.
 *   A connection admitted uncounted (the insert lock held past its wait, as a loaded machine
 *   may do to the racer holding it) counts in all, not for its source: that cap does not
 *   hold for it, by design.
 * - `hold`: takes `n` connections from `source` and answers, holding them until ended.
 *
 * @module
 */
import { ADMIT, SharedCounts } from "../shared_counts.ts";

/** What the test sends. */
export type SharedCountsJob =
  | {
    t: "race";
    buffer: SharedArrayBuffer;
    column: number;
    /** [violations, held over every racer, held per source...]. */
    truth: SharedArrayBuffer;
    sources: string[];
    max: number;
    perSource: number;
    turns: number;
  }
  | { t: "hold"; buffer: SharedArrayBuffer; column: number; source: string; n: number };

// deno-lint-ignore no-explicit-any
const scope = self as any as {
  onmessage: ((e: MessageEvent<SharedCountsJob>) => void) | null;
  postMessage(m: unknown): void;
};

scope.onmessage = (e) => {
  const job = e.data;
  const counts = new SharedCounts(job.buffer, job.column);
  if (job.t === "hold") {
    const admitted = Array.from({ length: job.n }, () => counts.acquire(job.source));
    scope.postMessage({ admitted });
    return;
  }
  const truth = new Int32Array(job.truth);
  // Each held connection: its source's index, negative (-1 - index) when admitted uncounted.
  const held: number[] = [];
  let taken = 0;
  let refused = 0;
  let uncounted = 0;
  const giveBack = (at: number) => {
    const h = held[at]!;
    held[at] = held[held.length - 1]!;
    held.pop();
    const s = h < 0 ? -1 - h : h;
    if (h >= 0) Atomics.sub(truth, 2 + s, 1);
    Atomics.sub(truth, 1, 1);
    counts.release(job.sources[s]!);
  };
  for (let i = 0; i < job.turns; i++) {
    if (held.length > 0 && Math.random() < 0.5) {
      giveBack(Math.floor(Math.random() * held.length));
      continue;
    }
    const s = Math.floor(Math.random() * job.sources.length);
    const r = counts.acquire(job.sources[s]!);
    if (r === ADMIT.overTotal || r === ADMIT.overSource) {
      refused++;
      continue;
    }
    taken++;
    if (Atomics.add(truth, 1, 1) + 1 > job.max) Atomics.add(truth, 0, 1);
    if (r === ADMIT.uncounted) {
      uncounted++;
      held.push(-1 - s);
      continue;
    }
    held.push(s);
    if (Atomics.add(truth, 2 + s, 1) + 1 > job.perSource) Atomics.add(truth, 0, 1);
  }
  while (held.length > 0) giveBack(held.length - 1);
  scope.postMessage({ taken, refused, uncounted, open: counts.open });
};
