import type { EndpointState } from "./endpoint_pool.ts";
import { ProxyFailure } from "./policy.ts";
import type { Route } from "./route_table.ts";

/**
 * A backend that sent no byte of a response body under way for `--stream-idle-timeout`: the
 * response was cut, its connections closed (or its HTTP/2 stream reset).
 */
export class StreamIdleTimeout extends Error {
  /** `timeoutMs`: the flag's value; `status`: the status the client was sent before the cut. */
  constructor(readonly timeoutMs: number, readonly status: number) {
    super(`the backend sent nothing of the response body for ${timeoutMs} ms`);
    this.name = "StreamIdleTimeout";
  }
}

/** Options for {@linkcode UpstreamError}. */
export interface UpstreamErrorOptions {
  /** Whether the request had been sent: a request not sent may go to another endpoint. */
  requestSent: boolean;
  /** Set when no response came within this many ms (the answer is 504, not 502). */
  timeoutMs?: number;
  /**
   * A pooled connection the backend had closed while it sat idle: no fault of the backend,
   * and the request may be sent again once, at no cost to the retry budget.
   */
  stale?: boolean;
  /**
   * The failure was this process's own: no descriptor or buffer for a socket (EMFILE, ENFILE,
   * ENOBUFS, ENOMEM). No fault of the endpoint, which is not charged for it.
   */
  local?: boolean;
  cause?: unknown;
}

/**
 * Whether `e` (Deno's error, whose message ends "(os error N)", or the engine's, "(errno N)")
 * says this process could not make a socket: out of descriptors (EMFILE 24, ENFILE 23), of
 * buffer space (ENOBUFS 105) or of memory (ENOMEM 12).
 */
export function isLocalSocketError(e: unknown): boolean {
  return /\((?:os error|errno) (?:12|23|24|105)\)/.test(String((e as Error)?.message ?? e));
}

/**
 * A backend that failed before a response head (HTTP/1) or response headers (HTTP/2) came, or
 * a TCP connect that failed: another endpoint may be tried. Shared by every protocol, so one
 * retry helper ({@linkcode withRetries}) and one mapping to 502 or 504
 * ({@linkcode upstreamFailure}) serve them all.
 */
export class UpstreamError extends Error {
  readonly requestSent: boolean;
  readonly timeoutMs: number | undefined;
  readonly stale: boolean;
  readonly local: boolean;

  constructor(message: string, options: UpstreamErrorOptions) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "UpstreamError";
    this.requestSent = options.requestSent;
    this.timeoutMs = options.timeoutMs;
    this.stale = options.stale ?? false;
    this.local = options.local ?? false;
  }

  /** Whether the backend sent no response in time. */
  get timedOut(): boolean {
    return this.timeoutMs !== undefined;
  }
}

/**
 * The answer the client gets for the last failure of endpoint `ep` of `target`: 504 when it
 * sent no response in time, else 502. Both count as network errors for the circuit breaker,
 * except a failure of this process's own (`local`), which the breaker does not record at all.
 */
export function upstreamFailure(
  e: UpstreamError,
  where: { ep: EndpointState; target: Route },
): ProxyFailure {
  const { ep, target } = where;
  if (e.timeoutMs !== undefined) {
    return new ProxyFailure(
      504,
      `Endpoint ${ep.key} of service "${target.key}" sent no response within ${e.timeoutMs} ms`,
      {},
      true,
    );
  }
  return new ProxyFailure(
    502,
    `Endpoint ${ep.key} of service "${target.key}" failed: ${e.message}`,
    {},
    !e.local,
    undefined,
    e.local,
  );
}
