/**
 * Providers turn an outside source of Kubernetes-style objects into domain objects. The file
 * provider is the embedded default.
 *
 * Nothing here loads the YAML library: the reading thread parses, and {@linkcode decodeFiles}
 * loads the parser on its first call (about 6 MB of RSS a serving process never needs).
 *
 * @module
 */
export * from "./config_limits.ts";
export type { ParsedFile, RawDocument } from "./parse_file.ts";
export * from "./object_loader.ts";
export * from "./read_config_files.ts";
export * from "./file_provider.ts";
