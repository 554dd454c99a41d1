import type { Logger } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { RoundRobin } from "./balancer.ts";
import { HttpProxy } from "./http_proxy.ts";
import { buildRouteTable, type RouteTable } from "./route_table.ts";
import { type Connect, TcpListener } from "./tcp_proxy.ts";

/** Options for {@linkcode NodeProxy}. */
export interface NodeProxyOptions {
  /** Address the proxy listens on. */
  hostname: string;
  /** The HTTP entrypoint port; 0 picks a free one. */
  httpPort: number;
  logger: Logger;
  /** How connections to backends are opened (a test seam). */
  connect?: Connect;
}

/** What a service port looks like from a client of this node's proxy. */
export interface ListenerState {
  /** `host:port` a client connects to. */
  address: string;
  /** Whether the proxy serves it now (a port may fail to bind, or a protocol be unserved). */
  served: boolean;
  /** Why it is not served. */
  reason?: string;
}

/**
 * The node proxy: one HTTP entrypoint routed by Host, and a TCP listener per TCP service
 * port. {@linkcode NodeProxy.apply} moves it to a new {@linkcode MeshConfig}: routes switch
 * at once, new ports are bound before the switch, and connections already open go on.
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
  readonly #balancer = new RoundRobin();
  #routes: RouteTable = { version: 0, http: new Map(), tcp: new Map() };
  #http: HttpProxy | null = null;
  readonly #tcp = new Map<number, TcpListener>();
  readonly #failed = new Map<number, string>();

  constructor(options: NodeProxyOptions) {
    this.#opts = options;
  }

  /** Binds the HTTP entrypoint. Throws if it cannot. */
  start(): Promise<void> {
    this.#http = new HttpProxy({
      hostname: this.#opts.hostname,
      port: this.#opts.httpPort,
      routes: () => this.#routes,
      balancer: this.#balancer,
      logger: this.#opts.logger.with({ component: "http" }),
      connect: this.#opts.connect,
    });
    this.#opts.logger.info("http entrypoint listening", { address: this.httpAddress });
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
    if (protocol === "udp") {
      return { address, served: false, reason: "UDP is not proxied yet (#4)" };
    }
    if (listenPort !== null && this.#tcp.has(listenPort)) return { address, served: true };
    return { address, served: false, reason: this.#failed.get(listenPort ?? -1) ?? "not bound" };
  }

  /**
   * Moves to `config`. Ports that cannot be bound are logged and reported by
   * {@linkcode listener}; every other route still applies.
   */
  async apply(config: MeshConfig): Promise<void> {
    const next = buildRouteTable(config);
    const log = this.#opts.logger;
    for (const [port, route] of next.tcp) {
      if (this.#tcp.has(port)) continue;
      try {
        this.#tcp.set(
          port,
          new TcpListener({
            hostname: this.#opts.hostname,
            port,
            route: () => this.#routes.tcp.get(port),
            balancer: this.#balancer,
            logger: log.with({ component: "tcp" }),
            connect: this.#opts.connect,
          }),
        );
        this.#failed.delete(port);
        log.info("tcp listener started", {
          service: route.key,
          address: `${this.#opts.hostname}:${port}`,
        });
      } catch (e) {
        this.#failed.set(port, String(e));
        log.error("cannot bind tcp listener", { service: route.key, port, error: String(e) });
      }
    }
    this.#routes = next;
    const keys = new Set<string>([...next.http.values(), ...next.tcp.values()].map((r) => r.key));
    this.#balancer.retain(keys);
    const gone = [...this.#tcp.keys()].filter((p) => !next.tcp.has(p));
    await Promise.all(gone.map(async (port) => {
      await this.#tcp.get(port)!.close();
      this.#tcp.delete(port);
      log.info("tcp listener stopped", { port });
    }));
    for (const p of this.#failed.keys()) if (!next.tcp.has(p)) this.#failed.delete(p);
  }

  /** Stops every listener and closes every connection. */
  async stop(): Promise<void> {
    await this.#http?.close();
    this.#http = null;
    await Promise.all([...this.#tcp.values()].map((l) => l.close(true)));
    this.#tcp.clear();
  }
}
