import { renderSnapshots } from "../observability/mod.ts";
import type { Registry } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import type { DataPlane } from "./data_plane.ts";
import {
  type BindError,
  type ListenerState,
  NodeProxy,
  type NodeProxyOptions,
} from "./node_proxy.ts";
import { defaultLimits, FALLBACK_FD_LIMIT, readFdLimit } from "./limits.ts";
import { poolColumns, ProxyPool, ProxyWorkerError, type WorkerProxyOptions } from "./proxy_pool.ts";
import { sharedCountsBuffer } from "./shared_counts.ts";
import { type OwnPorts, siblingPorts, workerShare } from "./worker_share.ts";

/** Options for {@linkcode SplitPlane}. */
export interface SplitPlaneOptions {
  /** The proxy of this isolate: the HTTP entrypoint. */
  proxy: NodeProxyOptions;
  /** What the L4 worker's proxy is made with (plain data). */
  worker: WorkerProxyOptions;
  /** See {@linkcode ProxyPool}'s `udpWaitMs`. */
  udpWaitMs?: number;
  /** The L4 worker's module; a test seam. */
  entry?: URL;
  /**
   * `--l4-worker=auto`: if the L4 worker does not start, this isolate's proxy serves the TCP
   * and UDP ports too, as with no L4 worker, after one warning. Otherwise that is an error.
   */
  l4Optional?: boolean;
}

/**
 * The node proxy with its TCP and UDP ports in a worker of their own (`--l4-worker` with one
 * proxy): HTTP is served in this isolate, as without the flag, and every TCP and UDP service
 * port by an L4 worker on meshd's own event loop (a {@linkcode ProxyPool} of that one worker).
 * It answers as one NodeProxy does: a config applies to both or to neither, `/metrics` sums
 * both, and the HTTP side keeps the config in this isolate alone (no second copy for HTTP).
 *
 * @example
 * ```ts
 * const plane = new SplitPlane({ proxy: { hostname, httpPort: 5000, logger }, worker: { hostname, httpPort: 0 } });
 * await plane.start();
 * await plane.apply(config);
 * ```
 */
export class SplitPlane implements DataPlane {
  readonly #http: NodeProxy;
  readonly #l4: ProxyPool;
  /** What the L4 worker is started with (its HTTP port is set once the entrypoint is bound). */
  readonly #worker: WorkerProxyOptions;
  /** The L4 worker's TCP and UDP ports in the config in force: loops for the entrypoint. */
  #siblings: OwnPorts = { tcp: new Set(), udp: new Set() };
  #config: MeshConfig | null = null;
  readonly #optional: boolean;
  readonly #logger: NodeProxyOptions["logger"];
  /** The L4 worker did not start ({@linkcode SplitPlaneOptions.l4Optional}): all is served here. */
  #solo = false;

  constructor(options: SplitPlaneOptions) {
    this.#optional = options.l4Optional ?? false;
    this.#logger = options.proxy.logger;
    // The connection caps are the process's, held by both sides over one count in memory they
    // share: this isolate counts in column 0, the L4 worker in the pool's columns after it.
    // UDP flows are the L4 worker's alone.
    const limits = defaultLimits(readFdLimit() ?? FALLBACK_FD_LIMIT, options.proxy.limits);
    const buffer = sharedCountsBuffer({
      max: limits.maxConnections,
      perSource: limits.maxConnectionsPerSource,
      columns: 1 + poolColumns(0, true),
    });
    this.#http = new NodeProxy({
      ...options.proxy,
      limits,
      sharedCaps: { buffer, column: 0 },
      siblingPorts: () => this.#siblings,
    });
    this.#worker = { ...options.worker, limits };
    this.#l4 = new ProxyPool({
      workers: 0,
      l4Worker: true,
      proxy: this.#worker,
      logger: options.proxy.logger,
      udpWaitMs: options.udpWaitMs,
      entry: options.entry,
      registry: this.#http.registry,
      sharedCaps: { buffer, firstColumn: 1 },
    });
  }

  get registry(): Registry {
    return this.#http.registry;
  }

  get httpAddress(): string {
    return this.#http.httpAddress;
  }

  /** The version both sides route by. */
  get version(): number {
    return this.#solo ? this.#http.version : Math.min(this.#http.version, this.#l4.version);
  }

  get inFlight(): number {
    return this.#http.inFlight + (this.#solo ? 0 : this.#l4.inFlight);
  }

  /** Binds the HTTP entrypoint, then starts the L4 worker. Throws if either cannot. */
  async start(): Promise<void> {
    await this.#http.start();
    // The L4 worker refuses an endpoint at the entrypoint as a loop: it needs the bound port.
    this.#worker.httpPort = Number(this.#http.httpAddress.split(":").pop());
    try {
      await this.#l4.start();
    } catch (e) {
      if (!this.#optional) {
        await this.#http.stop();
        throw e;
      }
      await this.#l4.stop().catch(() => {});
      this.#solo = true;
      this.#logger.warn("L4 worker did not start: TCP and UDP stay on Deno's I/O", {
        reason: (e as Error).message,
      });
    }
  }

  /** Whether TCP and UDP are served by the L4 worker (false after it failed to start). */
  get l4Worker(): boolean {
    return !this.#solo;
  }

  /**
   * Moves both sides to `config`. If the L4 worker cannot take it, or this isolate's proxy
   * fails after it did, both keep (or go back to) the config before, and this throws.
   */
  async apply(config: MeshConfig): Promise<void> {
    if (this.#solo) {
      await this.#http.apply(config);
      this.#config = config;
      return;
    }
    await this.#l4.apply(config);
    const siblings = this.#siblings;
    try {
      this.#siblings = siblingPorts(config, "http", 0);
      await this.#http.apply(workerShare(config, { index: 0, count: 1, role: "http" }));
    } catch (e) {
      this.#siblings = siblings;
      const previous = this.#config;
      if (previous) await this.#l4.apply(previous).catch(() => {});
      throw new ProxyWorkerError(
        `Cannot apply config version ${config.version}: ${(e as Error).message}; ` +
          `the proxy keeps version ${previous?.version ?? 0}`,
        { cause: e },
      );
    }
    this.#config = config;
  }

  listener(protocol: string, listenPort: number | null): ListenerState {
    return protocol === "http" || this.#solo
      ? this.#http.listener(protocol, listenPort)
      : this.#l4.listener(protocol, listenPort);
  }

  bindErrors(): BindError[] {
    if (this.#solo) return this.#http.bindErrors();
    return [...this.#http.bindErrors(), ...this.#l4.bindErrors()];
  }

  listening(): {
    tcp: number[];
    udp: number[];
    own: { tcp: ReadonlyMap<number, number>; udp: ReadonlyMap<number, number> };
  } {
    const http = this.#http.listening();
    if (this.#solo) return { ...http, own: { tcp: new Map(), udp: new Map() } };
    const l4 = this.#l4.listening();
    const tcp = new Map(l4.own.tcp);
    for (const p of http.tcp) tcp.set(p, (tcp.get(p) ?? 0) + 1);
    return { tcp: [...tcp.keys()], udp: l4.udp, own: { tcp, udp: l4.own.udp } };
  }

  udpAwaitingAnswer(ms: number): number {
    return this.#solo ? this.#http.udpAwaitingAnswer(ms) : this.#l4.udpAwaitingAnswer(ms);
  }

  async drain(): Promise<void> {
    await Promise.all([this.#http.drain(), this.#solo ? undefined : this.#l4.drain()]);
  }

  async stop(): Promise<void> {
    await Promise.all([this.#http.stop(), this.#solo ? undefined : this.#l4.stop()]);
  }

  /** `/metrics`: this isolate's registry and the L4 worker's series, each series once. */
  async metrics(): Promise<string> {
    if (this.#solo) return renderSnapshots([this.#http.registry.snapshot()]);
    return renderSnapshots([this.#http.registry.snapshot(), ...await this.#l4.workerMetrics()]);
  }
}
