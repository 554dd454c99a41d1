import type { Logger, Registry } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import type { BreakerTiming } from "./breaker.ts";
import { AccessLog, type AccessLogMode } from "./access_log.ts";
import { LineQueue } from "./line_queue.ts";
import { throttledErrors } from "./log_throttle.ts";
import { ConnectionLimiter } from "./conn_limiter.ts";
import { EndpointPool, type OutlierOptions } from "./endpoint_pool.ts";
import { HttpProxy } from "./http_proxy.ts";
import { defaultLimits, FALLBACK_FD_LIMIT, type ProxyLimits, readFdLimit } from "./limits.ts";
import { ownAddress } from "./own_address.ts";
import { ProxyMetrics } from "./proxy_metrics.ts";
import {
  buildRouteTableWithChanges,
  newRouteState,
  type RouteState,
  type RouteTable,
} from "./route_table.ts";
import type { Connect } from "./connect_upstream.ts";
import { TcpListener } from "./tcp_listener.ts";
import { UdpFlowTable, UdpListener } from "./udp_listener.ts";
import type { Reactor } from "../engine/reactor.ts";

/** Options for {@linkcode NodeProxy}. */
export interface NodeProxyOptions {
  /** Address the proxy listens on. */
  hostname: string;
  /**
   * Binds every listener with SO_REUSEPORT (UDP: SO_REUSEADDR), so a successor meshd on the
   * same node binds the same ports before this one drains and leaves.
   */
  reusePort?: boolean;
  /** The HTTP entrypoint port; 0 picks a free one. */
  httpPort: number;
  logger: Logger;
  /** Where the proxy's metrics go; a new registry when absent. */
  registry?: Registry;
  /** How connections to backends are opened (a test seam). */
  connect?: Connect;
  /** Passive outlier detection settings. */
  outlier?: Partial<OutlierOptions>;
  /** A backend that has not accepted within this time fails (HTTP 502). Default 5 s. */
  connectTimeoutMs?: number;
  /** A backend that has not answered within this time fails (HTTP 504). Default 30 s. */
  responseTimeoutMs?: number;
  /** TCP connections and HTTP Upgrade tunnels idle this long are closed. Default 1 hour. */
  tcpIdleTimeoutMs?: number;
  /** UDP flows idle this long are forgotten. Default 60 s. */
  udpIdleTimeoutMs?: number;
  /** Extra CA certificates (PEM) for backends of https services. */
  caCerts?: string[];
  /** Circuit breaker window, fallback and recovery times. */
  breaker?: Partial<BreakerTiming>;
  /** Uniform random in [0, 1) for endpoint choice; a test seam. */
  random?: () => number;
  /** Caps on connections and UDP flows; those not given follow the open-file limit. */
  limits?: Partial<ProxyLimits>;
  /**
   * Connection counts shared with the other proxies of this process (`--workers`,
   * `--l4-worker`), made by `sharedCountsBuffer()` with the connection caps: they then
   * hold over every isolate, this one counting in `column`. Counted here alone when absent.
   */
  sharedCaps?: { buffer: SharedArrayBuffer; column: number };
  /** A client of the HTTP entrypoint that reads nothing for this long is closed. Default 60 s. */
  writeTimeoutMs?: number;
  /**
   * An HTTP response body from a backend that sends nothing for this long is cut (both
   * connections closed, or the HTTP/2 stream reset). 0: no limit. Default 5 min.
   */
  streamIdleTimeoutMs?: number;
  /** Domains HTTP services answer to besides the config's (`traefik.mesh`, `maesh`). */
  domainAliases?: readonly string[];
  /** `--access-log`: the default of every Service (its annotation wins), and the format. */
  accessLog?: AccessLogMode;
  /**
   * Where access log lines go, at once (a test seam). When absent they are queued and written
   * to stdout in the background ({@linkcode LineQueue}): a stdout nobody reads drops lines and
   * counts them (`meshd_access_log_dropped_total`), and never stalls the proxy.
   */
  accessLogWrite?: (line: string) => void;
  /** Bytes of access log lines that may wait for stdout. Default 1 MiB. */
  accessLogQueueBytes?: number;
  /** `--request-id`: add `x-request-id` to HTTP requests that have none. */
  requestId?: boolean;
  /** Binds the HTTP entrypoint (default). Off in the L4 worker, which serves TCP and UDP alone. */
  entrypoint?: boolean;
  /**
   * Serves TCP and UDP service ports on meshd's own event loop (`src/engine/`, libc's epoll
   * through FFI), which then holds this isolate's thread: the L4 worker (`--l4-worker`).
   */
  engine?: boolean;
  /**
   * Ports of this meshd that other proxy workers serve (`--l4-worker`: the HTTP entrypoint
   * for the L4 worker, the TCP and UDP ports for an HTTP worker), read at each new connection
   * or flow: an endpoint there is this meshd's own listener, a forwarding loop, as much as one
   * at this proxy's. None when absent.
   */
  siblingPorts?: () => { tcp: ReadonlySet<number>; udp: ReadonlySet<number> };
}

/** A TCP listener of one service port, on Deno's I/O or on the engine. */
interface TcpPort {
  readonly addr: Deno.NetAddr;
  readonly open: number;
  close(abort?: boolean): Promise<void>;
}

/** A UDP listener of one service port, on Deno's I/O or on the engine. */
interface UdpPort {
  readonly addr: Deno.NetAddr;
  awaitingAnswer(ms: number): number;
  /** Ends the flows of endpoints the port's route no longer lists as ready. */
  endStale(): void;
  close(): Promise<void>;
}

/** A service port the config in force needs and the proxy could not bind (it retries). */
export interface BindError {
  protocol: "tcp" | "udp";
  /** `host:port` the proxy tries to bind. */
  address: string;
  /** `namespace/name:port` of the service port. */
  service: string;
  /** Why the last try failed, as the OS said it. */
  error: string;
  /** Tries so far. */
  attempts: number;
}

/** The first wait before binding a port again; it doubles up to {@linkcode BIND_RETRY_MAX_MS}. */
export const BIND_RETRY_MIN_MS = 250;
/** The longest wait between two tries to bind a port. */
export const BIND_RETRY_MAX_MS = 5_000;

/** What a service port looks like from a client of this node's proxy. */
export interface ListenerState {
  /** `host:port` a client connects to. */
  address: string;
  /** Whether the proxy serves it now (a port may fail to bind). */
  served: boolean;
  /** Why it is not served. */
  reason?: string;
}

/**
 * The node proxy: one HTTP entrypoint routed by Host, and a TCP or UDP listener per TCP or UDP
 * service port. {@linkcode NodeProxy.apply} moves it to a new {@linkcode MeshConfig}: new
 * ports are bound before the switch, routes switch at once, and requests and connections
 * already under way finish on the endpoints they started with.
 *
 * @example
 * ```ts
 * const proxy = new NodeProxy({ hostname: "127.0.0.1", httpPort: 5000, logger });
 * await proxy.start();
 * await proxy.apply(config);
 * ```
 */
export class NodeProxy {
  readonly #opts: NodeProxyOptions;
  readonly #state: RouteState;
  #routes: RouteTable = {
    version: 0,
    domains: [],
    http: new Map(),
    tcp: new Map(),
    udp: new Map(),
    endpointKeys: new Set(),
  };
  #http: HttpProxy | null = null;
  readonly #tcp = new Map<number, TcpPort>();
  /** TCP listeners of ports a config dropped, whose connections go on: counted in flight. */
  readonly #dropped = new Set<TcpPort>();
  readonly #udp = new Map<number, UdpPort>();
  /** The engine's loop, with its listener classes, once `start` made it (`engine` set). */
  #engine: {
    reactor: Reactor;
    running: Promise<void>;
    Tcp: typeof import("./tcp_engine_listener.ts").TcpEngineListener;
    Udp: typeof import("./udp_engine_listener.ts").UdpEngineListener;
  } | null = null;
  readonly #fdLimit: number | null = readFdLimit();
  readonly #limits: ProxyLimits;
  readonly #limiter: ConnectionLimiter;
  readonly #flowTable: UdpFlowTable;
  /** Whether an address is this host as the proxy listens on it (see ownAddress). */
  readonly #ownAddress: (address: string) => boolean;
  readonly #isOwnTcp = (address: string, port: number): boolean =>
    (port === this.#http?.addr.port || this.#tcp.has(port) ||
      this.#opts.siblingPorts?.().tcp.has(port) === true) && this.#ownAddress(address);
  readonly #isOwnUdp = (address: string, port: number): boolean =>
    (this.#udp.has(port) || this.#opts.siblingPorts?.().udp.has(port) === true) &&
    this.#ownAddress(address);
  readonly #failed = new Map<string, BindError & { port: number }>();
  #retry: ReturnType<typeof setTimeout> | null = null;
  /** Set by {@linkcode NodeProxy.drain}: configs still apply, but no listener is bound. */
  #draining = false;
  #retryMs = BIND_RETRY_MIN_MS;
  #opened!: () => void;
  /** The access log's queue to stdout, unless a test took the lines. */
  readonly #logQueue: LineQueue | null = null;
  /** Resolved by the first apply: the HTTP entrypoint accepts only from then on. */
  readonly #firstApply = new Promise<void>((resolve) => this.#opened = resolve);

  constructor(options: NodeProxyOptions) {
    this.#opts = options;
    const metrics = new ProxyMetrics(options.registry);
    const log = options.logger;
    const dropped = metrics.registry.counter(
      "meshd_access_log_dropped_total",
      "Access log lines dropped because stdout did not take them in time (or was closed).",
    ).with();
    let writeLine = options.accessLogWrite;
    if (!writeLine) {
      const q = new LineQueue({
        maxBytes: options.accessLogQueueBytes,
        onDrop: () => dropped.inc(),
        logger: log,
      });
      this.#logQueue = q;
      writeLine = (l) => q.push(l);
    }
    const pool = new EndpointPool({
      outlier: options.outlier,
      random: options.random,
      onEject: (s, ms) => {
        metrics.ejected(s.key);
        log.warn("endpoint ejected", { endpoint: s.key, forMs: ms, ejections: s.ejections });
      },
    });
    this.#state = newRouteState({
      pool,
      metrics,
      breakerTiming: options.breaker,
      domainAliases: options.domainAliases,
      accessLog: new AccessLog({ mode: options.accessLog ?? "off", write: writeLine }),
    });
    this.#limits = defaultLimits(this.#fdLimit ?? FALLBACK_FD_LIMIT, options.limits);
    // Shared counts only: one isolate counts every source in a Map of its own.
    const uncounted = options.sharedCaps
      ? metrics.registry.counter(
        "meshd_source_uncounted_total",
        "Connections admitted under --max-connections alone, not counted for their source: the " +
          "table of sources the proxy workers share was full.",
      ).with()
      : null;
    /** When the last line on uncounted sources was logged: one a minute at most. */
    let uncountedSaid = -Infinity;
    this.#limiter = new ConnectionLimiter({
      max: this.#limits.maxConnections,
      perSource: this.#limits.maxConnectionsPerSource,
      shared: options.sharedCaps,
      onUncounted: (total) => {
        uncounted?.inc();
        const now = performance.now();
        if (now - uncountedSaid >= 60_000) {
          uncountedSaid = now;
          log.warn("connection not counted for its source: the table of sources is full", {
            uncounted: total,
          });
        }
      },
    }, metrics.drop);
    this.#flowTable = new UdpFlowTable({
      max: this.#limits.maxUdpFlows,
      perSource: this.#limits.maxUdpFlowsPerSource,
    }, metrics.drop);
    this.#ownAddress = ownAddress(options.hostname);
    const breakerStates = { standby: 0, recovering: 1, tripped: 2 } as const;
    metrics.registry.collect(
      "meshd_circuit_breaker_state",
      "Circuit breaker per service: 0 standby (closed), 1 recovering, 2 tripped (open).",
      ["service"],
      () => [...this.#state.breakers].map(([k, b]) => [[k], breakerStates[b.state]]),
      // Proxy workers each keep a breaker: the worst of their states is the service's.
      { merge: "max" },
    );
  }

  /** The proxy's metrics registry. */
  get registry(): Registry {
    return this.#state.metrics.registry;
  }

  /**
   * Binds the HTTP entrypoint. Throws if it cannot. It accepts from the first
   * {@linkcode apply} on: clients that connect before wait in the listen backlog, rather than
   * get 404 from an empty route table.
   */
  async start(): Promise<void> {
    if (this.#opts.engine) {
      // Loaded only here: the engine opens libc through FFI when its module loads.
      const [{ Reactor }, { TcpEngineListener }, { UdpEngineListener }] = await Promise.all([
        import("../engine/reactor.ts"),
        import("./tcp_engine_listener.ts"),
        import("./udp_engine_listener.ts"),
      ]);
      const log = this.#opts.logger;
      // A handler that throws on every turn (a bug) logs once per 10 s, with the count.
      const reactor = new Reactor({ onError: throttledErrors(log, "event loop handler failed") });
      this.#engine = {
        reactor,
        running: reactor.run(),
        Tcp: TcpEngineListener,
        Udp: UdpEngineListener,
      };
    }
    if (this.#opts.entrypoint === false) return;
    this.#http = new HttpProxy({
      hostname: this.#opts.hostname,
      port: this.#opts.httpPort,
      reusePort: this.#opts.reusePort,
      acceptFrom: this.#firstApply,
      routes: () => this.#routes,
      pool: this.#state.pool,
      logger: this.#opts.logger.with({ protocol: "http" }),
      connect: this.#opts.connect,
      connectTimeoutMs: this.#opts.connectTimeoutMs,
      responseTimeoutMs: this.#opts.responseTimeoutMs,
      caCerts: this.#opts.caCerts,
      writeTimeoutMs: this.#opts.writeTimeoutMs,
      streamIdleTimeoutMs: this.#opts.streamIdleTimeoutMs,
      tunnelIdleMs: this.#opts.tcpIdleTimeoutMs,
      limiter: this.#limiter,
      drop: this.#state.metrics.drop,
      isOwn: this.#isOwnTcp,
      viaName: `meshd-${crypto.randomUUID().slice(0, 8)}`,
      requestId: this.#opts.requestId,
      accessLog: this.#state.accessLog?.unrouted,
    });
    this.#opts.logger.info("http entrypoint listening", { address: this.httpAddress });
    this.#opts.logger.info("connection limits", {
      fdLimit: this.#fdLimit ?? `unknown (taken as ${FALLBACK_FD_LIMIT})`,
      ...this.#limits,
    });
  }

  /** `host:port` of the HTTP entrypoint. */
  get httpAddress(): string {
    const a = this.#http?.addr;
    return a ? `${a.hostname}:${a.port}` : "";
  }

  /** The config version the proxy routes by; 0 before the first apply. */
  get version(): number {
    return this.#routes.version;
  }

  /** Where a client reaches a service port, and whether it is served. */
  listener(protocol: string, listenPort: number | null): ListenerState {
    if (protocol === "http") return { address: this.httpAddress, served: this.#http !== null };
    const address = `${this.#opts.hostname}:${listenPort}`;
    const bound = protocol === "udp" ? this.#udp : this.#tcp;
    if (listenPort !== null && bound.has(listenPort)) return { address, served: true };
    return {
      address,
      served: false,
      reason: this.#failed.get(`${protocol}/${listenPort}`)?.error ?? "not bound",
    };
  }

  /** Service ports of the config in force that are not bound now; each is retried. */
  bindErrors(): BindError[] {
    return [...this.#failed.values()].map(({ port: _, ...e }) => ({ ...e }));
  }

  /**
   * Moves to `config`. Ports that cannot be bound are logged, reported by
   * {@linkcode listener} and {@linkcode bindErrors}, and tried again with a backoff until they
   * bind or leave the config; every other route still applies.
   */
  async apply(config: MeshConfig): Promise<void> {
    // Patches the routes in force: only services whose object changed are built again, and
    // only what they dropped is let go of below.
    const { table: next, changes } = buildRouteTableWithChanges(config, this.#state);
    const log = this.#opts.logger;
    for (const [port, route] of next.tcp) {
      if (!this.#tcp.has(port)) this.#bind("tcp", port, route.key);
    }
    for (const [port, route] of next.udp) {
      if (!this.#udp.has(port)) this.#bind("udp", port, route.key);
    }
    this.#routes = next;
    this.#opened();
    for (const [port, l] of this.#udp) if (next.udp.has(port)) l.endStale();
    this.#state.pool.forget(changes.endpointKeys, next.endpointKeys);
    if (changes.endpointKeys.length > 0) this.#http?.dropIdle(next.endpointKeys);
    for (const k of changes.metricKeys) this.#state.metrics.forget(k);
    const closing: Promise<void>[] = [];
    for (const [port, l] of this.#tcp) {
      if (next.tcp.has(port)) continue;
      this.#tcp.delete(port);
      this.#dropped.add(l);
      closing.push(l.close().then(() => log.info("tcp listener stopped", { port })));
    }
    for (const [port, l] of this.#udp) {
      if (next.udp.has(port)) continue;
      this.#udp.delete(port);
      closing.push(l.close().then(() => log.info("udp listener stopped", { port })));
    }
    await Promise.all(closing);
    for (const k of this.#failed.keys()) {
      const [proto, port] = k.split("/");
      if (!(proto === "udp" ? next.udp : next.tcp).has(Number(port))) this.#failed.delete(k);
    }
  }

  /** Binds the listener of one service port; a failure is recorded and retried. */
  #bind(protocol: "tcp" | "udp", port: number, service: string): void {
    if (this.#draining) return;
    const key = `${protocol}/${port}`;
    const address = `${this.#opts.hostname}:${port}`;
    const log = this.#opts.logger;
    const before = this.#failed.get(key);
    try {
      if (protocol === "tcp") {
        const options = {
          hostname: this.#opts.hostname,
          reusePort: this.#opts.reusePort,
          port,
          route: () => this.#routes.tcp.get(port),
          pool: this.#state.pool,
          logger: log.with({ protocol: "tcp" }),
          connectTimeoutMs: this.#opts.connectTimeoutMs,
          idleTimeoutMs: this.#opts.tcpIdleTimeoutMs,
          limiter: this.#limiter,
          drop: this.#state.metrics.drop,
          isOwn: this.#isOwnTcp,
        };
        const e = this.#engine;
        this.#tcp.set(
          port,
          e
            ? new e.Tcp({ ...options, reactor: e.reactor })
            : new TcpListener({ ...options, connect: this.#opts.connect }),
        );
      } else {
        const options = {
          hostname: this.#opts.hostname,
          reuseAddress: this.#opts.reusePort,
          port,
          route: () => this.#routes.udp.get(port),
          pool: this.#state.pool,
          logger: log.with({ protocol: "udp" }),
          idleTimeoutMs: this.#opts.udpIdleTimeoutMs,
          maxFlows: this.#limits.maxUdpFlowsPerListener,
          flowTable: this.#flowTable,
          drop: this.#state.metrics.drop,
          isOwn: this.#isOwnUdp,
        };
        const e = this.#engine;
        this.#udp.set(
          port,
          e ? new e.Udp({ ...options, reactor: e.reactor }) : new UdpListener(options),
        );
      }
      this.#failed.delete(key);
      log.info(`${protocol} listener started`, {
        service,
        address,
        ...(before ? { attempts: before.attempts + 1 } : {}),
      });
    } catch (e) {
      const error = e instanceof Error ? e.message : String(e);
      const attempts = (before?.attempts ?? 0) + 1;
      this.#failed.set(key, { protocol, port, address, service, error, attempts });
      const retryInMs = this.#scheduleRetry();
      // One error line per port and cause; the retries that fail the same way are debug.
      const fields = { service, address, error: String(e), attempts, retryInMs };
      if (before?.error === error) log.debug(`cannot bind ${protocol} listener`, fields);
      else log.error(`cannot bind ${protocol} listener`, fields);
    }
  }

  /** Starts the retry timer unless it runs; returns the wait before the next try. */
  #scheduleRetry(): number {
    if (this.#retry !== null) return this.#retryMs;
    const wait = this.#retryMs;
    this.#retryMs = Math.min(wait * 2, BIND_RETRY_MAX_MS);
    const timer = setTimeout(() => {
      this.#retry = null;
      this.#retryBinds();
    }, wait);
    timer.unref(); // never keeps the process alive on its own
    this.#retry = timer;
    return wait;
  }

  /** Tries every port that failed to bind again, for the routes in force now. */
  #retryBinds(): void {
    for (const [key, f] of [...this.#failed]) {
      const routes = f.protocol === "udp" ? this.#routes.udp : this.#routes.tcp;
      const bound = f.protocol === "udp" ? this.#udp : this.#tcp;
      const route = routes.get(f.port);
      if (!route || bound.has(f.port)) this.#failed.delete(key);
      else this.#bind(f.protocol, f.port, route.key);
    }
    if (this.#failed.size === 0) this.#retryMs = BIND_RETRY_MIN_MS;
  }

  /** The ports bound now: the HTTP entrypoint and the TCP listeners, and the UDP listeners. */
  listening(): { tcp: number[]; udp: number[] } {
    const tcp = [...this.#tcp.keys()];
    if (this.#http) tcp.unshift(this.#http.addr.port);
    return { tcp, udp: [...this.#udp.keys()] };
  }

  /** Client connections still open: HTTP clients and TCP tunnels (UDP flows are not counted). */
  get inFlight(): number {
    let n = this.#http?.open ?? 0;
    for (const l of this.#tcp.values()) n += l.open;
    for (const l of this.#dropped) {
      if (l.open === 0) this.#dropped.delete(l);
      else n += l.open;
    }
    return n;
  }

  /**
   * UDP flows whose client sent within the last `ms` milliseconds with no answer since. Once
   * a successor holds the ports new datagrams go to it; an answer still due here leaves
   * through this process's socket, so a draining meshd waits for these first.
   */
  udpAwaitingAnswer(ms: number): number {
    let n = 0;
    for (const l of this.#udp.values()) n += l.awaitingAnswer(ms);
    return n;
  }

  /**
   * Stops accepting TCP connections (HTTP and TCP listeners close; no new listener is bound)
   * while the connections open now go on: HTTP ones end after their response in flight. UDP
   * sockets stay open, as replies of open flows leave through them; a successor bound on the
   * same port receives the new datagrams.
   */
  async drain(): Promise<void> {
    if (this.#retry !== null) clearTimeout(this.#retry);
    this.#retry = null;
    this.#failed.clear();
    this.#draining = true;
    this.#opened();
    await Promise.all([
      this.#http?.drain(),
      ...[...this.#tcp.values()].map((l) => l.close(false)),
    ]);
  }

  /** Stops every listener and closes every connection. */
  async stop(): Promise<void> {
    if (this.#retry !== null) clearTimeout(this.#retry);
    this.#retry = null;
    this.#failed.clear();
    this.#opened(); // an entrypoint that never saw a config still ends its accept loop
    await this.#http?.close();
    this.#http = null;
    await Promise.all([
      ...[...this.#tcp.values(), ...this.#dropped].map((l) => l.close(true)),
      ...[...this.#udp.values()].map((l) => l.close()),
    ]);
    this.#tcp.clear();
    this.#dropped.clear();
    this.#udp.clear();
    if (this.#engine) {
      this.#engine.reactor.stop();
      await this.#engine.running;
      this.#engine = null;
    }
    // The lines of the connections just closed, and any still queued, go out before the end.
    if (this.#logQueue && !(await this.#logQueue.flush(LOG_FLUSH_MS))) {
      this.#opts.logger.warn("access log lines left unwritten at shutdown", {
        bytes: this.#logQueue.queuedBytes,
      });
    }
  }
}

/** How long {@linkcode NodeProxy.stop} waits for queued access log lines to be written. */
const LOG_FLUSH_MS = 2_000;
