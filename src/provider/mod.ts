/**
 * Providers turn an outside source of Kubernetes-style objects into domain objects. The file
 * provider is the embedded default.
 *
 * @module
 */
export * from "./parse_file.ts";
export * from "./object_loader.ts";
export * from "./read_config_files.ts";
export * from "./file_provider.ts";
