import { MAX_RETRY_ATTEMPTS } from "../topology/mod.ts";
import type { EndpointPool, EndpointState } from "./endpoint_pool.ts";
import { ProxyFailure } from "./policy.ts";
import type { RetryBudget } from "./retry_budget.ts";
import type { Route } from "./route_table.ts";
import { UpstreamError, upstreamFailure } from "./upstream_error.ts";

/** The client went away while its request was being retried: nothing is left to answer. */
export class ClientGone extends Error {
  constructor() {
    super("client went away");
    this.name = "ClientGone";
  }
}

/** Options for {@linkcode withRetries}. */
export interface RetryOptions {
  pool: EndpointPool;
  /** The route whose metrics count the retries. */
  root: Route;
  /** The route whose endpoints serve the request; its name is in the failure answered. */
  target: Route;
  /** The endpoints the request may go to; never empty. */
  candidates: EndpointState[];
  /**
   * Tries in all, the first included. Default: the target's retry attempts plus one, held to
   * {@linkcode MAX_RETRY_ATTEMPTS} retries (a config from an older leader too).
   */
  attempts?: number;
  /** The target's retry budget; `request()` is called once here. None: retries are free. */
  budget?: RetryBudget;
  /** Told when the budget refused a retry (`meshd_dropped_total{reason="retry_budget"}`). */
  onBudgetSpent?: () => void;
  /** Whether a failure after the request was sent may be retried (an idempotent request). */
  retrySent?: boolean;
  /** Whether the client left; no retry is made for nobody ({@linkcode ClientGone}). */
  gone?: () => boolean;
  /**
   * Whether an endpoint that failed this request may be tried again once every candidate has
   * failed. Default true; false ends the tries there instead.
   */
  reuseFailed?: boolean;
  /** Told of each endpoint failure, before the next try. */
  onFailure?: (e: UpstreamError, ep: EndpointState) => void;
}

/**
 * Runs `exchange` on an endpoint picked from the candidates, and on another one after an
 * {@linkcode UpstreamError} while a retry is allowed: the request was not sent (or may be sent
 * again), tries are left, the client is still there, and the retry budget has room. Endpoints
 * that failed this request are avoided while others remain. A stale pooled connection (the
 * error says `stale`) on the first try is retried at once, free and not held against the
 * endpoint. The last failure becomes a 502 or 504 ({@linkcode upstreamFailure}); no candidate
 * ready is a 503. Errors other than `UpstreamError` pass through.
 *
 * Each try counts one request in flight on its endpoint (which the pool's picks weigh). A
 * failed try gives it back here; after success the caller owns it and decrements
 * `ep.inflight` once the exchange is over, since a body may still stream after `exchange`.
 *
 * @example
 * ```ts
 * const { value, ep } = await withRetries((ep) => send(ep), { pool, root, target, candidates });
 * try { await finish(value); } finally { ep.inflight--; }
 * ```
 */
export async function withRetries<T>(
  exchange: (ep: EndpointState, attempt: number) => Promise<T>,
  options: RetryOptions,
): Promise<{ value: T; ep: EndpointState }> {
  const { pool, candidates, target } = options;
  const attempts = options.attempts ??
    1 + Math.min(target.service.retryAttempts, MAX_RETRY_ATTEMPTS);
  options.budget?.request();
  // The endpoints that failed this request, made at its first failure.
  let tried: Set<EndpointState> | undefined;
  let last: { e: UpstreamError; ep: EndpointState } | undefined;
  for (let attempt = 0;; attempt++) {
    const fresh = tried ? candidates.filter((c) => !tried!.has(c)) : candidates;
    const ep = pool.pick(fresh.length > 0 || options.reuseFailed === false ? fresh : candidates);
    if (!ep) {
      if (last) throw upstreamFailure(last.e, { ep: last.ep, target });
      throw new ProxyFailure(503, `Service "${target.key}" has no ready endpoint`);
    }
    ep.inflight++;
    try {
      return { value: await exchange(ep, attempt), ep };
    } catch (e) {
      ep.inflight--;
      if (!(e instanceof UpstreamError)) throw e;
      (tried ??= new Set()).add(ep);
      if (e.stale && attempt === 0) continue;
      // This process could not make a socket: no endpoint is at fault, and none would do
      // better now. The endpoint is not charged (outlier detection would eject a healthy one).
      if (e.local) throw upstreamFailure(e, { ep, target });
      // An ejection is logged once, by the pool's owner (NodeProxy), for every protocol.
      pool.failure(ep);
      options.onFailure?.(e, ep);
      last = { e, ep };
      if ((!e.requestSent || options.retrySent) && attempt + 1 < attempts) {
        if (options.gone?.()) throw new ClientGone();
        if (!options.budget || options.budget.retry()) {
          options.root.metrics.retries.inc();
          continue;
        }
        options.onBudgetSpent?.();
      }
      throw upstreamFailure(e, { ep, target });
    }
  }
}
