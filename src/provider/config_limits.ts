/**
 * Bounds on config files and the file type the readers share; no parser here, so the serving
 * thread can import these without loading the YAML library (only the reading thread parses).
 *
 * @module
 */

/**
 * Bounds on one config file, so a hostile or broken file costs a bounded amount of time and
 * memory and becomes an error naming it.
 */
export interface ConfigLimits {
  /** Bytes in one file. */
  maxFileBytes: number;
  /** YAML aliases (`*name`) in one file. */
  maxAliases: number;
  /** Nesting of maps and lists in one document. */
  maxDepth: number;
  /** Documents in one file, and items of its `List`s, all counted. */
  maxDocuments: number;
}

/**
 * The defaults: 4 MiB a file (an EndpointSlice of 1,000 endpoints is about 200 kB), 100
 * aliases, 64 levels (a Kubernetes object nests about 6 deep; a `List` adds 2) and 20,000
 * documents (4 MiB of `--- {}` is 500,000 of them: 30 s of parsing and 800 MB on the reading
 * thread, past the DaemonSet's memory limit; a Service is at least 60 bytes).
 */
export const DEFAULT_CONFIG_LIMITS: Readonly<ConfigLimits> = {
  maxFileBytes: 4 * 1024 * 1024,
  maxAliases: 100,
  maxDepth: 64,
  maxDocuments: 20_000,
};

/** A file's path and text. */
export interface SourceFile {
  path: string;
  text: string;
  /**
   * Why the file could not be read (too large, not UTF-8, gone): the file keeps its last good
   * objects, and this is reported as its error. `text` is empty then.
   */
  error?: string;
}
