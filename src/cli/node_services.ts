import { type ConfigStore, NodeAgent } from "../node/mod.ts";
import { type ApiServer, type Logger, type Registry, serveApi } from "../observability/mod.ts";
import {
  availableCpus,
  type DataPlane,
  type EngineProbe,
  L4WorkerError,
  NodeProxy,
  probeEngine,
  ProxyPool,
  SplitPlane,
} from "../proxy/mod.ts";
import {
  DatapathError,
  FastPath,
  type MeshAddresses,
  type ProxyListener,
  selectDatapath,
} from "../datapath/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { CliError } from "./common.ts";
import { MAX_COUNT } from "./flags.ts";
import type { RunConfig } from "./run_config.ts";
import type { Service } from "./service_stack.ts";

/**
 * How long a draining meshd waits for the answer to a UDP datagram it forwarded: a protocol
 * that never answers (syslog, say) holds a drain no longer than this after its last datagram.
 */
export const UDP_ANSWER_WAIT_MS = 5_000;

/** What every `meshd run` has, whatever the provider: made once, at the root. */
export interface RunContext {
  config: RunConfig;
  logger: Logger;
  /** meshd's one metrics registry: the proxy's, the node agent's and every other part's. */
  registry: Registry;
  /** Resolves with the signal's name on SIGINT or SIGTERM. */
  stopped: Promise<string>;
}

/** Options for {@linkcode nodeServices}. */
export interface NodeServicesOptions {
  /** CA certificates (PEM) that https backends may use. */
  caCerts?: string[];
  /** Where other pods reach this one (kube), or "". */
  advertise: string;
  /** Where each applied config is saved (kube, with a state directory). */
  store?: ConfigStore;
  /** Where the eBPF path's mesh addresses come from (see `FastPathOptions.addresses`). */
  addresses: "cluster-ip" | "given";
  /** `/api/status/nodes` (kube). */
  nodes?: () => unknown;
}

/** The parts of a node every provider feeds: the proxy, the eBPF path, the agent, the API. */
export interface NodeServices {
  proxy: DataPlane;
  datapath: DatapathService;
  agent: NodeAgent;
  servers: ApiServers;
  /** In start order: the proxy, the data path, the API, health and metrics ports. */
  services: Service[];
}

/** The node proxy (or its pool of workers), the eBPF fast path, the node agent and the API. */
export function nodeServices(ctx: RunContext, options: NodeServicesOptions): NodeServices {
  const { config, logger, registry } = ctx;
  const proxy = dataPlane(ctx, options.caCerts);
  const datapath = new DatapathService(ctx, redirectListener(config, options.advertise), {
    addresses: options.addresses,
  });
  const agent = new NodeAgent({
    proxy,
    logger: logger.with({ room: "node" }),
    registry,
    store: options.store,
    datapath,
    nodes: options.nodes,
  });
  registerProcessMetrics(registry);
  const servers = new ApiServers(ctx, agent);
  const proxyService: Service = {
    name: "proxy",
    start: async () => {
      try {
        await proxy.start();
      } catch (e) {
        if (e instanceof L4WorkerError) throw new CliError(e.message);
        throw new CliError(
          `Cannot listen on ${config.proxy.address}:${config.proxy.httpPort} for the HTTP ` +
            `entrypoint: ${(e as Error).message}`,
        );
      }
    },
    stop: () => proxy.stop(),
  };
  return { proxy, datapath, agent, servers, services: [proxyService, datapath, servers] };
}

/**
 * How many proxy workers `--workers` asks for, given the CPUs meshd may use: `auto` takes them
 * all (up to the flag's limit); a count above them is kept, with a warning.
 */
export function proxyWorkers(requested: number | "auto", cpus: number, logger: Logger): number {
  if (requested === "auto") return Math.min(cpus, MAX_COUNT);
  if (requested > cpus) {
    logger.warn("more proxy workers than CPUs: they share cores, each with memory of its own", {
      workers: requested,
      cpus,
    });
  }
  return requested;
}

/**
 * Whether TCP and UDP go to an L4 worker, as `--l4-worker` asks: `true` and `false` as given;
 * `auto` after `probe` (FFI, libc, epoll) passes, and when it fails, no L4 worker and one
 * warning saying why. The warning is the only line: a node where the loop cannot run (musl,
 * no FFI) serves on Deno's I/O instead of exiting at each start.
 */
export function chooseL4Worker(
  requested: boolean | "auto",
  options: { logger: Logger; probe?: () => EngineProbe },
): boolean {
  if (requested !== "auto") return requested;
  const probe = (options.probe ?? probeEngine)();
  if (probe.ok) return true;
  options.logger.warn("L4 worker off: TCP and UDP stay on Deno's I/O", {
    reason: probe.reason,
  });
  return false;
}

/**
 * The node proxy; a pool of them with `--workers` above 1; with `--l4-worker` (or `auto` where
 * its probe passes), TCP and UDP in a worker of their own beside it (or beside the pool's HTTP
 * workers).
 */
function dataPlane(ctx: RunContext, caCerts: string[] | undefined): DataPlane {
  const { config, registry } = ctx;
  const logger = ctx.logger.with({ room: "proxy" });
  const workers = proxyWorkers(config.proxy.workers, availableCpus(), logger);
  const proxyOpts = {
    hostname: config.proxy.address,
    httpPort: config.proxy.httpPort,
    domainAliases: config.domainAliases,
    reusePort: config.reusePort,
    ...config.proxy.options,
    caCerts,
  };
  const l4Worker = chooseL4Worker(config.proxy.l4Worker, { logger });
  if (workers === 1 && l4Worker) {
    return new SplitPlane({
      proxy: { ...proxyOpts, logger, registry },
      worker: proxyOpts,
      udpWaitMs: UDP_ANSWER_WAIT_MS,
      // auto: a worker that fails to start after the probe passed falls back too.
      l4Optional: config.proxy.l4Worker === "auto",
    });
  }
  return workers > 1 || l4Worker
    ? new ProxyPool({
      workers,
      l4Worker,
      proxy: proxyOpts,
      logger,
      udpWaitMs: UDP_ANSWER_WAIT_MS,
      registry,
    })
    : new NodeProxy({ ...proxyOpts, logger, registry });
}

/**
 * The eBPF fast path, or why not: chosen at start, before the first config so that config
 * reaches it. Until then, and on userspace, it takes configs and addresses and does nothing.
 */
export class DatapathService implements Service {
  readonly name = "eBPF data path";
  readonly #ctx: RunContext;
  readonly #proxy: ProxyListener;
  readonly #addresses: "cluster-ip" | "given";
  #fastPath: FastPath | null = null;

  constructor(ctx: RunContext, proxy: ProxyListener, o: { addresses: "cluster-ip" | "given" }) {
    this.#ctx = ctx;
    this.#proxy = proxy;
    this.#addresses = o.addresses;
  }

  async start(): Promise<void> {
    const { config, registry } = this.#ctx;
    const d = config.datapath;
    const logger = this.#ctx.logger.with({ room: "datapath" });
    try {
      const selected = await selectDatapath({
        mode: d.mode,
        cgroup: d.cgroup,
        bpffs: d.bpffs,
        object: d.object,
        kernelRelease: d.kernelRelease,
        libbpfPath: d.libbpf,
        graceMs: d.graceMs,
        logger,
        verbose: config.log.level === "debug",
      });
      this.#fastPath = new FastPath({
        selected,
        graceMs: d.graceMs,
        proxy: this.#proxy,
        addresses: this.#addresses,
        logger,
        registry,
      });
      logger.info("data path chosen", {
        datapath: selected.choice.datapath,
        reason: selected.choice.reason,
      });
    } catch (e) {
      if (e instanceof DatapathError) throw new CliError(e.message);
      throw e;
    }
  }

  /** Left pinned and attached: sockets stay balanced until the next meshd takes over. */
  stop(): void {
    this.#fastPath?.close();
  }

  apply(config: MeshConfig): void {
    this.#fastPath?.apply(config);
  }

  setAddresses(addresses: MeshAddresses): void {
    this.#fastPath?.setAddresses(addresses);
  }

  status(): unknown {
    return this.#fastPath?.status();
  }
}

/**
 * Where the eBPF path sends ports that need the L7 proxy: this pod's own address (the one it
 * advertises), else the proxy's bind address, else loopback when it binds every address.
 */
function redirectListener(config: RunConfig, advertise: string): ProxyListener {
  const bind = config.proxy.address;
  const own = advertise || (bind === "0.0.0.0" || bind === "::" ? "127.0.0.1" : bind);
  return {
    ...(own.includes(":") ? { ipv6: own } : { ipv4: own }),
    httpPort: config.proxy.httpPort,
  };
}

/** The API's port, and the health probes' and the metrics' when they have their own. */
export class ApiServers implements Service {
  readonly name = "API, health and metrics ports";
  readonly #ctx: RunContext;
  readonly #agent: NodeAgent;
  api: ApiServer | null = null;
  health: ApiServer | null = null;
  metrics: ApiServer | null = null;

  constructor(ctx: RunContext, agent: NodeAgent) {
    this.#ctx = ctx;
    this.#agent = agent;
  }

  /** `host:port` of the API, for the "meshd ready" line. */
  get apiAddress(): string {
    return this.api ? `${this.api.addr.hostname}:${this.api.addr.port}` : "";
  }

  async start(): Promise<void> {
    const { api, health } = this.#ctx.config;
    this.api = await this.#serve("api", "the API", api.address, api.port);
    if (health.port !== undefined) {
      this.health = await this.#serve("health", "the health probes", health.address, health.port);
    }
    if (health.metricsPort !== undefined) {
      this.metrics = await this.#serve(
        "metrics",
        "the metrics",
        health.address,
        health.metricsPort,
      );
    }
  }

  /** Lets the probes' port go (a drain: the kubelet probes the successor there). */
  async stopHealth(): Promise<void> {
    const h = this.health;
    this.health = null;
    await h?.shutdown();
  }

  async stop(): Promise<void> {
    await this.metrics?.shutdown();
    await this.stopHealth();
    await this.api?.shutdown();
  }

  async #serve(
    name: "api" | "health" | "metrics",
    what: string,
    address: string,
    port: number,
  ): Promise<ApiServer> {
    try {
      return await serveApi({
        hostname: address,
        port,
        source: this.#agent,
        logger: this.#ctx.logger.with({ room: "api" }),
        serves: name === "api" ? undefined : [name],
        name,
        reusePort: this.#ctx.config.reusePort,
      });
    } catch (e) {
      throw new CliError(
        `Cannot listen on ${address}:${port} for ${what}: ${(e as Error).message}`,
      );
    }
  }
}

/** The process's memory, on `/metrics`. */
function registerProcessMetrics(registry: Registry): void {
  registry.collect(
    "meshd_process_memory_bytes",
    "Memory of the meshd process: rss, heap_total, heap_used, external.",
    ["kind"],
    () => {
      const m = Deno.memoryUsage();
      return [
        [["rss"], m.rss],
        [["heap_total"], m.heapTotal],
        [["heap_used"], m.heapUsed],
        [["external"], m.external],
      ];
    },
  );
}

/** One provider's meshd: its services in start order, and when it is ready. */
export interface Assembly {
  services: Service[];
  /** What a drain lets go of. */
  node: NodeServices;
  /** The mesh DNS responder's port while it listens, else null. */
  dnsPort: () => number | null;
  /**
   * Resolves once meshd is ready to say so (null), or with the signal that came first. Called
   * once every service started.
   */
  untilReady: () => Promise<string | null>;
  /** The fields of the "meshd ready" line. */
  readyFields: () => Record<string, unknown>;
}
