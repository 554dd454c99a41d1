import { mallocTrimmer } from "../../ffi/malloc_trim.ts";
import type { ApiSource, Logger, Registry } from "../observability/mod.ts";
import type { DataPlane } from "../proxy/mod.ts";
import type { AppliedConfig, ConfigStore } from "./config_store.ts";
import type { ConfigError, MeshConfig, MeshService } from "../topology/mod.ts";

/** Options for {@linkcode NodeAgent}. */
export interface NodeAgentOptions {
  /** The node proxy, or the pool of proxy workers. */
  proxy: DataPlane;
  logger: Logger;
  /** Where its metrics go: meshd's one registry, which the proxy's are in too. */
  registry: Registry;
  /** Called after each new config reached the proxy. */
  onApplied?: (config: MeshConfig) => void;
  /** Where each applied config is saved, to route from at the next start. */
  store?: ConfigStore;
  /** `/api/status/nodes`: the leader's view of every node; absent without distribution. */
  nodes?: () => unknown;
  /**
   * The node's data path beside the proxy (the eBPF maps): given each config the proxy took,
   * and shown in `/api/status`. Its failures are its own to log: the hooks fail open, to the
   * proxy.
   */
  datapath?: { apply(config: MeshConfig): void; status(): unknown };
  /**
   * A full garbage collection, run once after an apply that added or removed at least
   * {@linkcode COLLECT_AFTER_SERVICES} services, at most once every
   * {@linkcode COLLECT_EVERY_MS}. Default: V8's `gc()` when meshd runs with
   * `--v8-flags=--expose-gc` (as every launch of meshd does), followed by glibc's
   * `malloc_trim` where FFI is permitted, else none. A large config grows V8's young generation
   * and leaves the old config's pages committed; V8 gives them back only at a memory-reducing
   * collection, some 10 to 30 s later. At 1,000 services this returns about 20 MiB at once,
   * and the trim 2 to 3.5 MiB more of the malloc heap.
   */
  collectGarbage?: (() => void) | null;
  /** The least time between two collections, ms; default {@linkcode COLLECT_EVERY_MS}. */
  collectEveryMs?: number;
}

/**
 * V8's `gc()` (there with `--expose-gc`) as a full, memory-reducing collection: the one V8 runs
 * when memory runs out, which also shrinks the young generation. A plain `gc()` right after a
 * large apply leaves it as large as the apply's allocations made it. Then, where FFI is
 * permitted (as in the shipped binary), glibc's `malloc_trim`, which gives back what the build
 * freed in the middle of the malloc heap.
 */
function fullCollection(): (() => void) | null {
  const gc = (globalThis as { gc?: (options?: unknown) => void }).gc;
  if (!gc) return null;
  const trim = mallocTrimmer();
  return () => {
    gc({ type: "major", execution: "sync", flavor: "last-resort" });
    void trim?.();
  };
}

/** How many services an apply must add or remove before a garbage collection follows it. */
export const COLLECT_AFTER_SERVICES = 200;
/** The least time between two collections {@linkcode NodeAgentOptions.collectGarbage} runs. */
export const COLLECT_EVERY_MS = 30_000;

/** Problems of each kind `meshd_status_problem_info` shows. */
export const PROBLEMS_SHOWN = 3;
/** The longest message in `meshd_status_problem_info`. */
export const PROBLEM_MESSAGE_MAX = 200;

/** A rejected object's problem in one line: where, then what. */
function describeProblem(p: Problem): string {
  // The loader's messages name the file already ("Cannot parse file "a.yaml", document 1").
  if (p.file && p.message.includes(`"${p.file}"`)) return p.message;
  const at = [p.file, p.document !== undefined ? `document ${p.document}` : undefined, p.field]
    .filter((x) => x !== undefined).join(", ");
  return at ? `${at}: ${p.message}` : p.message;
}

/** How long an applied config waits before it is saved; newer ones replace it meanwhile. */
export const SAVE_DELAY_MS = 100;

/** Where the config in force came from. */
export type ConfigSource = "provider" | "leader" | "disk";

/** A problem with the input, or a listener not bound, as `/api/status` shows it. */
interface Problem {
  file?: string;
  document?: number;
  field?: string;
  /** `tcp host:port` or `udp host:port`: a service port the proxy cannot bind (yet). */
  listener?: string;
  /** `namespace/name:port` of that service port. */
  service?: string;
  message: string;
}

/**
 * The node agent: applies each MeshConfig (from this pod's controller, the leader or the disk)
 * to the proxy and the eBPF maps, and reports the node's state to the API. Applies are
 * serialised, so configs reach the proxy in order.
 */
export class NodeAgent implements ApiSource {
  readonly #opts: NodeAgentOptions;
  #config: MeshConfig | null = null;
  #epoch = "";
  #source: ConfigSource | null = null;
  #applying: Promise<void> = Promise.resolve();
  #saveErrors = 0;
  #toSave: AppliedConfig | null = null;
  #saving: Promise<void> | null = null;
  #saveNow: () => void = () => {};
  #saveTimer: ReturnType<typeof setTimeout> | undefined;
  #errors: Problem[] = [];
  #warnings: string[] = [];
  readonly #collect: (() => void) | null;
  #collectTimer: ReturnType<typeof setTimeout> | undefined;
  #collectedAt = -Infinity;

  constructor(options: NodeAgentOptions) {
    this.#opts = options;
    this.#collect = options.collectGarbage === undefined
      ? fullCollection()
      : options.collectGarbage;
    options.registry.collect(
      "meshd_config_version",
      "Version of the MeshConfig the proxy routes by.",
      [],
      () => [[[], options.proxy.version]],
    );
    // What /api/status lists (the API port stays on the node's loopback), where a scrape and
    // `meshd status` (through the pod proxy) can read it.
    options.registry.collect(
      "meshd_status_problems",
      "Problems /api/status lists: invalid_object (objects rejected), listener_unbound (service " +
        "ports not bound), config_warning, save_failed (saves of the applied config that failed).",
      ["kind"],
      () => [
        [["invalid_object"], this.#errors.length],
        [["listener_unbound"], options.proxy.bindErrors().length],
        [["config_warning"], this.#warnings.length],
        [["save_failed"], this.#saveErrors],
      ],
    );
    options.registry.collect(
      "meshd_status_problem_info",
      `1 for each of the first ${PROBLEMS_SHOWN} problems of a kind /api/status lists, with its ` +
        `message (at most ${PROBLEM_MESSAGE_MAX} characters).`,
      ["kind", "message"],
      () => this.#problemSeries(),
    );
    options.registry.collect(
      "meshd_config_source",
      "1 for where the config in force came from: provider, leader, or disk (the config saved " +
        "at the last run, while no leader has been reached).",
      ["source"],
      () => this.#source ? [[[this.#source], 1]] : [],
    );
  }

  /** `/api/status/nodes`, when this node takes part in distribution. */
  get nodes(): (() => unknown) | undefined {
    return this.#opts.nodes;
  }

  /** `/metrics`: the proxy's (summed over its workers) and the process's. */
  metrics(): string | Promise<string> {
    const proxy = this.#opts.proxy;
    return proxy.metrics ? proxy.metrics() : this.#opts.registry.render();
  }

  /** What is wrong with the input of the config in force, for `/api/status`. */
  reportInput(report: { errors: readonly ConfigError[]; warnings: readonly string[] }): void {
    this.#errors = report.errors.map((e) => ({
      file: e.source?.file,
      document: e.source && e.source.doc >= 0 ? e.source.doc + 1 : undefined,
      field: e.field,
      message: e.message,
    }));
    this.#warnings = [...report.warnings];
  }

  /** A load that could not be compiled: shown beside the input's errors until the next. */
  reportFailure(message: string): void {
    this.#errors = [...this.#errors, { message }];
  }

  /**
   * Applies a config to the data plane, whole: the proxy switches to the new routes in one
   * step, or throws and keeps the old ones (and this node keeps reporting the old version).
   * Then saves it in the background, when a store is set ({@linkcode NodeAgent.flush} waits for
   * the save). Applies run one at a time, in order.
   */
  apply(
    applied: AppliedConfig,
    source: ConfigSource,
    fields: Record<string, unknown> = {},
  ): Promise<void> {
    const run = this.#applying.then(() => this.#apply(applied, source, fields));
    this.#applying = run.catch(() => {});
    return run;
  }

  async #apply(
    { epoch, config }: AppliedConfig,
    source: ConfigSource,
    fields: Record<string, unknown>,
  ): Promise<void> {
    const log = this.#opts.logger;
    const started = performance.now();
    await this.#opts.proxy.apply(config);
    this.#opts.datapath?.apply(config);
    const previous = this.#config;
    this.#config = config;
    this.#epoch = epoch;
    this.#source = source;
    this.#opts.onApplied?.(config);
    // Ports the proxy could not bind are errors of this apply too (logged each by the proxy).
    const unbound = this.#opts.proxy.bindErrors().length;
    log.info("config applied", {
      version: config.version,
      from: source,
      services: config.services.length,
      ms: Math.round((performance.now() - started) * 10) / 10,
      ...fields,
      errors: Number(fields["errors"] ?? 0) + unbound,
      ...(unbound ? { unboundListeners: unbound } : {}),
    });
    if (this.#opts.store && source !== "disk") this.#save({ epoch, config });
    this.#collectAfter(previous, config);
  }

  /**
   * Schedules a collection when `config` added or removed many services against `previous`
   * (the first config counts whole). Changed endpoints, or a snapshot of the same services
   * after a reconnect, do not: on a leader at 10,000 services a collection stops the thread
   * for a while.
   */
  #collectAfter(previous: MeshConfig | null, config: MeshConfig): void {
    const collect = this.#collect;
    if (!collect || this.#collectTimer !== undefined) return;
    const every = this.#opts.collectEveryMs ?? COLLECT_EVERY_MS;
    if (performance.now() - this.#collectedAt < every) return;
    const key = (s: MeshService) => `${s.namespace}/${s.name}`;
    const before = new Set(previous?.services.map(key));
    let replaced = 0;
    for (const s of config.services) if (!before.delete(key(s))) replaced++;
    replaced += before.size;
    if (replaced < COLLECT_AFTER_SERVICES) return;
    // After this turn: what the apply let go of (the old config, the build's garbage) is
    // unreachable by then.
    this.#collectTimer = setTimeout(() => {
      this.#collectTimer = undefined;
      const started = this.#collectedAt = performance.now();
      collect();
      this.#opts.logger.debug("garbage collected after a large config", {
        version: config.version,
        services: replaced,
        ms: Math.round((performance.now() - started) * 10) / 10,
      });
    }, 0);
  }

  /**
   * Saves an applied config in the background, after {@linkcode SAVE_DELAY_MS}: writing 10,000
   * services takes tens of milliseconds, which would delay the leader's acknowledgement and the
   * next version. Saves are coalesced: while one waits or is written, only the newest config
   * applied meanwhile is saved after it. The file is a fallback for the next start, which asks
   * the leader for what came since.
   */
  #save(applied: AppliedConfig): void {
    this.#toSave = applied;
    if (this.#saving) return;
    this.#saving = new Promise<void>((resolve) => {
      this.#saveNow = resolve;
      this.#saveTimer = setTimeout(resolve, SAVE_DELAY_MS);
    }).then(() => this.#writeSaves());
  }

  async #writeSaves(): Promise<void> {
    clearTimeout(this.#saveTimer);
    try {
      while (this.#toSave) {
        const next = this.#toSave;
        this.#toSave = null;
        try {
          await this.#opts.store!.save(next);
        } catch (e) {
          // It routes on the new config all the same; only a restart would start older.
          this.#saveErrors++;
          this.#opts.logger.error("cannot save the applied config", {
            error: (e as Error).message,
          });
        }
      }
    } finally {
      this.#saving = null;
    }
  }

  /** Resolves once every config applied so far is saved (or failed to be); saves at once. */
  async flush(): Promise<void> {
    while (this.#saving) {
      this.#saveNow();
      await this.#saving;
    }
  }

  /**
   * Loads the saved config, if there is one, and applies it, so the node routes before it
   * reaches any controller. A file that cannot be used is logged and left alone.
   */
  async restore(): Promise<boolean> {
    const store = this.#opts.store;
    if (!store) return false;
    let saved: AppliedConfig | null;
    try {
      saved = await store.load();
    } catch (e) {
      this.#opts.logger.warn("not using the saved config", { error: (e as Error).message });
      return false;
    }
    if (!saved) return false;
    await this.apply(saved, "disk", { file: store.path });
    return true;
  }

  config(): MeshConfig | null {
    return this.#config;
  }

  /** The config in force with its epoch, the base of the leader's deltas. */
  current(): AppliedConfig | null {
    return this.#config && { epoch: this.#epoch, config: this.#config };
  }

  /** A config is applied, the proxy routes by it, and every listener it needs is bound. */
  ready(): boolean {
    return this.notReadyReason() === "";
  }

  /** Why {@linkcode ready} is false, in one line; "" when ready. */
  notReadyReason(): string {
    if (this.#config === null) return "no config applied yet";
    if (this.#opts.proxy.version !== this.#config.version) {
      return `config version ${this.#config.version} is not in force yet`;
    }
    const unbound = this.#opts.proxy.bindErrors();
    if (unbound.length === 0) return "";
    return `cannot bind ${
      unbound.map((e) => `${e.protocol} listener "${e.address}" (${e.error})`).join(", ")
    }; retrying`;
  }

  services(): unknown[] {
    const c = this.#config;
    if (!c) return [];
    const out = [];
    for (const s of c.services) {
      for (const p of s.ports) {
        const l = this.#opts.proxy.listener(p.protocol, p.listenPort);
        const host = `${s.name}.${s.namespace}.${c.domain}`;
        out.push({
          service: s.name,
          namespace: s.namespace,
          portName: p.name,
          port: p.port,
          protocol: p.protocol,
          address: l.address,
          ...(p.protocol === "http" ? { host: p.port === 80 ? host : `${host}:${p.port}` } : {}),
          served: l.served,
          ...(l.reason ? { reason: l.reason } : {}),
          endpoints: {
            total: p.endpoints.length,
            ready: p.endpoints.filter((e) => e.ready).length,
          },
          ...(p.split ? { split: p.split.name } : {}),
        });
      }
    }
    return out;
  }

  /** `meshd_status_problem_info`: the first problems of each kind, messages stable and cut. */
  #problemSeries(): [string[], number][] {
    const out: [string[], number][] = [];
    const add = (kind: string, messages: string[]): void => {
      for (const m of new Set(messages.slice(0, PROBLEMS_SHOWN))) {
        const cut = m.length > PROBLEM_MESSAGE_MAX
          ? `${m.slice(0, PROBLEM_MESSAGE_MAX - 3)}...`
          : m;
        out.push([[kind, cut], 1]);
      }
    };
    add("invalid_object", this.#errors.map(describeProblem));
    // Without the count of tries, which changes at each retry (a new series each time).
    add(
      "listener_unbound",
      this.#opts.proxy.bindErrors().map((e) =>
        `Cannot bind ${e.protocol} listener on "${e.address}" for "${e.service}": ${e.error}`
      ),
    );
    add("config_warning", this.#warnings);
    return out;
  }

  #bindProblems(): Problem[] {
    return this.#opts.proxy.bindErrors().map((e) => ({
      listener: `${e.protocol} ${e.address}`,
      service: e.service,
      message:
        `Cannot bind ${e.protocol} listener on "${e.address}" for "${e.service}": ${e.error}; ` +
        `tried ${e.attempts} time${e.attempts === 1 ? "" : "s"}, retrying`,
    }));
  }

  status(): unknown {
    return {
      ready: this.ready(),
      version: this.#config?.version ?? 0,
      ...(this.#source ? { from: this.#source } : {}),
      ...(this.#opts.store ? { saveErrors: this.#saveErrors } : {}),
      errors: [...this.#errors, ...this.#bindProblems()],
      warnings: this.#warnings,
      ...(this.#opts.datapath ? { datapath: this.#opts.datapath.status() } : {}),
    };
  }
}
