import type { RequestInfo } from "./access.ts";
import { matches } from "./access.ts";
import type { EndpointState } from "./endpoint_pool.ts";
import type { CountDrop, DenyReason } from "./proxy_metrics.ts";
import type { Logger } from "../observability/mod.ts";
import { LogThrottle } from "./log_throttle.ts";
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
    case 408:
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
    /**
     * The failure was meshd's own (no descriptor or buffer for a socket): the circuit breaker
     * records it neither as a success nor as a failure of the service.
     */
    readonly local = false,
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
 * The one admit step of every protocol, for a request or connection addressed to `root`, in
 * order: rate limit (429; HTTP only), TrafficSplit (one hop: a backend's own route; an HTTP
 * split's match rules apply to HTTP only), access control on the route chosen (403 naming the
 * missing rule), ready endpoints the source may use (503). Throws a {@linkcode ProxyFailure}
 * for each refusal and counts it on `root`'s metrics. `info` is the HTTP request (any
 * version); `null` admits a TCP connection, checked by its source address alone.
 *
 * The circuit breaker is checked by the caller, which also records the outcome.
 *
 * @example
 * ```ts
 * const { target, candidates } = admit(root, "10.0.0.7", null); // a TCP connection
 * ```
 */
export function admit(root: Route, peer: string, info: RequestInfo | null): Admission {
  const deny = (reason: DenyReason, f: ProxyFailure): never => {
    root.metrics.denied(reason).inc();
    throw f;
  };
  if (info !== null && root.rateLimit && !root.rateLimit.take()) {
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
  if (
    split &&
    (info === null || split.matches.length === 0 || split.matches.some((x) => matches(x, info)))
  ) {
    target = split.backends.next() ?? root;
  }
  // Through a split, the source needs access to the backend chosen.
  const decision = info === null
    ? target.access.checkL4(peer)
    : target.access.checkHttp(peer, info);
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

/** What {@linkcode withoutOwn} needs to find and report a forwarding loop. */
export interface LoopGuard {
  /** Whether `address:port` is one of this meshd's own listeners. */
  isOwn?: (address: string, port: number) => boolean;
  drop: CountDrop;
  logger: Logger;
}

/**
 * One loop warning per service per 10 s, saying how many were left out before it;
 * `meshd_dropped_total{reason="loop"}` counts each.
 */
const LOOP_LOG = new LogThrottle();

/**
 * The candidates that are not this meshd's own listeners. An endpoint that is one would send
 * each request or connection around again, each pass opening two more connections, until the
 * process runs out of file descriptors: when every candidate is one, this throws a 508.
 */
export function withoutOwn(
  where: { target: Route; candidates: EndpointState[] },
  guard: LoopGuard,
): EndpointState[] {
  const { target, candidates } = where;
  const isOwn = guard.isOwn;
  if (!isOwn || !candidates.some((c) => isOwn(c.address, c.port))) return candidates;
  const rest = candidates.filter((c) => !isOwn(c.address, c.port));
  if (rest.length > 0) return rest;
  guard.drop("loop");
  const said = LOOP_LOG.take(target.key);
  if (said) {
    guard.logger.warn("forwarding loop refused: the endpoints are meshd's own listeners", {
      service: target.key,
      endpoint: candidates[0]!.key,
      ...said,
    });
  }
  throw new ProxyFailure(
    508,
    `Forwarding loop: endpoint ${candidates[0]!.key} of service "${target.key}" is this ` +
      "meshd's own listener",
  );
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
