import type { Logger } from "../observability/mod.ts";
import {
  compileMeshConfig,
  type CompileOptions,
  type ConfigError,
  describeSource,
  type LoadResult,
  type MeshConfig,
  unreadableObjects,
} from "../topology/mod.ts";

/** What is wrong with the input of a config: the node agent shows it in `/api/status`. */
export interface InputReport {
  /** Bad objects, each naming its file, document and field where it can. */
  errors: ConfigError[];
  /** The loader's warnings, then the compiler's warnings and errors about single objects. */
  warnings: string[];
}

/** Options for {@linkcode compileLoad}. */
export interface CompileLoadOptions {
  compile: CompileOptions;
  /** The config in force: the result follows its version, or is this object when unchanged. */
  previous: MeshConfig | null;
  /** Where each problem of the load is logged. */
  logger: Logger;
}

/**
 * Compiles a load into the config that follows `previous` (the same object when nothing
 * changed) and logs what is wrong with the objects. Throws only on a bug of the compiler.
 *
 * @example
 * ```ts
 * const { config, report } = compileLoad(result, { compile: {}, previous: null, logger });
 * ```
 */
export function compileLoad(
  result: LoadResult,
  options: CompileLoadOptions,
): { config: MeshConfig; report: InputReport } {
  const log = options.logger;
  for (const e of result.errors) {
    log.error("invalid config", {
      file: e.source?.file,
      document: e.source && e.source.doc >= 0 ? e.source.doc + 1 : undefined,
      field: e.field,
      error: e.message,
    });
  }
  for (const w of result.warnings) log.warn(w);
  for (const n of result.notes ?? []) log.debug(n);
  const { config, diagnostics } = compileMeshConfig(result.objects, {
    ...options.compile,
    previous: options.previous,
    unreadable: unreadableObjects(result.errors),
  });
  for (const d of diagnostics) {
    const fields = { object: d.object, source: d.source ? describeSource(d.source) : undefined };
    log[d.level](d.message, fields);
  }
  const warnings = [
    ...result.warnings,
    ...diagnostics.filter((d) => d.level !== "info").map((d) => `${d.object}: ${d.message}`),
  ];
  return { config, report: { errors: result.errors, warnings } };
}
