import type { ApiSource, Logger } from "../observability/mod.ts";
import type { LoadResult } from "../provider/mod.ts";
import type { NodeProxy } from "../proxy/mod.ts";
import {
  compileMeshConfig,
  type CompileOptions,
  describeSource,
  type MeshConfig,
} from "../topology/mod.ts";

/** Options for {@linkcode MeshNode}. */
export interface MeshNodeOptions {
  proxy: NodeProxy;
  logger: Logger;
  compile: CompileOptions;
  /** Called after each new config reached the proxy. */
  onApplied?: (config: MeshConfig) => void;
}

/** A problem with the input, as `/api/status` shows it. */
interface Problem {
  file?: string;
  document?: number;
  field?: string;
  message: string;
}

/**
 * One node of the mesh: takes each load of objects, compiles the MeshConfig, applies it to the
 * proxy and answers the API. Applies are serialised, so configs reach the proxy in order.
 */
export class MeshNode implements ApiSource {
  readonly #opts: MeshNodeOptions;
  #config: MeshConfig | null = null;
  #errors: Problem[] = [];
  #warnings: string[] = [];

  constructor(options: MeshNodeOptions) {
    this.#opts = options;
    const registry = options.proxy.registry;
    registry.collect(
      "meshd_config_version",
      "Version of the MeshConfig the proxy routes by.",
      [],
      () => [[[], options.proxy.version]],
    );
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

  /** `/metrics`: the proxy's and the process's. */
  metrics(): string {
    return this.#opts.proxy.registry.render();
  }

  /** Compiles and applies a load; bad objects were already dropped by the loader. */
  async load(result: LoadResult): Promise<void> {
    const log = this.#opts.logger;
    for (const e of result.errors) {
      log.error("invalid config", {
        file: e.source?.file,
        document: e.source && e.source.doc >= 0 ? e.source.doc + 1 : undefined,
        field: e.field,
        error: e.message,
      });
    }
    for (const w of result.warnings) log.warn(w);
    const started = performance.now();
    const { config, diagnostics } = compileMeshConfig(result.objects, {
      ...this.#opts.compile,
      previous: this.#config,
    });
    for (const d of diagnostics) {
      const fields = { object: d.object, source: d.source ? describeSource(d.source) : undefined };
      if (d.level === "error") log.error(d.message, fields);
      else log.warn(d.message, fields);
    }
    this.#errors = result.errors.map((e) => ({
      file: e.source?.file,
      document: e.source && e.source.doc >= 0 ? e.source.doc + 1 : undefined,
      field: e.field,
      message: e.message,
    }));
    this.#warnings = [...result.warnings, ...diagnostics.map((d) => `${d.object}: ${d.message}`)];
    if (config === this.#config) {
      log.debug("config unchanged", { version: config.version });
      return;
    }
    await this.#opts.proxy.apply(config);
    this.#config = config;
    this.#opts.onApplied?.(config);
    log.info("config applied", {
      version: config.version,
      services: config.services.length,
      errors: result.errors.length,
      // Compiling the objects and switching the proxy to the result.
      ms: Math.round((performance.now() - started) * 10) / 10,
    });
  }

  config(): MeshConfig | null {
    return this.#config;
  }

  ready(): boolean {
    return this.#config !== null && this.#opts.proxy.version === this.#config.version;
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

  status(): unknown {
    return {
      ready: this.ready(),
      version: this.#config?.version ?? 0,
      errors: this.#errors,
      warnings: this.#warnings,
    };
  }
}
