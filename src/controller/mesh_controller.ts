import type { ConfigRef, DistributionServer, StampedConfig } from "../distribution/mod.ts";
import type { Logger, Registry } from "../observability/mod.ts";
import {
  type CompileOptions,
  type LoadResult,
  type MeshConfig,
  TopologyCache,
} from "../topology/mod.ts";
import { compileLoad, type InputReport } from "./compile_load.ts";

/** A running watch of the objects the config is built from. */
export interface ObjectWatch {
  stop(): Promise<void>;
}

/** Options for {@linkcode MeshController}. */
export interface MeshControllerOptions {
  logger: Logger;
  /** This pod's name; part of each epoch, so logs say whose term a version is from. */
  identity: string;
  server: DistributionServer;
  /** Starts watching the objects and calls `onLoad` with every load. */
  watch: (onLoad: (result: LoadResult) => Promise<void>) => ObjectWatch;
  /** How each load is compiled into the config that follows the last. */
  compile: CompileOptions;
  /**
   * Where the problems of each load are logged (default: `logger`). meshd gives its node
   * agent's log: the leader's `/api/status` shows them, as a meshd on its own does.
   */
  inputLogger?: Logger;
  /** Told what is wrong with each load compiled: this pod's node agent shows it. */
  onInput?: (report: InputReport) => void;
  /** The config this pod's own node has now: the start of a new term's history. */
  seed: () => StampedConfig | null;
  /** Called with each config the controller settles on, the first of a term included. */
  onConfig?: (config: MeshConfig) => void;
  /** Where the distribution metrics go. */
  registry?: Registry;
}

/** `/api/status/nodes`. */
export interface NodesReport {
  leading: boolean;
  /** The config the leader distributes: its epoch and version; null before the first. */
  current: ConfigRef | null;
  nodes: ReturnType<DistributionServer["nodes"]>;
}

/**
 * The controller, active on the elected pod only. Each term of leadership gets a new epoch:
 * the controller seeds the distribution history with the config its own node has, starts
 * watching the cluster, and publishes every config it compiles to all nodes. It stops
 * watching and drops every node's stream when the term ends. Terms start and end one at a time.
 */
export class MeshController {
  readonly #o: MeshControllerOptions;
  /** Each compile resolves again only the Services whose objects changed. */
  readonly #cache = new TopologyCache();
  #leading = false;
  #term = 0;
  #epoch = "";
  #watch: ObjectWatch | null = null;
  #previous: MeshConfig | null = null;
  #chain: Promise<void> = Promise.resolve();
  #published = 0;

  constructor(options: MeshControllerOptions) {
    this.#o = options;
    const reg = options.registry;
    if (reg) {
      reg.collect(
        "meshd_controller_leading",
        "1 while this meshd is the elected controller.",
        [],
        () => [[[], this.#leading ? 1 : 0]],
      );
      reg.collect(
        "meshd_distribution_nodes",
        "Nodes the leader knows, by state: in_sync, behind, failed (could not apply the " +
          "last version sent), disconnected.",
        ["state"],
        () => {
          const counts: Record<string, number> = {
            in_sync: 0,
            behind: 0,
            failed: 0,
            disconnected: 0,
          };
          for (const n of this.#leading ? options.server.nodes() : []) {
            const state = !n.connected
              ? "disconnected"
              : n.error
              ? "failed"
              : n.inSync
              ? "in_sync"
              : "behind";
            counts[state]!++;
          }
          return Object.entries(counts).map(([k, v]) => [[k], v]);
        },
      );
      reg.collect(
        "meshd_distribution_node_applied_version",
        "The config version each node last said it applied, as the leader knows it.",
        ["node"],
        () =>
          this.#leading
            ? options.server.nodes().map((n) => [[n.node], n.applied ?? 0] as [string[], number])
            : [],
      );
      reg.collect(
        "meshd_distribution_sent_bytes_total",
        "Bytes of config, whole or delta, the leader sent to nodes.",
        [],
        () => [[[], options.server.bytesSent]],
      );
      reg.collect(
        "meshd_distribution_published_total",
        "Config versions this meshd published as leader.",
        [],
        () => [[[], this.#published]],
      );
    }
  }

  get leading(): boolean {
    return this.#leading;
  }

  /** The epoch of the current term; empty when not leading. */
  get epoch(): string {
    return this.#leading ? this.#epoch : "";
  }

  /** Starts a term (called when the Lease is won). */
  lead(): Promise<void> {
    return this.#enqueue(() => this.#lead());
  }

  /** Ends the term (the Lease is lost, or meshd stops). */
  stepDown(reason: string): Promise<void> {
    return this.#enqueue(() => this.#stepDown(reason));
  }

  /** What `/api/status/nodes` shows. */
  report(): NodesReport {
    const cur = this.#leading ? this.#o.server.history.current : null;
    return {
      leading: this.#leading,
      current: cur && { epoch: cur.epoch, version: cur.config.version },
      nodes: this.#leading ? this.#o.server.nodes() : [],
    };
  }

  #enqueue(step: () => Promise<void>): Promise<void> {
    const run = this.#chain.then(step);
    this.#chain = run.catch((e) =>
      this.#o.logger.error("controller step failed", { error: String(e) })
    );
    return this.#chain;
  }

  #lead(): Promise<void> {
    if (this.#leading) return Promise.resolve();
    const log = this.#o.logger;
    const server = this.#o.server;
    this.#leading = true;
    const term = ++this.#term;
    this.#epoch = `${this.#o.identity}/${Date.now().toString(36)}-${
      crypto.randomUUID().slice(0, 8)
    }`;
    server.reset();
    const seed = this.#o.seed();
    if (seed) server.publish(seed.config, seed.epoch);
    this.#previous = seed?.config ?? null;
    let first = true;
    log.info("controller started", {
      epoch: this.#epoch,
      from: seed ? { epoch: seed.epoch, version: seed.config.version } : null,
    });
    this.#watch = this.#o.watch((result) => {
      if (!this.#leading || term !== this.#term) return Promise.resolve();
      const { config, report } = compileLoad(result, {
        compile: { ...this.#o.compile, cache: this.#cache },
        previous: this.#previous,
        logger: this.#o.inputLogger ?? log,
      });
      this.#o.onInput?.(report);
      const changed = config !== this.#previous;
      if (changed) {
        server.publish(config, this.#epoch);
        this.#published++;
        this.#previous = config;
        log.info("config published", {
          version: config.version,
          epoch: this.#epoch,
          services: config.services.length,
          nodes: server.nodes().filter((n) => n.connected).length,
          at: Date.now(),
        });
      }
      if (changed || first) this.#o.onConfig?.(config);
      first = false;
      return Promise.resolve();
    });
    return Promise.resolve();
  }

  async #stepDown(reason: string): Promise<void> {
    if (!this.#leading) return;
    this.#leading = false;
    const w = this.#watch;
    this.#watch = null;
    await w?.stop();
    this.#o.server.reset();
    this.#o.logger.info("controller stopped", { reason });
  }
}
