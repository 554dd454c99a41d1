/**
 * Lets a log line through once per interval per key, so that traffic repeating one fault (a
 * forwarding loop, say) logs it once in a while, not once per request; the metrics count each.
 */
export class LogThrottle {
  readonly #intervalMs: number;
  readonly #last = new Map<string, number>();
  readonly #now: () => number;

  constructor(intervalMs = 10_000, now: () => number = () => performance.now()) {
    this.#intervalMs = intervalMs;
    this.#now = now;
  }

  /** Whether a line for `key` may be logged now; if so, the next one waits an interval. */
  allow(key: string): boolean {
    const now = this.#now();
    const last = this.#last.get(key);
    if (last !== undefined && now - last < this.#intervalMs) return false;
    if (this.#last.size >= 1000) this.#last.clear(); // a bound, should keys be many
    this.#last.set(key, now);
    return true;
  }
}
