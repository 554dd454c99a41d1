import type { BreakerExpr, BreakerMetric } from "../topology/mod.ts";

/** Timing of a {@linkcode CircuitBreaker}; all in milliseconds. */
export interface BreakerTiming {
  /** The rolling window the metrics cover. Default 10 s. */
  windowMs: number;
  /** How long a tripped breaker refuses every request. Default 10 s. */
  fallbackMs: number;
  /** After the fallback, the time over which traffic is let back in, from none to all. Default 10 s. */
  recoveryMs: number;
  /** How often the expression is evaluated. Default 100 ms. */
  checkMs: number;
  /** The expression is not evaluated on fewer requests than this in the window. Default 5. */
  minRequests: number;
}

/** The defaults, which are those of Traefik's circuit breaker except `minRequests`. */
export const DEFAULT_BREAKER_TIMING: BreakerTiming = {
  windowMs: 10_000,
  fallbackMs: 10_000,
  recoveryMs: 10_000,
  checkMs: 100,
  minRequests: 5,
};

/** The breaker's state: closed (`standby`), open (`tripped`), or letting traffic back in. */
export type BreakerState = "standby" | "tripped" | "recovering";

const SLOTS = 10;
// Latency histogram bounds in ms: 0.05 ms growing by 1.25x up to well over a minute.
const LATENCY_BOUNDS: number[] = (() => {
  const out: number[] = [];
  for (let b = 0.05; b < 120_000; b *= 1.25) out.push(b);
  return out;
})();

class Slot {
  start = 0;
  total = 0;
  networkErrors = 0;
  codes = new Map<number, number>();
  latency = new Uint32Array(LATENCY_BOUNDS.length + 1);

  reset(start: number): void {
    this.start = start;
    this.total = 0;
    this.networkErrors = 0;
    this.codes.clear();
    this.latency.fill(0);
  }
}

/**
 * A circuit breaker driven by a Traefik-style expression over a rolling window of the
 * requests a service port served: `NetworkErrorRatio()`, `LatencyAtQuantileMS(q)` and
 * `ResponseCodeRatio(from, to, divFrom, divTo)`.
 *
 * While the expression holds, the breaker trips: every request is refused for `fallbackMs`.
 * Then, over `recoveryMs`, a growing share of requests is let through; if the expression
 * holds again it trips again, otherwise it returns to standby. Metrics are cleared on each
 * trip so a new decision rests on new traffic.
 */
export class CircuitBreaker {
  readonly #slots: Slot[] = Array.from({ length: SLOTS }, () => new Slot());
  readonly #timing: BreakerTiming;
  #state: BreakerState = "standby";
  #since = 0;
  #lastCheck = 0;

  constructor(
    readonly expression: string,
    readonly expr: BreakerExpr,
    timing: Partial<BreakerTiming> = {},
    readonly now: () => number = Date.now,
    readonly random: () => number = Math.random,
  ) {
    this.#timing = { ...DEFAULT_BREAKER_TIMING, ...timing };
  }

  /** The state now (moving out of `tripped` or `recovering` when their time is up). */
  get state(): BreakerState {
    this.#advance(this.now());
    return this.#state;
  }

  /** Whether a request may go on; a refused request should get 503. */
  allow(): boolean {
    const now = this.now();
    this.#advance(now);
    if (now - this.#lastCheck >= this.#timing.checkMs) {
      this.#lastCheck = now;
      if (this.#state !== "tripped" && this.#holds(now)) this.#trip(now);
    }
    switch (this.#state) {
      case "standby":
        return true;
      case "tripped":
        return false;
      case "recovering":
        return this.random() < (now - this.#since) / this.#timing.recoveryMs;
    }
  }

  /**
   * Records the outcome of a request that was let through: its status, time in ms, and whether
   * it failed at the network level (no response from the backend: 502 or 504 made by the proxy).
   */
  record(status: number, latencyMs: number, networkError: boolean): void {
    const slot = this.#slot(this.now());
    slot.total++;
    if (networkError) slot.networkErrors++;
    slot.codes.set(status, (slot.codes.get(status) ?? 0) + 1);
    let i = 0;
    while (i < LATENCY_BOUNDS.length && latencyMs > LATENCY_BOUNDS[i]!) i++;
    slot.latency[i]!++;
  }

  #advance(now: number): void {
    if (this.#state === "tripped" && now - this.#since >= this.#timing.fallbackMs) {
      this.#state = "recovering";
      this.#since += this.#timing.fallbackMs;
    }
    if (this.#state === "recovering" && now - this.#since >= this.#timing.recoveryMs) {
      this.#state = "standby";
      this.#since += this.#timing.recoveryMs;
    }
  }

  #trip(now: number): void {
    this.#state = "tripped";
    this.#since = now;
    for (const s of this.#slots) s.reset(0);
  }

  #slot(now: number): Slot {
    const width = this.#timing.windowMs / SLOTS;
    const start = Math.floor(now / width) * width;
    const slot = this.#slots[Math.floor(now / width) % SLOTS]!;
    if (slot.start !== start) slot.reset(start);
    return slot;
  }

  #live(now: number): Slot[] {
    return this.#slots.filter((s) => s.total > 0 && now - s.start < this.#timing.windowMs);
  }

  #holds(now: number): boolean {
    const live = this.#live(now);
    let total = 0;
    for (const s of live) total += s.total;
    if (total < this.#timing.minRequests) return false;
    return evaluate(this.expr, (m) => metricValue(m, live, total));
  }
}

function evaluate(e: BreakerExpr, value: (m: BreakerMetric) => number): boolean {
  switch (e.op) {
    case "&&":
      return evaluate(e.left, value) && evaluate(e.right, value);
    case "||":
      return evaluate(e.left, value) || evaluate(e.right, value);
  }
  const v = value(e.metric);
  switch (e.op) {
    case ">":
      return v > e.value;
    case ">=":
      return v >= e.value;
    case "<":
      return v < e.value;
    case "<=":
      return v <= e.value;
    case "==":
      return v === e.value;
    case "!=":
      return v !== e.value;
  }
}

function metricValue(m: BreakerMetric, live: Slot[], total: number): number {
  switch (m.fn) {
    case "NetworkErrorRatio": {
      let errors = 0;
      for (const s of live) errors += s.networkErrors;
      return errors / total;
    }
    case "ResponseCodeRatio": {
      // Codes in [from, to) over codes in [divFrom, divTo); 0 when the divisor is empty.
      let num = 0;
      let den = 0;
      for (const s of live) {
        for (const [code, n] of s.codes) {
          if (code >= m.from && code < m.to) num += n;
          if (code >= m.divFrom && code < m.divTo) den += n;
        }
      }
      return den === 0 ? 0 : num / den;
    }
    case "LatencyAtQuantileMS": {
      const want = (m.quantile / 100) * total;
      let seen = 0;
      for (let i = 0; i <= LATENCY_BOUNDS.length; i++) {
        for (const s of live) seen += s.latency[i]!;
        if (seen >= want) return LATENCY_BOUNDS[Math.min(i, LATENCY_BOUNDS.length - 1)]!;
      }
      return LATENCY_BOUNDS[LATENCY_BOUNDS.length - 1]!;
    }
  }
}
