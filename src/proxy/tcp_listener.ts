import type { CounterChild, Logger } from "../observability/mod.ts";
import { acceptLoop } from "./accept_loop.ts";
import type { ConnectionLimiter } from "./conn_limiter.ts";
import { type Connect, connectUpstream, type ConnectUpstreamOptions } from "./connect_upstream.ts";
import type { EndpointPool, EndpointState } from "./endpoint_pool.ts";
import { LogThrottle } from "./log_throttle.ts";
import { admit, type LoopGuard, ProxyFailure, withoutOwn } from "./policy.ts";
import { type AccessEntry, failureReason } from "./access_log.ts";
import { BufferPool, type CopyBuffers } from "./buffer_pool.ts";
import type { CountDrop } from "./proxy_metrics.ts";
import type { Route } from "./route_table.ts";
import { withRetries } from "./with_retries.ts";

/** Options for {@linkcode TcpListener}. */
export interface TcpListenerOptions {
  hostname: string;
  /** Sets SO_REUSEPORT, so a successor meshd can bind the port before this one leaves. */
  reusePort?: boolean;
  port: number;
  /** The route in force for this port, read at each accept so a reload applies at once. */
  route: () => Route | undefined;
  pool: EndpointPool;
  logger: Logger;
  connect?: Connect;
  /** Give up on a backend that has not accepted within this time. Default 5000 ms. */
  connectTimeoutMs?: number;
  /** Close a connection that carried no byte either way for this long. Default 1 hour. */
  idleTimeoutMs?: number;
  /** Caps on client connections, shared with the HTTP entrypoint; none when absent. */
  limiter?: ConnectionLimiter;
  /** Counts what the listener drops to protect meshd. */
  drop?: CountDrop;
  /** Where copy buffers come from and go back to. Default: pools shared by every listener. */
  buffers?: CopyBuffers;
  /** Whether `address:port` is one of this meshd's own TCP listeners (a forwarding loop). */
  isOwn?: (address: string, port: number) => boolean;
  /**
   * Lines this listener logs once per connection, flow or datagram (a failure, an idle close)
   * are logged once per this many ms per kind and service or endpoint, each saying how many
   * were left out before it; the metrics count every one. Default 10 s.
   */
  logIntervalMs?: number;
  /** The clock of that interval, ms (a test seam). Default `performance.now`. */
  logClock?: () => number;
}

/**
 * Copy buffers of every TCP listener: two per open connection, taken back when it ends. Each is
 * 8 KiB while the reads are small (1,000 idle connections hold 16 MiB) and 64 KiB while a read
 * fills the one it has (bulk transfers). Free ones are kept for the next connections: 256 KiB
 * of small ones, 2 MiB of large ones.
 */
const COPY_BUFFERS: CopyBuffers = {
  small: new BufferPool({ size: 8 * 1024, keep: 32 }),
  large: new BufferPool({ size: 64 * 1024, keep: 32 }),
};
/** Endpoints tried for one connection when connecting fails; nothing was sent, so it is safe. */
const CONNECT_TRIES = 3;

interface Tunnel {
  client: Deno.TcpConn;
  upstream: Deno.TcpConn;
  /** `Date.now()` when the idle sweep last saw it carry a byte (or when it opened). */
  lastActive: number;
  /** Reads so far, either way, and the count the idle sweep saw last. */
  reads: number;
  seen: number;
  /** Bytes from the client and to it. */
  bytesIn: number;
  bytesOut: number;
  /** How it ended, when meshd ended it or a copy failed (the access log's reason). */
  ended?: "error" | "idle_timeout" | "shutdown";
}

/**
 * One TCP listener for one service port. Each accepted connection is checked against access
 * control (by its source address alone: a denied one is closed at once, before any backend is
 * dialled), goes through the port's TrafficSplit to a backend service if there is one, and to
 * a ready endpoint chosen by the pool. Bytes are then copied both ways with half-close, and
 * nothing else is done to them.
 */
export class TcpListener {
  readonly #opts: TcpListenerOptions;
  readonly #listener: Deno.TcpListener;
  readonly #tunnels = new Set<Tunnel>();
  /** Connections admitted and dialling their endpoint: open, though not relayed yet. */
  readonly #pending = new Set<Deno.Conn>();
  readonly #sweeper: ReturnType<typeof setInterval>;
  #closed = false;
  /** Closed with `abort`: a connection still dialling is closed when its dial ends. */
  #aborted = false;
  #done: Promise<void>;
  readonly #guard: LoopGuard;
  readonly #connectOptions: ConnectUpstreamOptions;
  /**
   * Lines a client can repeat at will (denied, no endpoint, an endpoint down, a failure, an
   * idle close): one per kind and service or endpoint per interval.
   */
  readonly #log: LogThrottle;

  /** Binds the port; throws if it cannot. */
  constructor(options: TcpListenerOptions) {
    this.#opts = options;
    this.#guard = {
      isOwn: options.isOwn,
      drop: options.drop ?? (() => {}),
      logger: options.logger,
    };
    this.#connectOptions = { connect: options.connect, timeoutMs: options.connectTimeoutMs };
    this.#log = new LogThrottle(options.logIntervalMs, options.logClock);
    this.#listener = Deno.listen({
      hostname: options.hostname,
      port: options.port,
      transport: "tcp",
      ...(options.reusePort ? { reusePort: true } : {}),
    });
    this.#sweeper = setInterval(() => this.#sweep(), 1000);
    this.#sweeper.unref(); // never keeps the process alive on its own
    this.#done = this.#accept();
  }

  /** The bound address. */
  get addr(): Deno.NetAddr {
    return this.#listener.addr;
  }

  /**
   * Client connections open now: relayed, or accepted and still dialling their endpoint. A
   * draining meshd waits for this to reach 0, so one accepted just before the listener closed
   * is served before the process leaves, not closed with it.
   */
  get open(): number {
    return this.#tunnels.size + this.#pending.size;
  }

  /** Stops accepting. Open connections go on until they end, unless `abort` is set. */
  async close(abort = false): Promise<void> {
    this.#closed = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    await this.#done;
    if (abort) {
      this.#aborted = true;
      clearInterval(this.#sweeper);
      for (const c of this.#pending) closeQuietly(c);
      for (const t of this.#tunnels) {
        t.ended ??= "shutdown";
        closeTunnel(t);
      }
    } else {
      this.#idleAfterClose();
    }
  }

  /** Once closed with nothing open, the idle sweep has nothing left to watch. */
  #idleAfterClose(): void {
    if (this.#closed && this.open === 0) clearInterval(this.#sweeper);
  }

  #sweep(): void {
    const limit = this.#opts.idleTimeoutMs ?? 3_600_000;
    const now = Date.now();
    for (const t of this.#tunnels) {
      // A tunnel that read since the last sweep was active within the sweep's period: the copy
      // loops count reads and leave the clock to this timer.
      if (t.reads !== t.seen) {
        t.seen = t.reads;
        t.lastActive = now;
      } else if (now - t.lastActive >= limit) {
        const said = this.#log.take("idle");
        if (said) {
          this.#opts.logger.info("tcp connection idle too long; closed", {
            port: this.#opts.port,
            idleMs: now - t.lastActive,
            ...said,
          });
        }
        t.ended ??= "idle_timeout";
        closeTunnel(t);
      }
    }
  }

  #accept(): Promise<void> {
    const limiter = this.#opts.limiter;
    return acceptLoop(this.#listener, (conn) => {
      const source = (conn.remoteAddr as Deno.NetAddr).hostname;
      if (limiter && !limiter.acquire(source)) {
        closeQuietly(conn);
        return;
      }
      this.#handle(conn).catch((e) => {
        closeQuietly(conn);
        const said = this.#log.take("failed");
        if (said) {
          this.#opts.logger.warn("tcp connection failed", {
            port: this.#opts.port,
            error: String(e),
            ...said,
          });
        }
      }).finally(() => limiter?.release(source));
    }, {
      what: "tcp",
      logger: this.#opts.logger,
      drop: this.#opts.drop ?? (() => {}),
      fields: { port: this.#opts.port },
    });
  }

  async #handle(client: Deno.TcpConn): Promise<void> {
    noDelay(client);
    const root = this.#opts.route();
    if (!root) {
      this.#opts.logger.debug("tcp connection to a port with no service", {
        port: this.#opts.port,
      });
      closeQuietly(client);
      return;
    }
    root.metrics.requests.inc();
    const started = performance.now();
    let dialled: Dialled | null;
    this.#pending.add(client);
    try {
      dialled = await this.#dial(client, root, started);
    } finally {
      this.#pending.delete(client);
    }
    if (dialled && this.#aborted) {
      // Stopped while it dialled: the client is closed already, so the endpoint goes too.
      dialled.ep.inflight--;
      closeQuietly(dialled.upstream);
      root.log?.write({
        ...tcpAccessEntry(client.remoteAddr as Deno.NetAddr, dialled, started, performance.now()),
        endpoint: dialled.ep.key,
        reason: "shutdown",
      });
      return;
    }
    if (dialled) await this.#relay(client, dialled, started);
    else this.#idleAfterClose();
  }

  /**
   * Admits `client` and connects to an endpoint, trying another when one does not accept.
   * Null when it was refused or nothing accepted: then the client is closed, logged and counted.
   */
  async #dial(client: Deno.TcpConn, root: Route, started: number): Promise<Dialled | null> {
    const d = await dialEndpoint(
      { pool: this.#opts.pool, logger: this.#opts.logger, guard: this.#guard, log: this.#log },
      client.remoteAddr as Deno.NetAddr,
      root,
      started,
      (ep) => connectUpstream(ep, this.#connectOptions) as Promise<Deno.TcpConn>,
    );
    if (!d) closeQuietly(client);
    return d;
  }

  /** Copies bytes both ways until both are done, then counts and logs the connection. */
  async #relay(client: Deno.TcpConn, d: Dialled, started: number): Promise<void> {
    const { root, ep, upstream } = d;
    const m = root.metrics;
    const tunnel: Tunnel = {
      client,
      upstream,
      lastActive: Date.now(),
      reads: 0,
      seen: 0,
      bytesIn: 0,
      bytesOut: 0,
    };
    this.#tunnels.add(tunnel);
    m.open.inc();
    const connected = performance.now();
    if (this.#opts.logger.enabled("debug")) {
      this.#opts.logger.debug("tcp connection", {
        service: root.key,
        client: (client.remoteAddr as Deno.NetAddr).hostname,
        endpoint: ep.key,
      });
    }
    const buffers = this.#opts.buffers ?? COPY_BUFFERS;
    await Promise.all([
      pipe(client, upstream, tunnel, m.bytesIn, buffers),
      pipe(upstream, client, tunnel, m.bytesOut, buffers),
    ]);
    closeTunnel(tunnel);
    ep.inflight--;
    m.open.dec();
    const now = performance.now();
    m.duration.observe((now - connected) / 1000);
    root.log?.write({
      ...tcpAccessEntry(client.remoteAddr as Deno.NetAddr, d, started, now),
      endpoint: ep.key,
      reason: tunnel.ended ?? "eof",
      bytesIn: tunnel.bytesIn,
      bytesOut: tunnel.bytesOut,
    });
    this.#tunnels.delete(tunnel);
    this.#idleAfterClose();
  }
}

/** A connection made to an endpoint, and how it was chosen. */
export interface Dialled<U = Deno.TcpConn> {
  root: Route;
  /** The route whose endpoint it is (the root, or a split backend). */
  target: Route;
  ep: EndpointState;
  upstream: U;
  /** Endpoints tried, this one included. */
  tries: number;
}

/** What {@linkcode dialEndpoint} needs of its listener. */
export interface DialContext {
  pool: EndpointPool;
  logger: Logger;
  guard: LoopGuard;
  /** The listener's throttle of lines a client can repeat. */
  log: LogThrottle;
}

/**
 * The admit step HTTP takes too (split, access by source address, candidates), the loop
 * guard, then `connect` to an endpoint, trying another (up to {@linkcode CONNECT_TRIES}) when
 * one does not accept: nothing was sent, so another is always safe. Null when the connection
 * was refused or nothing accepted; then it is logged (throttled) and in the access log, and the
 * caller closes the client. Shared by the TCP listeners on Deno's I/O and on meshd's own loop.
 */
export async function dialEndpoint<U>(
  ctx: DialContext,
  peer: { hostname: string; port: number },
  root: Route,
  started: number,
  connect: (ep: EndpointState) => Promise<U>,
): Promise<Dialled<U> | null> {
  const log = ctx.logger;
  let target = root;
  let tries = 0;
  let lastEp: EndpointState | undefined;
  try {
    const admitted = admit(root, peer.hostname, null);
    target = admitted.target;
    const { value: upstream, ep } = await withRetries(
      (ep) => (tries++, lastEp = ep, connect(ep)),
      {
        pool: ctx.pool,
        root,
        target,
        candidates: withoutOwn(admitted, ctx.guard),
        attempts: CONNECT_TRIES,
        reuseFailed: false,
        onFailure: (e, ep) => {
          const said = ctx.log.take(`unreachable ${ep.key}`);
          if (said) {
            log.warn("tcp backend unreachable", {
              service: target.key,
              endpoint: ep.key,
              error: e.message,
              ...said,
            });
          }
        },
      },
    );
    ctx.pool.success(ep);
    return { root, target, ep, upstream, tries };
  } catch (e) {
    if (!(e instanceof ProxyFailure)) throw e;
    root.log?.write({
      ...tcpAccessEntry(peer, { root, target, tries }, started, performance.now()),
      endpoint: lastEp?.key,
      reason: failureReason(e),
      detail: e.message,
    });
    const said = e.status === 403 || e.status === 503
      ? ctx.log.take(`${e.status} ${root.key}`)
      : null;
    if (said) {
      const denied = e.status === 403;
      log[denied ? "info" : "warn"](
        denied ? "tcp connection denied" : "tcp connection refused: no ready endpoint",
        { service: root.key, client: peer.hostname, reason: e.message, ...said },
      );
    }
    return null;
  }
}

/** The access log fields every line of a TCP connection has. */
export function tcpAccessEntry(
  peer: { hostname: string; port: number },
  d: Pick<Dialled<unknown>, "root" | "target" | "tries">,
  started: number,
  now: number,
): AccessEntry {
  return {
    start: Date.now() - (now - started),
    source: peer.hostname,
    sourcePort: peer.port,
    protocol: "tcp",
    service: d.root.key,
    backend: d.target === d.root ? undefined : d.target.key,
    reason: "eof",
    durationMs: now - started,
    bytesIn: 0,
    bytesOut: 0,
    retries: Math.max(0, d.tries - 1),
  };
}

/**
 * Copies `from` to `to` until EOF, then half-closes `to`. On an error, closes both ways. Counts
 * bytes into `counter` and the tunnel, and marks the tunnel active by counting the read: the
 * idle sweep compares counts, so the loop reads no clock.
 */
async function pipe(
  from: Deno.TcpConn,
  to: Deno.TcpConn,
  tunnel: Tunnel,
  counter: CounterChild,
  buffers: CopyBuffers,
): Promise<void> {
  const inbound = from === tunnel.client;
  const { small, large } = buffers;
  let buf = small.take();
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      let off = 0;
      while (off < n) off += await to.write(buf.subarray(off, n));
      counter.inc(n);
      if (inbound) tunnel.bytesIn += n;
      else tunnel.bytesOut += n;
      tunnel.reads++;
      // Nothing is pending on `buf` here, so it can change hands (see CopyBuffers).
      if (n === buf.length && buf.length < large.size) {
        small.give(buf);
        buf = large.take();
      } else if (n <= small.size && buf.length > small.size) {
        large.give(buf);
        buf = small.take();
      }
    }
    await to.closeWrite();
  } catch {
    tunnel.ended ??= "error";
    closeTunnel(tunnel);
  } finally {
    // No read or write is pending on it: each was awaited, or failed.
    (buf.length > small.size ? large : small).give(buf);
  }
}

function closeTunnel(t: Tunnel): void {
  closeQuietly(t.client);
  closeQuietly(t.upstream);
}

/**
 * Turns Nagle's algorithm off. The proxy sends on each segment as it reads it; with Nagle on,
 * the last short segment of a burst waits for the peer's ACK of the one before, which a peer
 * with delayed ACKs holds for up to 40 ms (the sockmap benchmark measured 47 ms p99 for a
 * 256 KiB answer, 3 ms without). The endpoints' own writes were already coalesced by them.
 */
function noDelay(c: Deno.TcpConn): void {
  try {
    c.setNoDelay(true);
  } catch { /* closed already: the copy loop sees it */ }
}

function closeQuietly(c: Deno.Conn | undefined): void {
  try {
    c?.close();
  } catch { /* already closed */ }
}
