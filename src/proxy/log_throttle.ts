import type { Logger } from "../observability/mod.ts";

/** What a line a {@linkcode LogThrottle} let through adds to its fields. */
export interface Suppressed {
  /** Lines for the same key left out since the last one logged; absent when none were. */
  suppressed?: number;
  /**
   * Lines left out for other keys that the throttle has since forgotten (it keeps 1,000 keys
   * at most), told once, with whichever line comes next: so none is hidden without a count.
   */
  suppressedOther?: number;
}

/** Keys a {@linkcode LogThrottle} remembers at most. */
const MAX_KEYS = 1000;

/**
 * Lets a log line through once per interval per key, so that traffic repeating one fault (a
 * forwarding loop, a backend down, a flood of connections that fail) logs it once in a while,
 * not once per request, connection or datagram; the metrics count each. The line let through
 * says how many were left out before it ({@linkcode Suppressed}).
 *
 * @example
 * ```ts
 * const said = throttle.take(`unreachable ${ep.key}`);
 * if (said) log.warn("tcp backend unreachable", { endpoint: ep.key, ...said });
 * ```
 */
export class LogThrottle {
  readonly #intervalMs: number;
  readonly #keys = new Map<string, { last: number; suppressed: number }>();
  readonly #now: () => number;
  #forgotten = 0;

  constructor(intervalMs = 10_000, now: () => number = () => performance.now()) {
    this.#intervalMs = intervalMs;
    this.#now = now;
  }

  /**
   * For a line for `key`: null when it is to be left out now (it is counted), else the fields
   * to log it with (empty when nothing was left out). The next line for `key` waits an interval.
   */
  take(key: string): Suppressed | null {
    const now = this.#now();
    const k = this.#keys.get(key);
    if (k !== undefined && now - k.last < this.#intervalMs) {
      k.suppressed++;
      return null;
    }
    if (k === undefined && this.#keys.size >= MAX_KEYS) {
      // A bound, should keys be many: the oldest goes, its count kept for the next line.
      const [oldest, o] = this.#keys.entries().next().value!;
      this.#forgotten += o.suppressed;
      this.#keys.delete(oldest);
    }
    const said: Suppressed = {};
    if (k !== undefined && k.suppressed > 0) said.suppressed = k.suppressed;
    if (this.#forgotten > 0) {
      said.suppressedOther = this.#forgotten;
      this.#forgotten = 0;
    }
    if (k !== undefined) {
      k.last = now;
      k.suppressed = 0;
      return said;
    }
    this.#keys.set(key, { last: now, suppressed: 0 });
    return said;
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
    if (throttle.take(msg) === null) return;
    log.error(msg, { error: String(e), failures: unlogged });
    unlogged = 0;
  };
}
