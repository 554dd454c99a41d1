import type { Logger } from "../observability/mod.ts";
import type { EndpointPool, EndpointState } from "./endpoint_pool.ts";
import { type AccessEntry, type AccessLog, failureReason } from "./access_log.ts";
import { LogThrottle } from "./log_throttle.ts";
import { isLocalSocketError } from "./upstream_error.ts";
import type { CountDrop } from "./proxy_metrics.ts";
import { admit, type LoopGuard, ProxyFailure, withoutOwn } from "./policy.ts";
import type { Route } from "./route_table.ts";

/** Options for {@linkcode UdpListener}. */
export interface UdpListenerOptions {
  hostname: string;
  /**
   * Sets SO_REUSEADDR, so a successor meshd can bind the port before this one leaves; on
   * Linux the socket bound last then receives every new datagram.
   */
  reuseAddress?: boolean;
  port: number;
  /** The route in force for this port, read per datagram so a reload applies at once. */
  route: () => Route | undefined;
  pool: EndpointPool;
  logger: Logger;
  /** A flow with no datagram either way for this long is forgotten. Default 60 s. */
  idleTimeoutMs?: number;
  /** Flows open at once on this listener; a new one evicts the least recently active. */
  maxFlows?: number;
  /** The flows of every UDP listener, under a cap in all; none when absent. */
  flowTable?: UdpFlowTable;
  /** Counts what the listener drops to protect meshd. */
  drop?: CountDrop;
  /** Whether `address:port` is one of this meshd's own UDP listeners (a forwarding loop). */
  isOwn?: (address: string, port: number) => boolean;
  /** Opens a flow's own socket (a test seam; Deno's I/O only). Default `Deno.listenDatagram`. */
  listenDatagram?: (options: Deno.UdpListenOptions & { transport: "udp" }) => Deno.DatagramConn;
  /**
   * Lines this listener logs once per flow or datagram (a drop, a failure) are logged once per
   * this many ms per kind and service, each saying how many were left out before it; the
   * metrics count every one. Default 10 s.
   */
  logIntervalMs?: number;
}

/** Caps of a {@linkcode UdpFlowTable}. */
export interface UdpFlowCaps {
  /** Flows open at once over every listener. */
  max: number;
  /** Of those, from one source address. Default: no cap but `max`. */
  perSource?: number;
}

/** A flow in a {@linkcode UdpFlowTable}: its client's address, and how to end it. */
export interface UdpFlowEntry {
  source: string;
  end: () => void;
}

/**
 * The UDP flows of every listener, least recently active first, under a cap in all and one per
 * source address: each flow holds a socket (a file descriptor), so a flood from many source
 * ports must not open one per port without end. A new flow from a source at its cap evicts that
 * source's own least recently active flow (`udp_source_limit`), so one address sending from
 * many ports churns its own flows and never another client's; a flow over the cap in all
 * evicts the least recently active one, wherever it is (`udp_flow_evicted`).
 */
export class UdpFlowTable {
  readonly #max: number;
  readonly #perSource: number;
  readonly #drop: CountDrop;
  readonly #flows = new Map<object, UdpFlowEntry>();
  /** Each source's flows, least recently active first. */
  readonly #bySource = new Map<string, Set<object>>();

  constructor(caps: UdpFlowCaps, drop: CountDrop) {
    this.#max = caps.max;
    this.#perSource = caps.perSource ?? Infinity;
    this.#drop = drop;
  }

  /** Flows open now. */
  get size(): number {
    return this.#flows.size;
  }

  /** Flows open now from `source`. */
  sourceSize(source: string): number {
    return this.#bySource.get(source)?.size ?? 0;
  }

  /**
   * Makes room for a new flow from `source`: while it is at its cap, ends its own least
   * recently active flow. Call before the listener makes room of its own, so the source pays.
   */
  admit(source: string): void {
    const own = this.#bySource.get(source);
    while (own && own.size >= this.#perSource) {
      this.#drop("udp_source_limit");
      this.#end(own.values().next().value!);
    }
  }

  /** Adds `flow`, evicting the least recently active flows over the caps. */
  add(flow: object, entry: UdpFlowEntry): void {
    this.admit(entry.source);
    while (this.#flows.size >= this.#max) {
      this.#drop("udp_flow_evicted");
      this.#end(this.#flows.keys().next().value!);
    }
    this.#flows.set(flow, entry);
    let own = this.#bySource.get(entry.source);
    if (!own) this.#bySource.set(entry.source, own = new Set());
    own.add(flow);
  }

  /** Marks `flow` as the most recently active. */
  touch(flow: object): void {
    const entry = this.#flows.get(flow);
    if (!entry) return;
    this.#flows.delete(flow);
    this.#flows.set(flow, entry);
    const own = this.#bySource.get(entry.source)!;
    own.delete(flow);
    own.add(flow);
  }

  /** Forgets `flow`. */
  remove(flow: object): void {
    const entry = this.#flows.get(flow);
    if (!entry) return;
    this.#flows.delete(flow);
    const own = this.#bySource.get(entry.source);
    own?.delete(flow);
    if (own?.size === 0) this.#bySource.delete(entry.source);
  }

  #end(flow: object): void {
    const entry = this.#flows.get(flow);
    this.remove(flow);
    entry?.end();
  }
}

interface Flow {
  client: Deno.NetAddr;
  upstream: Deno.DatagramConn;
  endpoint: EndpointState;
  /** The endpoint's address as `send` takes it, made once. */
  to: Deno.NetAddr;
  route: Route;
  lastActive: number;
  /** When the client last sent. */
  lastSent: number;
  /**
   * Whether the client sent after the endpoint's last answer (or before any): kept as a flag,
   * not by comparing times, as a request and the answer before it often share a millisecond.
   */
  awaiting: boolean;
  /** When the flow last moved to the back of the eviction order. */
  touched: number;
  done: Promise<void>;
  /** The route whose endpoints serve it (the root, or a split backend). */
  target: Route;
  /** Where its line goes when it ends; null when the route does not log. */
  log: AccessLog | null;
  /** `performance.now()` and `Date.now()` when it opened. */
  started: number;
  startedAt: number;
  /** Bytes from the client and to it; counted only when logged. */
  bytesIn: number;
  bytesOut: number;
}

const MAX_DATAGRAM = 65_535;
/** A flow moves to the back of the eviction order at most this often: cheap, and close enough. */
const TOUCH_MS = 1000;

/**
 * One UDP listener for one service port. Datagrams from each client address form a flow: the
 * first one picks an endpoint (through the port's split, after access control) and opens a
 * socket of its own towards it; replies on that socket go back to that client from the
 * service port, so the client sees them come from where it sent. A flow idle for
 * `idleTimeoutMs` is closed. A datagram access control refuses is dropped and counted.
 */
export class UdpListener {
  readonly #opts: UdpListenerOptions;
  readonly #guard: LoopGuard;
  /** One warning per reason and service per interval; `meshd_dropped_total` counts each drop. */
  readonly #log: LogThrottle;
  readonly #socket: Deno.DatagramConn;
  /** Every flow, least recently active first (see `TOUCH_MS`). */
  readonly #flows = new Set<Flow>();
  /** The flows by client address, then port. */
  readonly #index = new Map<string, Map<number, Flow>>();
  /** The flows by endpoint key: a config apply looks at endpoints, not at every flow. */
  readonly #byEndpoint = new Map<string, Set<Flow>>();
  readonly #sweeper: ReturnType<typeof setInterval>;
  readonly #done: Promise<void>;
  #closed = false;

  /** Binds the port; throws if it cannot. */
  constructor(options: UdpListenerOptions) {
    this.#opts = options;
    this.#guard = {
      isOwn: options.isOwn,
      drop: options.drop ?? (() => {}),
      logger: options.logger,
    };
    this.#log = new LogThrottle(options.logIntervalMs);
    this.#socket = Deno.listenDatagram({
      transport: "udp",
      hostname: options.hostname,
      port: options.port,
      ...(options.reuseAddress ? { reuseAddress: true } : {}),
    });
    const sweepMs = Math.min(1000, Math.max(10, (options.idleTimeoutMs ?? 60_000) / 4));
    this.#sweeper = setInterval(() => this.#sweep(), sweepMs);
    this.#sweeper.unref(); // never keeps the process alive on its own
    this.#done = this.#receive();
  }

  /** The bound address. */
  get addr(): Deno.NetAddr {
    return this.#socket.addr as Deno.NetAddr;
  }

  /** Flows open now. */
  get flows(): number {
    return this.#flows.size;
  }

  /**
   * Flows whose client sent within the last `ms` milliseconds and that have had no answer
   * since: a request still waiting for its reply (or one that gets none, until `ms` passes).
   */
  awaitingAnswer(ms: number): number {
    const since = Date.now() - ms;
    let n = 0;
    for (const f of this.#flows.values()) if (f.awaiting && f.lastSent >= since) n++;
    return n;
  }

  /** Stops receiving and closes every flow. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#sweeper);
    try {
      this.#socket.close();
    } catch { /* already closed */ }
    await this.#done;
    const flows = [...this.#flows];
    for (const f of flows) this.#end(f, "shutdown");
    await Promise.all(flows.map((f) => f.done));
  }

  /**
   * Ends the flows whose endpoint the port's route no longer lists as ready (it left the
   * config, or its pod is terminating), as kube-proxy clears such a UDP endpoint's conntrack
   * entries: a client that keeps sending from one port never lets its flow go idle, and would
   * reach that endpoint for as long as it sends. Its next datagram opens a flow to a ready one.
   */
  endStale(): void {
    const root = this.#opts.route();
    if (!root) return;
    const ready = readyEndpointKeys(root);
    for (const [key, flows] of this.#byEndpoint) {
      if (!ready.has(key)) { for (const f of [...flows]) this.#end(f, "endpoint_removed"); }
    }
  }

  #sweep(): void {
    const limit = this.#opts.idleTimeoutMs ?? 60_000;
    const now = Date.now();
    for (const f of this.#flows.values()) {
      if (now - f.lastActive >= limit) this.#end(f, "idle_timeout");
    }
  }

  /** Ends `f`; `reason` is what its access log line says. */
  #end(f: Flow, reason: string): void {
    if (!this.#flows.delete(f)) return;
    const byPort = this.#index.get(f.client.hostname);
    byPort?.delete(f.client.port);
    if (byPort?.size === 0) this.#index.delete(f.client.hostname);
    const same = this.#byEndpoint.get(f.endpoint.key);
    same?.delete(f);
    if (same?.size === 0) this.#byEndpoint.delete(f.endpoint.key);
    this.#opts.flowTable?.remove(f);
    f.endpoint.inflight--;
    f.route.metrics.open.dec();
    try {
      f.upstream.close();
    } catch { /* already closed */ }
    f.log?.write(udpFlowEntry(f, reason));
  }

  async #receive(): Promise<void> {
    // One buffer for the loop: each datagram is sent on before the next is received.
    const buf = new Uint8Array(MAX_DATAGRAM);
    for (;;) {
      let data: Uint8Array;
      let from: Deno.Addr;
      try {
        [data, from] = await this.#socket.receive(buf);
      } catch (e) {
        if (this.#closed || e instanceof Deno.errors.BadResource) return;
        const said = this.#log.take("receive");
        if (said) {
          this.#opts.logger.warn("udp receive failed", {
            port: this.#opts.port,
            error: String(e),
            ...said,
          });
        }
        continue;
      }
      const client = from as Deno.NetAddr;
      // Two lookups (address, then port) and no key built per datagram.
      const flow = this.#index.get(client.hostname)?.get(client.port) ?? this.#open(client);
      if (!flow) continue;
      const now = Date.now();
      flow.lastActive = now;
      flow.lastSent = now;
      flow.awaiting = true;
      if (now - flow.touched >= TOUCH_MS) {
        // Least recently active last to be evicted: a flood of new source ports evicts its own
        // flows first, not a flow that is in use.
        flow.touched = now;
        this.#flows.delete(flow);
        this.#flows.add(flow);
        this.#opts.flowTable?.touch(flow);
      }
      flow.route.metrics.bytesIn.inc(data.length);
      if (flow.log !== null) flow.bytesIn += data.length;
      try {
        await flow.upstream.send(data, flow.to);
      } catch (e) {
        if (isLocalSocketError(e)) {
          // No buffer space or memory here: the datagram is lost, and the endpoint is not
          // charged (outlier detection would eject a healthy one).
          this.#opts.drop?.("udp_send_failed");
          const said = this.#log.take(`send ${flow.route.key}`);
          if (said) {
            this.#opts.logger.warn("udp datagram dropped: no buffer space to send it", {
              service: flow.route.key,
              endpoint: flow.endpoint.key,
              error: String(e),
              ...said,
            });
          }
          continue;
        }
        this.#opts.logger.debug("udp send to endpoint failed", {
          endpoint: flow.endpoint.key,
          error: String(e),
        });
        if (this.#opts.pool.failure(flow.endpoint)) this.#end(flow, "endpoint_failed");
      }
    }
  }

  /** Opens a flow for `client`'s first datagram; null when the datagram is to be dropped. */
  #open(client: Deno.NetAddr): Flow | null {
    const root = this.#opts.route();
    if (!root) return null;
    const picked = pickUdpEndpoint(
      { pool: this.#opts.pool, logger: this.#opts.logger, guard: this.#guard, log: this.#log },
      root,
      client,
    );
    if (!picked) return null;
    const { target, endpoint } = picked;
    // The source's own flows first: the listener's cap below would evict another client's.
    this.#opts.flowTable?.admit(client.hostname);
    const max = this.#opts.maxFlows ?? Infinity;
    while (this.#flows.size >= max) {
      this.#opts.drop?.("udp_flow_evicted");
      this.#end(this.#flows.values().next().value!, "evicted");
    }
    const upstream = this.#flowSocket(root, endpoint);
    if (!upstream) return null;
    const now = Date.now();
    const flow: Flow = {
      client,
      upstream,
      endpoint,
      to: { transport: "udp", hostname: endpoint.address, port: endpoint.port },
      route: root,
      lastActive: now,
      lastSent: now,
      awaiting: false,
      touched: now,
      done: Promise.resolve(),
      target,
      log: root.log,
      started: root.log === null ? 0 : performance.now(),
      startedAt: now,
      bytesIn: 0,
      bytesOut: 0,
    };
    endpoint.inflight++;
    root.metrics.requests.inc();
    root.metrics.open.inc();
    this.#flows.add(flow);
    let byPort = this.#index.get(client.hostname);
    if (!byPort) this.#index.set(client.hostname, byPort = new Map());
    byPort.set(client.port, flow);
    let same = this.#byEndpoint.get(endpoint.key);
    if (!same) this.#byEndpoint.set(endpoint.key, same = new Set());
    same.add(flow);
    this.#opts.flowTable?.add(flow, {
      source: client.hostname,
      end: () => this.#end(flow, "evicted"),
    });
    flow.done = this.#replies(flow);
    if (this.#opts.logger.enabled("debug")) {
      this.#opts.logger.debug("udp flow", {
        service: root.key,
        client: `${client.hostname}:${client.port}`,
        endpoint: endpoint.key,
      });
    }
    return flow;
  }

  /** A socket of the flow's own towards `endpoint`; null (logged, counted) if none opens. */
  #flowSocket(root: Route, endpoint: EndpointState): Deno.DatagramConn | null {
    try {
      return (this.#opts.listenDatagram ?? Deno.listenDatagram)({
        transport: "udp",
        hostname: endpoint.address.includes(":") ? "::" : "0.0.0.0",
        port: 0,
      });
    } catch (e) {
      // Out of file descriptors, say: drop this datagram, keep serving the flows there are.
      this.#opts.drop?.("udp_socket_failed");
      const said = this.#log.take(`socket ${root.key}`);
      if (said) {
        this.#opts.logger.warn("udp datagram dropped: cannot open a flow socket", {
          service: root.key,
          error: String(e),
          ...said,
        });
      }
      return null;
    }
  }

  /** Replies from the endpoint go back to the flow's client, from the service port. */
  async #replies(flow: Flow): Promise<void> {
    const buf = new Uint8Array(MAX_DATAGRAM);
    for (;;) {
      let data: Uint8Array;
      let from: Deno.NetAddr;
      try {
        const [d, f] = await flow.upstream.receive(buf);
        data = d;
        from = f as Deno.NetAddr;
      } catch {
        return; // the flow was closed
      }
      // Only the endpoint may answer through this flow.
      if (from.port !== flow.endpoint.port || from.hostname !== flow.endpoint.address) continue;
      flow.lastActive = Date.now();
      flow.awaiting = false;
      this.#opts.pool.success(flow.endpoint);
      flow.route.metrics.bytesOut.inc(data.length);
      if (flow.log !== null) flow.bytesOut += data.length;
      try {
        await this.#socket.send(data, flow.client);
      } catch {
        if (this.#closed) return;
      }
    }
  }
}

/** What {@linkcode pickUdpEndpoint} needs of its listener. */
export interface UdpPickContext {
  pool: EndpointPool;
  logger: Logger;
  guard: LoopGuard;
  /** The listener's throttle of lines a client can repeat. */
  log: LogThrottle;
}

/**
 * The endpoint for a new UDP flow from `client`: the admit step and the loop guard TCP and HTTP
 * take too, then the pool's pick. Null when the datagram is refused or no endpoint is ready:
 * logged and counted here. Both UDP listeners (Deno's I/O and the engine's) take it.
 */
export function pickUdpEndpoint(
  ctx: UdpPickContext,
  root: Route,
  client: { hostname: string; port: number },
): { target: Route; endpoint: EndpointState } | null {
  const log = ctx.logger;
  let target: Route;
  let candidates: EndpointState[];
  try {
    const admitted = admit(root, client.hostname, null);
    target = admitted.target;
    candidates = withoutOwn(admitted, ctx.guard);
  } catch (e) {
    if (!(e instanceof ProxyFailure)) throw e;
    root.log?.write(refusal(root, client, e.message, failureReason(e)));
    if (e.status === 403) {
      if (log.enabled("debug")) {
        log.debug("udp datagram dropped", { service: root.key, reason: e.message });
      }
    } else if (e.status === 503) {
      const said = ctx.log.take(`none ${root.key}`);
      if (said) log.warn("udp datagram dropped: no ready endpoint", { service: root.key, ...said });
    }
    return null;
  }
  const endpoint = ctx.pool.pick(candidates);
  if (!endpoint) {
    root.metrics.denied("no_endpoint").inc();
    root.log?.write(
      refusal(root, client, `Service "${target.key}" has no ready endpoint`, "no_endpoint"),
    );
    const said = ctx.log.take(`none ${target.key}`);
    if (said) log.warn("udp datagram dropped: no ready endpoint", { service: target.key, ...said });
    return null;
  }
  return { target, endpoint };
}

/**
 * The keys of the endpoints a new flow of `root` could go to now: its ready endpoints, and
 * those of its split's backends. A flow whose endpoint is not among them ends at the next
 * config (see {@linkcode UdpListener.endStale}).
 */
export function readyEndpointKeys(root: Route): Set<string> {
  const keys = new Set<string>();
  for (const r of [root, ...(root.split?.backends.items ?? [])]) {
    for (const s of r.readyStates) keys.add(s.key);
  }
  return keys;
}

/** What the access log line of a UDP flow says, from either UDP listener. */
export interface LoggedFlow {
  client: { hostname: string; port: number };
  route: Route;
  target: Route;
  endpoint: EndpointState;
  /** `Date.now()` and `performance.now()` when it opened. */
  startedAt: number;
  started: number;
  bytesIn: number;
  bytesOut: number;
}

/** The access log line of a UDP flow that ended for `reason`. */
export function udpFlowEntry(f: LoggedFlow, reason: string): AccessEntry {
  return {
    start: f.startedAt,
    source: f.client.hostname,
    sourcePort: f.client.port,
    protocol: "udp",
    service: f.route.key,
    backend: f.target === f.route ? undefined : f.target.key,
    endpoint: f.endpoint.key,
    reason,
    durationMs: performance.now() - f.started,
    bytesIn: f.bytesIn,
    bytesOut: f.bytesOut,
    retries: 0,
  };
}

/** The access log line of a datagram refused before any flow opened. */
function refusal(
  root: Route,
  client: { hostname: string; port: number },
  detail: string,
  reason: string,
): AccessEntry {
  return {
    start: Date.now(),
    source: client.hostname,
    sourcePort: client.port,
    protocol: "udp",
    service: root.key,
    reason,
    detail,
    durationMs: 0,
    bytesIn: 0,
    bytesOut: 0,
    retries: 0,
  };
}
