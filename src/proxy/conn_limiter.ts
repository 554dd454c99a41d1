import type { CountDrop } from "./proxy_metrics.ts";

/**
 * Counts the client connections open over the HTTP entrypoint and the TCP listeners, in all
 * and per source address, and refuses one over either cap. A refused connection is closed at
 * once by its listener and counted as a drop (`connection_limit` or `source_limit`).
 */
export class ConnectionLimiter {
  readonly #max: number;
  readonly #perSource: number;
  readonly #drop: CountDrop;
  readonly #bySource = new Map<string, number>();
  #open = 0;

  constructor(limits: { max: number; perSource: number }, drop: CountDrop) {
    this.#max = limits.max;
    this.#perSource = limits.perSource;
    this.#drop = drop;
  }

  /** Connections open now. */
  get open(): number {
    return this.#open;
  }

  /** Takes a slot for a connection from `source`; false, and counted, when over a cap. */
  acquire(source: string): boolean {
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

  /** Gives back the slot of a connection from `source`. */
  release(source: string): void {
    const n = this.#bySource.get(source) ?? 0;
    if (n <= 1) this.#bySource.delete(source);
    else this.#bySource.set(source, n - 1);
    this.#open = Math.max(0, this.#open - 1);
  }
}
