import type { CountDrop } from "./proxy_metrics.ts";
import { ADMIT, SharedCounts } from "./shared_counts.ts";

/** Options for {@linkcode ConnectionLimiter}. */
export interface ConnectionLimits {
  /** `--max-connections`. */
  max: number;
  /** `--max-connections-per-source`. */
  perSource: number;
  /**
   * Counts shared with the other isolates of this process (`--workers`, `--l4-worker`): the
   * caps are then the buffer's, over every isolate, and `max` and `perSource` are not read.
   * This isolate counts in `column` alone (see {@linkcode SharedCounts}).
   */
  shared?: { buffer: SharedArrayBuffer; column: number };
  /**
   * Called when a connection is admitted with no per-source count (shared counts only: the
   * table of sources was full), with how many were over every isolate since the start.
   */
  onUncounted?: (total: number) => void;
}

/**
 * Counts the client connections open over the HTTP entrypoint and the TCP listeners, in all
 * and per source address, and refuses one over either cap. A refused connection is closed at
 * once by its listener and counted as a drop (`connection_limit` or `source_limit`).
 *
 * Alone in its isolate it counts in a Map of its own; with `shared` it counts in memory shared
 * by every isolate of the process, so the caps hold for the process.
 */
export class ConnectionLimiter {
  readonly #max: number;
  readonly #perSource: number;
  readonly #drop: CountDrop;
  readonly #bySource = new Map<string, number>();
  readonly #shared: SharedCounts | null;
  readonly #onUncounted: ((total: number) => void) | undefined;
  #open = 0;

  constructor(limits: ConnectionLimits, drop: CountDrop) {
    this.#shared = limits.shared
      ? new SharedCounts(limits.shared.buffer, limits.shared.column)
      : null;
    this.#max = limits.max;
    this.#perSource = limits.perSource;
    this.#drop = drop;
    this.#onUncounted = limits.onUncounted;
  }

  /** Connections open now in this isolate. */
  get open(): number {
    return this.#shared === null ? this.#open : this.#shared.open;
  }

  /** Takes a slot for a connection from `source`; false, and counted, when over a cap. */
  acquire(source: string): boolean {
    if (this.#shared !== null) return this.#acquireShared(this.#shared, source);
    if (this.#open >= this.#max) {
      this.#drop("connection_limit");
      return false;
    }
    const n = this.#bySource.get(source) ?? 0;
    if (n >= this.#perSource) {
      this.#drop("source_limit");
      return false;
    }
    this.#bySource.set(source, n + 1);
    this.#open++;
    return true;
  }

  #acquireShared(shared: SharedCounts, source: string): boolean {
    switch (shared.acquire(source)) {
      case ADMIT.counted:
        return true;
      case ADMIT.overTotal:
        this.#drop("connection_limit");
        return false;
      case ADMIT.overSource:
        this.#drop("source_limit");
        return false;
      default:
        this.#onUncounted?.(shared.uncounted);
        return true;
    }
  }

  /** Gives back the slot of a connection from `source`. */
  release(source: string): void {
    if (this.#shared !== null) return this.#shared.release(source);
    const n = this.#bySource.get(source) ?? 0;
    if (n <= 1) this.#bySource.delete(source);
    else this.#bySource.set(source, n - 1);
    this.#open = Math.max(0, this.#open - 1);
  }
}
