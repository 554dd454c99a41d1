import type { RequestInfo } from "./access.ts";
import { matches } from "./access.ts";
import type { EndpointState } from "./endpoint_pool.ts";
import type { DenyReason } from "./proxy_metrics.ts";
import { candidatesFor, type Route } from "./route_table.ts";

/**
 * The reason codes meshd's own answers carry in `x-meshd-error`, so a client or a log query can
 * tell them from the backend's: one per cause, whatever the HTTP version.
 */
export type ErrorCode =
  | "bad-request"
  | "unknown-host"
  | "acl-denied"
  | "rate-limited"
  | "no-endpoint"
  | "circuit-open"
  | "endpoint-failed"
  | "timeout"
  | "loop";

/** The code a status means when the failure does not name one (503 is `no-endpoint`). */
function codeFor(status: number): ErrorCode {
  switch (status) {
    case 400:
    case 431:
      return "bad-request";
    case 403:
      return "acl-denied";
    case 404:
      return "unknown-host";
    case 429:
      return "rate-limited";
    case 503:
      return "no-endpoint";
    case 504:
      return "timeout";
    case 508:
      return "loop";
    default:
      return "endpoint-failed";
  }
}

/** A response the proxy makes itself, with a body that says which service and why. */
export class ProxyFailure extends Error {
  /** What `x-meshd-error` says. */
  readonly code: ErrorCode;

  constructor(
    readonly status: number,
    message: string,
    readonly extraHeaders: Record<string, string> = {},
    /** The backend failed at the network level (counted by `NetworkErrorRatio()`). */
    readonly network = false,
    code?: ErrorCode,
  ) {
    super(message);
    this.name = "ProxyFailure";
    this.code = code ?? codeFor(status);
  }
}

/** Where an admitted HTTP request goes. */
export interface Admission {
  /** The route whose endpoints serve it: the root, or the split backend chosen. */
  target: Route;
  /** The endpoints of `target` the source may use; never empty. */
  candidates: EndpointState[];
}

/**
 * The traffic policy of one HTTP request (any HTTP version) addressed to `root`, in order:
 * rate limit (429), TrafficSplit (one hop: a backend's own route), access control on the
 * route chosen (403 naming the missing rule), ready endpoints (503). Throws a
 * {@linkcode ProxyFailure} for each refusal and counts it.
 *
 * The circuit breaker is checked by the caller, which also records the outcome.
 */
export function admit(root: Route, peer: string, info: RequestInfo): Admission {
  const deny = (reason: DenyReason, f: ProxyFailure): never => {
    root.metrics.denied(reason).inc();
    throw f;
  };
  if (root.rateLimit && !root.rateLimit.take()) {
    const wait = Math.max(1, Math.ceil(root.rateLimit.waitMs() / 1000));
    deny(
      "rate_limit",
      new ProxyFailure(
        429,
        `Service "${root.key}" is over its rate limit of ${root.rateLimit.rate} requests a second`,
        { "retry-after": String(wait) },
      ),
    );
  }
  // TrafficSplit in one hop: the backend's own endpoints, never back through the mesh.
  let target = root;
  const split = root.split;
  if (split && (split.matches.length === 0 || split.matches.some((x) => matches(x, info)))) {
    target = split.backends.next() ?? root;
  }
  // Through a split, the source needs access to the backend chosen.
  const decision = target.access.checkHttp(peer, info);
  if (!decision.allowed) deny("acl", new ProxyFailure(403, `Access denied: ${decision.reason}`));
  const candidates = candidatesFor(target, decision.allowed ? decision.destinations : new Set());
  if (candidates.length === 0) {
    const what = target === root
      ? `Service "${root.key}"`
      : `Backend "${target.key}" of split "${split!.name}"`;
    deny(
      "no_endpoint",
      new ProxyFailure(
        503,
        target.access.open || target.readyStates.length === 0
          ? `${what} has no ready endpoint`
          : `${what} has no ready endpoint the source may reach`,
      ),
    );
  }
  return { target, candidates };
}

/** Refuses a request while `root`'s circuit breaker is open; true when one was checked. */
export function checkBreaker(root: Route): boolean {
  const breaker = root.breaker;
  if (!breaker) return false;
  if (!breaker.allow()) {
    root.metrics.denied("circuit_open").inc();
    throw new ProxyFailure(
      503,
      `Service "${root.key}" is failing; its circuit breaker is open (${breaker.expression})`,
      {},
      false,
      "circuit-open",
    );
  }
  return true;
}
