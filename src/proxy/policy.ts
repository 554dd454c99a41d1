import type { RequestInfo } from "./access.ts";
import { matches } from "./access.ts";
import type { EndpointState } from "./endpoint_pool.ts";
import type { DenyReason } from "./proxy_metrics.ts";
import { candidatesFor, type Route } from "./route_table.ts";

/** A response the proxy makes itself, with a body that says which service and why. */
export class ProxyFailure extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extraHeaders: Record<string, string> = {},
    /** The backend failed at the network level (counted by `NetworkErrorRatio()`). */
    readonly network = false,
  ) {
    super(message);
    this.name = "ProxyFailure";
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
    );
  }
  return true;
}
