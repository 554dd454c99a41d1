import type { Logger } from "../observability/mod.ts";

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

/**
 * An error handler that logs `msg` at error level at most once per `throttle`'s interval, with
 * how many errors came since the last line: for errors that can repeat on every turn of a loop.
 *
 * @example
 * ```ts
 * const reactor = new Reactor({ onError: throttledErrors(logger, "event loop handler failed") });
 * ```
 */
export function throttledErrors(
  log: Logger,
  msg: string,
  throttle: LogThrottle = new LogThrottle(),
): (e: unknown) => void {
  let unlogged = 0;
  return (e) => {
    unlogged++;
    if (!throttle.allow(msg)) return;
    log.error(msg, { error: String(e), failures: unlogged });
    unlogged = 0;
  };
}
