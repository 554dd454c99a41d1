/**
 * The TCP listener of one service port on meshd's own event loop (`src/engine/`): what
 * {@linkcode TcpListener} does on Deno's I/O (admit, connect with retries, relay, the idle
 * sweep, metrics, the access log), with a handler per readiness event and no promise per read
 * or write. Its loop blocks its thread, so it runs in a Worker of its own (see the README,
 * "TCP and UDP request/response"); it uses the loop's timers, never Deno's.
 *
 * @module
 */
import { EPOLLIN } from "../../ffi/libc_net.ts";
import { ConnectError, connectTcp } from "../engine/connect_tcp.ts";
import type { Reactor, ReactorTimer } from "../engine/reactor.ts";
import { acceptOne, bindSocket, closeFd, localAddress } from "../engine/sockets.ts";
import { type RelayHooks, TcpRelay } from "../engine/tcp_relay.ts";
import { LogThrottle } from "./log_throttle.ts";
import type { LoopGuard } from "./policy.ts";
import {
  dialEndpoint,
  type Dialled,
  tcpAccessEntry,
  type TcpListenerOptions,
} from "./tcp_listener.ts";
import { isLocalSocketError, UpstreamError } from "./upstream_error.ts";

/** Options for {@linkcode TcpEngineListener}: {@linkcode TcpListenerOptions}' on a loop. */
export interface TcpEngineListenerOptions extends Omit<TcpListenerOptions, "connect" | "buffers"> {
  reactor: Reactor;
}

interface Tunnel {
  relay: TcpRelay;
  peer: { hostname: string; port: number };
  /** Reads either way so far, and the count the idle sweep saw last. */
  reads: number;
  seen: number;
  /** `performance.now()` when the sweep last saw it carry a byte (or when it opened). */
  active: number;
  bytesIn: number;
  bytesOut: number;
}

/** How often the idle sweep looks, ms. */
const SWEEP_MS = 1000;
/**
 * Connections one readiness event accepts at most. The loop is level-triggered, so those left
 * come back at the next turn, after the other sockets and timers: accepted to EAGAIN, a stream
 * of connections that never lets the queue run dry would hold the loop for its length.
 */
const ACCEPT_BATCH = 64;

/**
 * One TCP listener for one service port, on `reactor`. Each accepted connection is checked
 * against access control (by its source address alone), goes through the port's TrafficSplit
 * if there is one, and to a ready endpoint; bytes are then relayed both ways with half-close.
 *
 * @example
 * ```ts
 * const l = new TcpEngineListener({ reactor, hostname, port, route, pool, logger });
 * ```
 */
export class TcpEngineListener {
  readonly #opts: TcpEngineListenerOptions;
  readonly #reactor: Reactor;
  readonly #fd: number;
  readonly #addr: Deno.NetAddr;
  readonly #guard: LoopGuard;
  /**
   * Lines a client can repeat at will, one per kind (and service or endpoint) per interval: an
   * accept that failed (`meshd_dropped_total` counts each), a connection that failed, an idle
   * close, and those of {@linkcode dialEndpoint}.
   */
  readonly #log: LogThrottle;
  readonly #tunnels = new Set<Tunnel>();
  /** Connections admitted and dialling, by client socket. */
  readonly #pending = new Set<number>();
  #sweep: ReactorTimer;
  #closed = false;
  /** Closed with `abort`: connections still dialling are closed, their dials cut short. */
  #aborted = false;
  readonly #abort = new AbortController();
  /** Calls of `close(true)` waiting for the last connection to end. */
  readonly #drained: (() => void)[] = [];
  /** The pause after the last failed accept, ms (0: the last one worked). */
  #backoff = 0;
  /** Failed accepts since the last log line. */
  #unlogged = 0;

  /** Binds the port; throws if it cannot. */
  constructor(options: TcpEngineListenerOptions) {
    this.#opts = options;
    this.#reactor = options.reactor;
    this.#guard = {
      isOwn: options.isOwn,
      drop: options.drop ?? (() => {}),
      logger: options.logger,
    };
    this.#log = new LogThrottle(options.logIntervalMs);
    this.#fd = bindSocket("tcp", options.hostname, options.port, { reusePort: options.reusePort });
    try {
      const bound = localAddress(this.#fd);
      this.#addr = { transport: "tcp", hostname: bound.address, port: bound.port };
      this.#reactor.add(this.#fd, EPOLLIN, () => this.#accept());
    } catch (e) {
      // Left open, the socket would stay in the port's SO_REUSEPORT group, accepting for no one.
      closeFd(this.#fd);
      throw e;
    }
    this.#sweep = this.#reactor.after(SWEEP_MS, () => this.#sweepIdle());
  }

  /** The bound address. */
  get addr(): Deno.NetAddr {
    return this.#addr;
  }

  /**
   * Client connections open now: relayed, or accepted and still dialling their endpoint (a
   * draining meshd waits for this to reach 0, as for {@linkcode TcpListener.open}).
   */
  get open(): number {
    return this.#tunnels.size + this.#pending.size;
  }

  /**
   * Stops accepting, at once. Open connections go on until they end (the idle sweep with
   * them), unless `abort` is set: then they are closed, and this resolves once they are.
   */
  async close(abort = false): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#reactor.remove(this.#fd);
      closeFd(this.#fd);
    }
    if (abort) {
      this.#aborted = true;
      this.#abort.abort(new Error("the listener was closed"));
      for (const t of [...this.#tunnels]) t.relay.close("shutdown");
      if (this.open > 0) await new Promise<void>((r) => this.#drained.push(r));
    }
    if (this.open === 0) this.#sweep.cancel();
  }

  #accept(): void {
    const limiter = this.#opts.limiter;
    for (let i = 0; i < ACCEPT_BATCH; i++) {
      let c;
      try {
        c = acceptOne(this.#fd);
      } catch (e) {
        this.#acceptFailed(e);
        return;
      }
      if (!c) return;
      this.#backoff = 0;
      const peer = { hostname: c.address, port: c.port };
      if (limiter && !limiter.acquire(peer.hostname)) {
        closeFd(c.fd);
        continue;
      }
      // Given back as the connection ends, in that turn of the loop: a promise callback runs
      // only when a busy loop lets the isolate run (every 5 ms), and the accepts meanwhile
      // would count the connections that ended against the caps.
      let held = limiter !== undefined;
      const release = () => {
        if (held) held = false, limiter!.release(peer.hostname);
      };
      this.#handle(c.fd, peer, release).finally(release);
    }
  }

  /**
   * A failed accept (EMFILE when out of file descriptors, ENFILE, ENOBUFS): counted, and the
   * listener leaves the loop for a pause, 10 ms after the first failure in a row and twice as
   * long after each next one, up to 1 s (the socket stays readable while connections wait:
   * left in, it would call this again every turn). One log line per 10 s says so.
   */
  #acceptFailed(e: unknown): void {
    this.#opts.drop?.("accept_failed");
    this.#unlogged++;
    this.#backoff = this.#backoff === 0 ? 10 : Math.min(1000, this.#backoff * 2);
    if (this.#log.take("accept") !== null) { // `failures` says how many came
      this.#opts.logger.warn("tcp accept failed; pausing accepts", {
        port: this.#opts.port,
        error: String(e),
        failures: this.#unlogged,
        pauseMs: this.#backoff,
      });
      this.#unlogged = 0;
    }
    this.#reactor.remove(this.#fd);
    this.#reactor.after(this.#backoff, () => {
      if (this.#closed) return;
      try {
        this.#reactor.add(this.#fd, EPOLLIN, () => this.#accept());
      } catch (e) {
        // The loop will not take it back now (epoll_ctl failed): another pause, then again.
        this.#acceptFailed(e);
      }
    });
  }

  /**
   * Serves one accepted connection; closes `fd` on every path, and never rejects. `release`
   * gives its limiter slot back (once), as it ends.
   */
  async #handle(
    fd: number,
    peer: { hostname: string; port: number },
    release: () => void,
  ): Promise<void> {
    const root = this.#opts.route();
    if (!root) {
      this.#opts.logger.debug("tcp connection to a port with no service", {
        port: this.#opts.port,
      });
      release();
      closeFd(fd);
      return;
    }
    root.metrics.requests.inc();
    const started = performance.now();
    const timeout = this.#opts.connectTimeoutMs ?? 5000;
    const signal = this.#abort.signal;
    let d: Dialled<number> | null = null;
    this.#pending.add(fd);
    try {
      d = await dialEndpoint(
        { pool: this.#opts.pool, logger: this.#opts.logger, guard: this.#guard, log: this.#log },
        peer,
        root,
        started,
        (ep) =>
          connectTcp(this.#reactor, ep.address, ep.port, timeout, signal).catch((e) => {
            throw e instanceof ConnectError
              ? new UpstreamError(`cannot connect: ${e.message}`, {
                requestSent: false,
                local: isLocalSocketError(e),
                cause: e,
              })
              : e;
          }),
      );
    } catch (e) {
      // A dial that close(true) cut short is no failure worth a warning: its access log line
      // says shutdown, as one stopped while it dialled does on Deno's I/O.
      const said = this.#aborted ? null : this.#log.take("failed");
      if (said) {
        this.#opts.logger.warn("tcp connection failed", {
          port: this.#opts.port,
          error: String(e),
          ...said,
        });
      }
    } finally {
      this.#pending.delete(fd);
    }
    if (!d || this.#aborted) {
      if (this.#aborted) {
        root.log?.write({
          ...tcpAccessEntry(
            peer,
            d ?? { root, target: root, tries: 1 },
            started,
            performance.now(),
          ),
          endpoint: d?.ep.key,
          reason: "shutdown",
        });
      }
      if (d) d.ep.inflight--, closeFd(d.upstream);
      release();
      closeFd(fd);
      this.#maybeDrained();
      return;
    }
    await this.#relay(fd, peer, d, started, release);
  }

  /** Relays until both ways end, then counts and logs the connection. */
  #relay(
    fd: number,
    peer: { hostname: string; port: number },
    d: Dialled<number>,
    started: number,
    release: () => void,
  ): Promise<void> {
    const { root, ep } = d;
    const m = root.metrics;
    m.open.inc();
    const connected = performance.now();
    return new Promise((resolve) => {
      const t: Tunnel = {
        relay: null!,
        peer,
        reads: 0,
        seen: 0,
        active: connected,
        bytesIn: 0,
        bytesOut: 0,
      };
      const hooks = {
        onBytes: (way, n) => {
          t.reads++;
          if (way === "up") m.bytesIn.inc(n), t.bytesIn += n;
          else m.bytesOut.inc(n), t.bytesOut += n;
        },
        onEnd: (reason) => {
          release();
          ep.inflight--;
          m.open.dec();
          const now = performance.now();
          m.duration.observe((now - connected) / 1000);
          root.log?.write({
            ...tcpAccessEntry(peer, d, started, now),
            endpoint: ep.key,
            reason,
            bytesIn: t.bytesIn,
            bytesOut: t.bytesOut,
          });
          this.#tunnels.delete(t);
          this.#maybeDrained();
          resolve();
        },
      } satisfies RelayHooks;
      try {
        t.relay = new TcpRelay(this.#reactor, fd, d.upstream, hooks);
      } catch (e) {
        // The loop would not take a socket (epoll_ctl failed): no relay owns them.
        const said = this.#log.take("failed");
        if (said) {
          this.#opts.logger.warn("tcp connection failed", {
            port: this.#opts.port,
            error: String(e),
            ...said,
          });
        }
        release();
        closeFd(fd);
        closeFd(d.upstream);
        ep.inflight--;
        m.open.dec();
        this.#maybeDrained();
        resolve();
        return;
      }
      this.#tunnels.add(t);
    });
  }

  #maybeDrained(): void {
    if (this.open > 0) return;
    for (const r of this.#drained.splice(0)) r();
    if (this.#closed) this.#sweep.cancel();
  }

  #sweepIdle(): void {
    const limit = this.#opts.idleTimeoutMs ?? 3_600_000;
    const now = performance.now();
    for (const t of this.#tunnels) {
      if (t.reads !== t.seen) {
        t.seen = t.reads;
        t.active = now;
      } else if (now - t.active >= limit) {
        const said = this.#log.take("idle");
        if (said) {
          this.#opts.logger.info("tcp connection idle too long; closed", {
            port: this.#opts.port,
            idleMs: Math.round(now - t.active),
            ...said,
          });
        }
        t.relay.close("idle_timeout");
      }
    }
    // A closed listener's sweep ends with its last connection.
    if (this.#closed && this.open === 0) return;
    this.#sweep = this.#reactor.after(SWEEP_MS, () => this.#sweepIdle());
  }
}
