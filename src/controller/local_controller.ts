import type { Logger } from "../observability/mod.ts";
import {
  type CompileOptions,
  type LoadResult,
  type MeshConfig,
  TopologyCache,
} from "../topology/mod.ts";
import { compileLoad, type InputReport } from "./compile_load.ts";

/** The node agent, as a controller that feeds it sees it. */
export interface ConfigTarget {
  /** The config in force. */
  config(): MeshConfig | null;
  /** Applies a config to the data plane; `fields` go on the "config applied" log line. */
  apply(
    applied: { epoch: string; config: MeshConfig },
    source: "provider",
    fields: Record<string, unknown>,
  ): Promise<void>;
  /** What is wrong with the input of the config in force. */
  reportInput(report: InputReport): void;
  /** A load that could not be compiled at all: the config in force stays. */
  reportFailure(message: string): void;
}

/** Options for {@linkcode LocalController}. */
export interface LocalControllerOptions {
  /** This pod's node agent. */
  agent: ConfigTarget;
  compile: CompileOptions;
  /** The node agent's log: the input's problems are shown there, and on its `/api/status`. */
  logger: Logger;
}

/**
 * The controller of a meshd on its own (the file provider): compiles each load and applies it
 * to this pod's node agent, with no election and no distribution. Loads are applied in order.
 *
 * @example
 * ```ts
 * const controller = new LocalController({ agent, compile: {}, logger });
 * const provider = new FileProvider({ dir, logger, onLoad: (r) => controller.load(r) });
 * ```
 */
export class LocalController {
  readonly #o: LocalControllerOptions;
  /** Each compile resolves again only the Services whose objects changed. */
  readonly #cache = new TopologyCache();

  constructor(options: LocalControllerOptions) {
    this.#o = options;
  }

  /** Compiles and applies a load; bad objects were already dropped by the loader. */
  async load(result: LoadResult): Promise<void> {
    const { agent, logger } = this.#o;
    const started = performance.now();
    const previous = agent.config();
    let config: MeshConfig;
    try {
      const compiled = compileLoad(result, {
        compile: { ...this.#o.compile, cache: this.#cache },
        previous,
        logger,
      });
      config = compiled.config;
      agent.reportInput(compiled.report);
    } catch (e) {
      // The loader bounds what reaches the compiler; should it still fail, the config in force
      // stays and the failure shows where the operator looks, beside the input's errors.
      const message = `Cannot compile the config: ${(e as Error)?.message ?? String(e)}`;
      logger.error(message);
      agent.reportFailure(message);
      return;
    }
    if (config === previous) {
      logger.debug("config unchanged", { version: config.version });
      return;
    }
    await agent.apply({ epoch: "local", config }, "provider", {
      errors: result.errors.length,
      // Compiling the objects and switching the proxy to the result.
      ms: Math.round((performance.now() - started) * 10) / 10,
    });
  }
}
