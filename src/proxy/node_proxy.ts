import type { Logger, Registry } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import type { BreakerTiming } from "./breaker.ts";
import { ConnectionLimiter } from "./conn_limiter.ts";
import { EndpointPool, type OutlierOptions } from "./endpoint_pool.ts";
import { HttpProxy } from "./http_proxy.ts";
import { defaultLimits, FALLBACK_FD_LIMIT, type ProxyLimits, readFdLimit } from "./limits.ts";
import { ownAddress } from "./own_address.ts";
import { ProxyMetrics } from "./proxy_metrics.ts";
import { buildRouteTable, newRouteState, type RouteState, type RouteTable } from "./route_table.ts";
import { type Connect, TcpListener } from "./tcp_proxy.ts";
import { UdpFlowTable, UdpListener } from "./udp_proxy.ts";

/** Options for {@linkcode NodeProxy}. */
export interface NodeProxyOptions {
  /** Address the proxy listens on. */
  hostname: string;
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
  /** TCP connections idle this long are closed. Default 1 hour. */
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
  /** A client of the HTTP entrypoint that reads nothing for this long is closed. Default 60 s. */
  writeTimeoutMs?: number;
}

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
    http: new Map(),
    tcp: new Map(),
    udp: new Map(),
    endpointKeys: new Set(),
  };
  #http: HttpProxy | null = null;
  readonly #tcp = new Map<number, TcpListener>();
  readonly #udp = new Map<number, UdpListener>();
  readonly #failed = new Map<string, string>();
  readonly #fdLimit: number | null = readFdLimit();
  readonly #limits: ProxyLimits;
  readonly #limiter: ConnectionLimiter;
  readonly #flowTable: UdpFlowTable;
  /** Whether an address is this host as the proxy listens on it (see ownAddress). */
  readonly #ownAddress: (address: string) => boolean;
  readonly #isOwnTcp = (address: string, port: number): boolean =>
    (port === this.#http?.addr.port || this.#tcp.has(port)) && this.#ownAddress(address);
  readonly #isOwnUdp = (address: string, port: number): boolean =>
    this.#udp.has(port) && this.#ownAddress(address);

  constructor(options: NodeProxyOptions) {
    this.#opts = options;
    const metrics = new ProxyMetrics(options.registry);
    const log = options.logger;
    const pool = new EndpointPool({
      outlier: options.outlier,
      random: options.random,
      onEject: (s, ms) => {
        metrics.ejected(s.key);
        log.warn("endpoint ejected", { endpoint: s.key, forMs: ms, ejections: s.ejections });
      },
    });
    this.#state = newRouteState({ pool, metrics, breakerTiming: options.breaker });
    this.#limits = defaultLimits(this.#fdLimit ?? FALLBACK_FD_LIMIT, options.limits);
    this.#limiter = new ConnectionLimiter({
      max: this.#limits.maxConnections,
      perSource: this.#limits.maxConnectionsPerSource,
    }, metrics.drop);
    this.#flowTable = new UdpFlowTable(this.#limits.maxUdpFlows, metrics.drop);
    this.#ownAddress = ownAddress(options.hostname);
    const breakerStates = { standby: 0, recovering: 1, tripped: 2 } as const;
    metrics.registry.collect(
      "meshd_circuit_breaker_state",
      "Circuit breaker per service: 0 standby (closed), 1 recovering, 2 tripped (open).",
      ["service"],
      () => [...this.#state.breakers].map(([k, b]) => [[k], breakerStates[b.state]]),
    );
  }

  /** The proxy's metrics registry. */
  get registry(): Registry {
    return this.#state.metrics.registry;
  }

  /** Binds the HTTP entrypoint. Throws if it cannot. */
  start(): Promise<void> {
    this.#http = new HttpProxy({
      hostname: this.#opts.hostname,
      port: this.#opts.httpPort,
      routes: () => this.#routes,
      pool: this.#state.pool,
      logger: this.#opts.logger.with({ component: "http" }),
      connect: this.#opts.connect,
      connectTimeoutMs: this.#opts.connectTimeoutMs,
      responseTimeoutMs: this.#opts.responseTimeoutMs,
      caCerts: this.#opts.caCerts,
      writeTimeoutMs: this.#opts.writeTimeoutMs,
      limiter: this.#limiter,
      drop: this.#state.metrics.drop,
      isOwn: this.#isOwnTcp,
      viaName: `meshd-${crypto.randomUUID().slice(0, 8)}`,
    });
    this.#opts.logger.info("http entrypoint listening", { address: this.httpAddress });
    this.#opts.logger.info("connection limits", {
      fdLimit: this.#fdLimit ?? `unknown (taken as ${FALLBACK_FD_LIMIT})`,
      ...this.#limits,
    });
    return Promise.resolve();
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
      reason: this.#failed.get(`${protocol}/${listenPort}`) ?? "not bound",
    };
  }

  /**
   * Moves to `config`. Ports that cannot be bound are logged and reported by
   * {@linkcode listener}; every other route still applies.
   */
  async apply(config: MeshConfig): Promise<void> {
    const next = buildRouteTable(config, this.#state);
    const log = this.#opts.logger;
    const hostname = this.#opts.hostname;
    for (const [port, route] of next.tcp) {
      if (this.#tcp.has(port)) continue;
      this.#bind("tcp", port, route.key, () =>
        this.#tcp.set(
          port,
          new TcpListener({
            hostname,
            port,
            route: () => this.#routes.tcp.get(port),
            pool: this.#state.pool,
            logger: log.with({ component: "tcp" }),
            connect: this.#opts.connect,
            connectTimeoutMs: this.#opts.connectTimeoutMs,
            idleTimeoutMs: this.#opts.tcpIdleTimeoutMs,
            limiter: this.#limiter,
            drop: this.#state.metrics.drop,
            isOwn: this.#isOwnTcp,
          }),
        ));
    }
    for (const [port, route] of next.udp) {
      if (this.#udp.has(port)) continue;
      this.#bind("udp", port, route.key, () =>
        this.#udp.set(
          port,
          new UdpListener({
            hostname,
            port,
            route: () => this.#routes.udp.get(port),
            pool: this.#state.pool,
            logger: log.with({ component: "udp" }),
            idleTimeoutMs: this.#opts.udpIdleTimeoutMs,
            maxFlows: this.#limits.maxUdpFlowsPerListener,
            flowTable: this.#flowTable,
            drop: this.#state.metrics.drop,
            isOwn: this.#isOwnUdp,
          }),
        ));
    }
    this.#routes = next;
    this.#state.pool.retain(next.endpointKeys);
    this.#http?.dropIdle(next.endpointKeys);
    const keep = new Set<string>();
    for (const r of [...next.http.values(), ...next.tcp.values(), ...next.udp.values()]) {
      keep.add(ProxyMetrics.key(r.serviceKey, r.port.port, r.port.protocol));
    }
    this.#state.metrics.retain(keep);
    const closing: Promise<void>[] = [];
    for (const [port, l] of this.#tcp) {
      if (next.tcp.has(port)) continue;
      this.#tcp.delete(port);
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

  #bind(protocol: "tcp" | "udp", port: number, service: string, bind: () => void): void {
    const address = `${this.#opts.hostname}:${port}`;
    try {
      bind();
      this.#failed.delete(`${protocol}/${port}`);
      this.#opts.logger.info(`${protocol} listener started`, { service, address });
    } catch (e) {
      this.#failed.set(`${protocol}/${port}`, String(e));
      this.#opts.logger.error(`cannot bind ${protocol} listener`, {
        service,
        address,
        error: String(e),
      });
    }
  }

  /** Stops every listener and closes every connection. */
  async stop(): Promise<void> {
    await this.#http?.close();
    this.#http = null;
    await Promise.all([
      ...[...this.#tcp.values()].map((l) => l.close(true)),
      ...[...this.#udp.values()].map((l) => l.close()),
    ]);
    this.#tcp.clear();
    this.#udp.clear();
  }
}
