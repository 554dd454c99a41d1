import type { Logger } from "../observability/mod.ts";
import { acceptLoop } from "./accept_loop.ts";
import type { ConnectionLimiter } from "./conn_limiter.ts";
import { type Connect, connectUpstream } from "./connect_upstream.ts";
import type { EndpointPool, EndpointState } from "./endpoint_pool.ts";
import { LogThrottle } from "./log_throttle.ts";
import { admit, type LoopGuard, ProxyFailure, withoutOwn } from "./policy.ts";
import { failureReason } from "./access_log.ts";
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
  /** Whether `address:port` is one of this meshd's own TCP listeners (a forwarding loop). */
  isOwn?: (address: string, port: number) => boolean;
}

const BUFFER_SIZE = 64 * 1024;
/**
 * Failures a client can repeat at will (denied, no endpoint, an endpoint down): one line per
 * kind and service per 10 s; the metrics count each.
 */
const FAIL_LOG = new LogThrottle();
/** Endpoints tried for one connection when connecting fails; nothing was sent, so it is safe. */
const CONNECT_TRIES = 3;

interface Tunnel {
  client: Deno.TcpConn;
  upstream: Deno.TcpConn;
  lastActive: number;
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
  readonly #pending = new Set<Deno.Conn>();
  readonly #sweeper: ReturnType<typeof setInterval>;
  #closed = false;
  #done: Promise<void>;
  readonly #guard: LoopGuard;

  /** Binds the port; throws if it cannot. */
  constructor(options: TcpListenerOptions) {
    this.#opts = options;
    this.#guard = {
      isOwn: options.isOwn,
      drop: options.drop ?? (() => {}),
      logger: options.logger,
    };
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

  /** Connections open now. */
  get open(): number {
    return this.#tunnels.size;
  }

  /** Stops accepting. Open connections go on until they end, unless `abort` is set. */
  async close(abort = false): Promise<void> {
    this.#closed = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    await this.#done;
    if (abort) {
      clearInterval(this.#sweeper);
      for (const c of this.#pending) closeQuietly(c);
      for (const t of this.#tunnels) {
        t.ended ??= "shutdown";
        closeQuietly(t.client);
        closeQuietly(t.upstream);
      }
    } else if (this.#tunnels.size === 0) {
      clearInterval(this.#sweeper);
    }
  }

  #sweep(): void {
    const limit = this.#opts.idleTimeoutMs ?? 3_600_000;
    const now = Date.now();
    for (const t of this.#tunnels) {
      if (now - t.lastActive >= limit) {
        this.#opts.logger.info("tcp connection idle too long; closed", {
          port: this.#opts.port,
          idleMs: now - t.lastActive,
        });
        t.ended ??= "idle_timeout";
        closeQuietly(t.client);
        closeQuietly(t.upstream);
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
        this.#opts.logger.warn("tcp connection failed", {
          port: this.#opts.port,
          error: String(e),
        });
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
    const log = this.#opts.logger;
    const peer = (client.remoteAddr as Deno.NetAddr).hostname;
    if (!root) {
      log.debug("tcp connection to a port with no service", { port: this.#opts.port });
      closeQuietly(client);
      return;
    }
    const m = root.metrics;
    m.requests.inc();
    let upstream: Deno.TcpConn;
    let ep: EndpointState;
    // Decided when the route was built: a route that does not log pays this test alone.
    const alog = root.log;
    const started = performance.now();
    let target = root;
    let tries = 0;
    let lastEp: EndpointState | undefined;
    this.#pending.add(client);
    try {
      // The admit step HTTP takes too (split, access by source address, candidates), then
      // the same loop guard, connect and retry helpers.
      const admitted = admit(root, peer, null);
      target = admitted.target;
      const candidates = withoutOwn(admitted, this.#guard);
      // Nothing is sent before the connection is made: another endpoint is always safe.
      ({ value: upstream, ep } = await withRetries(
        (ep) => (tries++,
          lastEp = ep,
          connectUpstream(ep, {
            connect: this.#opts.connect,
            timeoutMs: this.#opts.connectTimeoutMs,
          }) as Promise<Deno.TcpConn>),
        {
          pool: this.#opts.pool,
          root,
          target,
          candidates,
          attempts: CONNECT_TRIES,
          reuseFailed: false,
          onFailure: (e, ep) => {
            if (FAIL_LOG.allow(`unreachable ${ep.key}`)) {
              log.warn("tcp backend unreachable", {
                service: target.key,
                endpoint: ep.key,
                error: e.message,
              });
            }
          },
        },
      ));
      this.#opts.pool.success(ep);
    } catch (e) {
      closeQuietly(client);
      if (!(e instanceof ProxyFailure)) throw e;
      alog?.write({
        start: Date.now() - (performance.now() - started),
        source: peer,
        sourcePort: (client.remoteAddr as Deno.NetAddr).port,
        protocol: "tcp",
        service: root.key,
        backend: target === root ? undefined : target.key,
        endpoint: lastEp?.key,
        reason: failureReason(e),
        detail: e.message,
        durationMs: performance.now() - started,
        bytesIn: 0,
        bytesOut: 0,
        retries: Math.max(0, tries - 1),
      });
      if (e.status === 403 || e.status === 503) {
        const denied = e.status === 403;
        if (FAIL_LOG.allow(`${e.status} ${root.key}`)) {
          log[denied ? "info" : "warn"](
            denied ? "tcp connection denied" : "tcp connection refused: no ready endpoint",
            { service: root.key, client: peer, reason: e.message },
          );
        }
      }
      return;
    } finally {
      this.#pending.delete(client);
    }
    const tunnel: Tunnel = { client, upstream, lastActive: Date.now() };
    this.#tunnels.add(tunnel);
    m.open.inc();
    const connected = performance.now();
    if (log.enabled("debug")) {
      log.debug("tcp connection", { service: root.key, client: peer, endpoint: ep.key });
    }
    const abort = (): void => {
      closeQuietly(client);
      closeQuietly(upstream);
    };
    let bytesIn = 0;
    let bytesOut = 0;
    const cin = alog === null
      ? m.bytesIn
      : { inc: (n: number) => (m.bytesIn.inc(n), bytesIn += n) };
    const cout = alog === null
      ? m.bytesOut
      : { inc: (n: number) => (m.bytesOut.inc(n), bytesOut += n) };
    await Promise.all([
      pipe(client, upstream, tunnel, cin, abort),
      pipe(upstream, client, tunnel, cout, abort),
    ]);
    abort();
    ep.inflight--;
    m.open.dec();
    const now = performance.now();
    m.duration.observe((now - connected) / 1000);
    alog?.write({
      start: Date.now() - (now - started),
      source: peer,
      sourcePort: (client.remoteAddr as Deno.NetAddr).port,
      protocol: "tcp",
      service: root.key,
      backend: target === root ? undefined : target.key,
      endpoint: ep.key,
      reason: tunnel.ended ?? "eof",
      durationMs: now - started,
      bytesIn,
      bytesOut,
      retries: Math.max(0, tries - 1),
    });
    this.#tunnels.delete(tunnel);
    if (this.#closed && this.#tunnels.size === 0) clearInterval(this.#sweeper);
  }
}

/** Copies `from` to `to` until EOF, then half-closes `to`. On an error, aborts both ways. */
async function pipe(
  from: Deno.TcpConn,
  to: Deno.TcpConn,
  tunnel: Tunnel,
  counter: { inc(n: number): void },
  abort: () => void,
): Promise<void> {
  const buf = new Uint8Array(BUFFER_SIZE);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      let off = 0;
      while (off < n) off += await to.write(buf.subarray(off, n));
      counter.inc(n);
      tunnel.lastActive = Date.now();
    }
    await to.closeWrite();
  } catch {
    tunnel.ended ??= "error";
    abort();
  }
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
