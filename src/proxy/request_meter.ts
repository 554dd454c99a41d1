import type { Route } from "./route_table.ts";

/**
 * The metric state of one request (any HTTP version), kept on the request's own state object
 * so that counting it allocates nothing.
 */
export interface Metered {
  /** The route the request was addressed to: its metrics and circuit breaker count it. */
  root: Route;
  /** `performance.now()` when it started. */
  started: number;
  /** The status answered, by the backend or by meshd; 0 when none was. */
  status: number;
  /** The failure was the backend's at the network level (counted by `NetworkErrorRatio()`). */
  network: boolean;
  /**
   * The failure was meshd's own (out of descriptors or buffers): no outcome of the service's,
   * so the circuit breaker records it neither as a failure (a shortage in meshd would open the
   * breakers of healthy services) nor as a success (it would dilute real failures and hold a
   * failing service's breaker closed while meshd is short).
   */
  local: boolean;
  /** The circuit breaker let it through, so its outcome is recorded there. */
  breakerChecked: boolean;
}

/**
 * Counts a request starting: one more request and one more open on its route. Pair each with
 * {@linkcode meterEnd}, in a `finally`.
 *
 * @example
 * ```ts
 * const x = { root, started: 0, status: 0, network: false, local: false, breakerChecked: false };
 * meterStart(x);
 * try {
 *   x.status = await forward(x);
 * } finally {
 *   meterEnd(x);
 * }
 * ```
 */
export function meterStart(x: Metered): void {
  const m = x.root.metrics;
  m.requests.inc();
  m.open.inc();
  x.started = performance.now();
}

/**
 * Counts a request ending: one fewer open, its status class (when it got one), its duration,
 * and its outcome for the circuit breaker when the breaker was checked and the failure, if any,
 * was not meshd's own.
 */
export function meterEnd(x: Metered): void {
  const m = x.root.metrics;
  m.open.dec();
  const ms = performance.now() - x.started;
  if (x.status > 0) m.responses[Math.min(5, Math.floor(x.status / 100))]!.inc();
  m.duration.observe(ms / 1000);
  if (x.breakerChecked && x.status > 0 && !x.local) x.root.breaker!.record(x.status, ms, x.network);
}
