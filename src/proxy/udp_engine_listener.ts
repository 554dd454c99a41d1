/**
 * The UDP listener of one service port on meshd's own event loop (`src/engine/`): what
 * {@linkcode UdpListener} does on Deno's I/O (a flow per client through the port's split and
 * access control, answers from the service port, the listener's and the node's flow caps, the
 * idle sweep, metrics, the access log) on a {@linkcode UdpRelay}, with a handler per readiness
 * event and no promise per datagram. Like {@linkcode TcpEngineListener}, it runs in the L4
 * worker (`--l4-worker`), and uses the loop's timers, never Deno's.
 *
 * @module
 */
import type { Reactor } from "../engine/reactor.ts";
import { bindSocket, closeFd, localAddress } from "../engine/sockets.ts";
import {
  isLocalSendErrno,
  type UdpFlow,
  UdpRelay,
  type UdpRelayOptions,
  type UdpTarget,
} from "../engine/udp_relay.ts";
import type { EndpointState } from "./endpoint_pool.ts";
import { LogThrottle } from "./log_throttle.ts";
import type { LoopGuard } from "./policy.ts";
import type { Route } from "./route_table.ts";
import {
  pickUdpEndpoint,
  readyEndpointKeys,
  udpFlowEntry,
  type UdpListenerOptions,
} from "./udp_listener.ts";

/** Options for {@linkcode UdpEngineListener}: {@linkcode UdpListenerOptions}' on a loop. */
export interface UdpEngineListenerOptions extends UdpListenerOptions {
  reactor: Reactor;
  /** How a datagram goes out on a flow's socket (a test seam): the relay's `write`. */
  flowWrite?: UdpRelayOptions["write"];
}

/** What a flow goes to, and what the listener keeps of it (the relay's flow `target`). */
interface Target extends UdpTarget {
  flow: UdpFlow<Target> | null;
  client: { hostname: string; port: number };
  endpoint: EndpointState;
  route: Route;
  /** The route whose endpoints serve it (the root, or a split backend). */
  target: Route;
  /** `Date.now()` when the client last sent. */
  lastSent: number;
  /**
   * Whether the client sent after the endpoint's last answer (or before any): kept as a flag,
   * not by comparing times, as a request and the answer before it often share a millisecond.
   */
  awaiting: boolean;
  /** `Date.now()` when it last moved to the back of the flow table's eviction order. */
  touched: number;
  startedAt: number;
  started: number;
  bytesIn: number;
  bytesOut: number;
}

/**
 * A flow moves to the back of the node's flow table at most this often, as on Deno's I/O: the
 * table's caps then evict the least recently active flow, not the oldest one still in use.
 */
const TOUCH_MS = 1000;

/**
 * One UDP listener for one service port, on `reactor`. Datagrams from each client address
 * form a flow: the first picks an endpoint (through the port's split, after access control)
 * and opens a socket connected to it, so only that endpoint can answer; answers go back to the
 * client from the service port. A flow idle for `idleTimeoutMs` is closed.
 *
 * @example
 * ```ts
 * const l = new UdpEngineListener({ reactor, hostname, port, route, pool, logger });
 * ```
 */
export class UdpEngineListener {
  readonly #opts: UdpEngineListenerOptions;
  readonly #guard: LoopGuard;
  /** One warning per reason and service per interval; `meshd_dropped_total` counts each drop. */
  readonly #log: LogThrottle;
  readonly #fd: number;
  readonly #addr: Deno.NetAddr;
  readonly #relay: UdpRelay<Target>;
  /** The flows by endpoint key: a config apply looks at endpoints, not at every flow. */
  readonly #byEndpoint = new Map<string, Set<Target>>();
  #closed = false;

  /** Binds the port; throws if it cannot. */
  constructor(options: UdpEngineListenerOptions) {
    this.#opts = options;
    this.#guard = {
      isOwn: options.isOwn,
      drop: options.drop ?? (() => {}),
      logger: options.logger,
    };
    this.#log = new LogThrottle(options.logIntervalMs);
    this.#fd = bindSocket("udp", options.hostname, options.port, {
      reuseAddress: options.reuseAddress,
    });
    try {
      const bound = localAddress(this.#fd);
      this.#addr = { transport: "udp", hostname: bound.address, port: bound.port };
      this.#relay = this.#makeRelay();
    } catch (e) {
      // Left open, the socket would hold the port that the proxy's bind retry then asks for.
      closeFd(this.#fd);
      throw e;
    }
  }

  /** The relay on the bound socket; throws if the loop will not take it. */
  #makeRelay(): UdpRelay<Target> {
    const options = this.#opts;
    const flowTable = options.flowTable;
    return new UdpRelay<Target>(options.reactor, this.#fd, {
      idleMs: options.idleTimeoutMs,
      // The listener's cap is kept in #open, before the flow's socket opens, and counted.
      maxFlows: Infinity,
      write: options.flowWrite,
      open: (client) => this.#open(client),
      onOpen: (flow) => {
        const t = flow.target;
        t.flow = flow;
        t.endpoint.inflight++;
        let same = this.#byEndpoint.get(t.endpoint.key);
        if (!same) this.#byEndpoint.set(t.endpoint.key, same = new Set());
        same.add(t);
        t.route.metrics.requests.inc();
        t.route.metrics.open.inc();
        flowTable?.add(t, {
          source: t.client.hostname,
          end: () => this.#relay.end(flow, "evicted"),
        });
        if (options.logger.enabled("debug")) {
          options.logger.debug("udp flow", {
            service: t.route.key,
            client: `${t.client.hostname}:${t.client.port}`,
            endpoint: t.endpoint.key,
          });
        }
      },
      onBytes: (flow, way, n) => {
        const t = flow.target;
        if (way === "up") {
          const now = t.lastSent = Date.now();
          t.awaiting = true;
          if (now - t.touched >= TOUCH_MS) {
            t.touched = now;
            this.#relay.touch(flow);
            flowTable?.touch(t);
          }
          t.route.metrics.bytesIn.inc(n);
          t.bytesIn += n;
        } else {
          if (t.awaiting) options.pool.success(t.endpoint);
          t.awaiting = false;
          t.route.metrics.bytesOut.inc(n);
          t.bytesOut += n;
        }
      },
      onSendError: (flow, errno) => this.#sendFailed(flow, errno),
      onOpenError: (client, t, e) => {
        // Out of file descriptors, say: drop this datagram, keep serving the flows there are.
        options.drop?.("udp_socket_failed");
        const said = this.#log.take(`socket ${t.route.key}`);
        if (said) {
          options.logger.warn("udp datagram dropped: cannot open a flow socket", {
            service: t.route.key,
            client: client.address,
            error: e.message,
            ...said,
          });
        }
      },
      onEnd: (flow, reason) => {
        const t = flow.target;
        flowTable?.remove(t);
        const same = this.#byEndpoint.get(t.endpoint.key);
        same?.delete(t);
        if (same?.size === 0) this.#byEndpoint.delete(t.endpoint.key);
        t.endpoint.inflight--;
        t.route.metrics.open.dec();
        t.route.log?.write(udpFlowEntry(t, reason));
      },
    });
  }

  /**
   * A datagram of `flow` that could not be sent on (`errno`), or an ICMP error back: the
   * endpoint is charged, unless this host had no room for the datagram.
   */
  #sendFailed(flow: UdpFlow<Target>, errno: number): void {
    const options = this.#opts;
    if (isLocalSendErrno(errno)) {
      // This host had no room for the datagram: it is lost, and the endpoint not charged
      // (outlier detection would eject a healthy one, as for a connect out of descriptors).
      options.drop?.("udp_send_failed");
      const said = this.#log.take(`send ${flow.target.route.key}`);
      if (said) {
        options.logger.warn("udp datagram dropped: no buffer space to send it", {
          service: flow.target.route.key,
          endpoint: flow.target.endpoint.key,
          errno,
          ...said,
        });
      }
      return;
    }
    if (options.pool.failure(flow.target.endpoint)) this.#relay.end(flow, "endpoint_failed");
  }

  /** The bound address. */
  get addr(): Deno.NetAddr {
    return this.#addr;
  }

  /** Flows open now. */
  get flows(): number {
    return this.#relay.flows;
  }

  /**
   * Flows whose client sent within the last `ms` milliseconds and that have had no answer
   * since: a request still waiting for its reply (or one that gets none, until `ms` passes).
   */
  awaitingAnswer(ms: number): number {
    const since = Date.now() - ms;
    let n = 0;
    for (const f of this.#relay.values()) {
      const t = f.target;
      if (t.awaiting && t.lastSent >= since) n++;
    }
    return n;
  }

  /** Ends the flows of endpoints no longer ready, as {@linkcode UdpListener.endStale} does. */
  endStale(): void {
    const root = this.#opts.route();
    if (!root) return;
    const ready = readyEndpointKeys(root);
    for (const [key, targets] of this.#byEndpoint) {
      if (ready.has(key)) continue;
      for (const t of [...targets]) if (t.flow) this.#relay.end(t.flow, "endpoint_removed");
    }
  }

  /** Stops receiving, closes every flow and the socket. */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#relay.close();
      closeFd(this.#fd);
    }
    return Promise.resolve();
  }

  /** What a client's first datagram opens a flow to; null when it is dropped. */
  #open(client: UdpTarget): Target | null {
    const root = this.#opts.route();
    if (!root) return null;
    const peer = { hostname: client.address, port: client.port };
    const picked = pickUdpEndpoint(
      { pool: this.#opts.pool, logger: this.#opts.logger, guard: this.#guard, log: this.#log },
      root,
      peer,
    );
    if (!picked) return null;
    // The source's own flows first: the listener's cap below would evict another client's.
    this.#opts.flowTable?.admit(peer.hostname);
    // Before the socket opens: out of descriptors, the one an eviction frees serves this flow.
    const max = this.#opts.maxFlows ?? Infinity;
    while (this.#relay.flows >= max) {
      this.#opts.drop?.("udp_flow_evicted");
      this.#relay.end(this.#relay.values().next().value!, "evicted");
    }
    const now = Date.now();
    return {
      address: picked.endpoint.address,
      port: picked.endpoint.port,
      flow: null,
      client: peer,
      endpoint: picked.endpoint,
      route: root,
      target: picked.target,
      lastSent: now,
      awaiting: false,
      touched: now,
      startedAt: now,
      started: performance.now(),
      bytesIn: 0,
      bytesOut: 0,
    };
  }
}
