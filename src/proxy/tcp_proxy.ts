import type { Logger } from "../observability/mod.ts";
import { acceptLoop } from "./accept_loop.ts";
import type { ConnectionLimiter } from "./conn_limiter.ts";
import type { EndpointPool, EndpointState } from "./endpoint_pool.ts";
import { LogThrottle } from "./log_throttle.ts";
import type { CountDrop } from "./proxy_metrics.ts";
import { candidatesFor, type Route } from "./route_table.ts";

/** Opens a connection to a backend; the seam tests and later transports plug into. */
export type Connect = (address: string, port: number) => Promise<Deno.TcpConn>;

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
/** One loop warning per service per 10 s; `meshd_dropped_total{reason="loop"}` counts each. */
const LOOP_LOG = new LogThrottle();
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

  /** Binds the port; throws if it cannot. */
  constructor(options: TcpListenerOptions) {
    this.#opts = options;
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
    const target = root.split?.backends.next() ?? root;
    const decision = target.access.checkL4(peer);
    if (!decision.allowed) {
      m.denied("acl").inc();
      if (FAIL_LOG.allow(`denied ${root.key}`)) {
        log.info("tcp connection denied", {
          service: root.key,
          client: peer,
          reason: decision.reason,
        });
      }
      closeQuietly(client);
      return;
    }
    let candidates = candidatesFor(target, decision.destinations);
    const isOwn = this.#opts.isOwn;
    if (isOwn && candidates.some((c) => isOwn(c.address, c.port))) {
      // An endpoint that is meshd's own listener would loop the connection until no file
      // descriptor is left.
      const own = candidates.find((c) => isOwn(c.address, c.port))!;
      candidates = candidates.filter((c) => !isOwn(c.address, c.port));
      if (candidates.length === 0) {
        this.#opts.drop?.("loop");
        if (LOOP_LOG.allow(target.key)) {
          log.warn("tcp forwarding loop refused: the endpoints are meshd's own listeners", {
            service: target.key,
            endpoint: own.key,
          });
        }
        closeQuietly(client);
        return;
      }
    }
    this.#pending.add(client);
    let upstream: Deno.TcpConn | undefined;
    let ep: EndpointState | null = null;
    const tried = new Set<EndpointState>();
    for (let i = 0; i < CONNECT_TRIES && upstream === undefined; i++) {
      const fresh = candidates.filter((c) => !tried.has(c));
      ep = this.#opts.pool.pick(fresh);
      if (!ep) break;
      tried.add(ep);
      try {
        upstream = await withTimeout(
          (this.#opts.connect ?? defaultConnect)(ep.address, ep.port),
          this.#opts.connectTimeoutMs ?? 5000,
        );
        this.#opts.pool.success(ep);
        noDelay(upstream);
      } catch (e) {
        if (FAIL_LOG.allow(`unreachable ${ep.key}`)) {
          log.warn("tcp backend unreachable", {
            service: target.key,
            endpoint: ep.key,
            error: String(e),
          });
        }
        this.#opts.pool.failure(ep);
      }
    }
    this.#pending.delete(client);
    if (!upstream || !ep) {
      if (tried.size === 0) {
        m.denied("no_endpoint").inc();
        if (FAIL_LOG.allow(`none ${target.key}`)) {
          log.warn("tcp connection refused: no ready endpoint", {
            service: target.key,
            client: peer,
          });
        }
      }
      closeQuietly(client);
      return;
    }
    const tunnel: Tunnel = { client, upstream, lastActive: Date.now() };
    this.#tunnels.add(tunnel);
    ep.inflight++;
    m.open.inc();
    const started = performance.now();
    if (log.enabled("debug")) {
      log.debug("tcp connection", { service: root.key, client: peer, endpoint: ep.key });
    }
    const abort = (): void => {
      closeQuietly(client);
      closeQuietly(upstream);
    };
    await Promise.all([
      pipe(client, upstream, tunnel, (n) => m.bytesIn.inc(n), abort),
      pipe(upstream, client, tunnel, (n) => m.bytesOut.inc(n), abort),
    ]);
    abort();
    ep.inflight--;
    m.open.dec();
    m.duration.observe((performance.now() - started) / 1000);
    this.#tunnels.delete(tunnel);
    if (this.#closed && this.#tunnels.size === 0) clearInterval(this.#sweeper);
  }
}

const defaultConnect: Connect = (hostname, port) =>
  Deno.connect({ hostname, port, transport: "tcp" });

/** Copies `from` to `to` until EOF, then half-closes `to`. On an error, aborts both ways. */
async function pipe(
  from: Deno.TcpConn,
  to: Deno.TcpConn,
  tunnel: Tunnel,
  count: (n: number) => void,
  abort: () => void,
): Promise<void> {
  const buf = new Uint8Array(BUFFER_SIZE);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      let off = 0;
      while (off < n) off += await to.write(buf.subarray(off, n));
      count(n);
      tunnel.lastActive = Date.now();
    }
    await to.closeWrite();
  } catch {
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

function withTimeout(p: Promise<Deno.TcpConn>, ms: number): Promise<Deno.TcpConn> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let timedOut = false;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      timedOut = true;
      reject(new Deno.errors.TimedOut(`connect timed out after ${ms} ms`));
    }, ms);
  });
  // A connection that succeeds after we gave up must not leak.
  p.then((c) => timedOut && closeQuietly(c), () => {});
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
