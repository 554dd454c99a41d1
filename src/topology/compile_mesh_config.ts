import { buildMeshConfig, type BuildMeshConfigOptions } from "./build_mesh_config.ts";
import { buildTopology, type BuildTopologyOptions } from "./build_topology.ts";
import { type ConfigError, describeSource } from "./errors.ts";
import type { Diagnostic, MeshConfig } from "./mesh_config.ts";
import type { MeshObject } from "./objects.ts";

/** Options for {@linkcode compileMeshConfig}: those of both builders. */
export type CompileOptions = BuildTopologyOptions & BuildMeshConfigOptions;

/**
 * Objects to {@linkcode MeshConfig} in one step: {@linkcode buildTopology}, then
 * {@linkcode buildMeshConfig}. Pure.
 *
 * @example
 * ```ts
 * const { config, diagnostics } = compileMeshConfig(objects, { acl: true, previous });
 * ```
 */
export function compileMeshConfig(
  objects: readonly MeshObject[],
  options: CompileOptions = {},
): { config: MeshConfig; diagnostics: Diagnostic[] } {
  const topology = buildTopology(objects, options);
  const built = buildMeshConfig(topology, options);
  return { config: built.config, diagnostics: [...topology.diagnostics, ...built.diagnostics] };
}

/**
 * The objects a load could not read, by `Kind/namespace/name`, each with its error: the
 * builders' `unreadable` option, so a reference to one says it is broken, not absent.
 */
export function unreadableObjects(errors: readonly ConfigError[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of errors) {
    if (!e.key) continue;
    // "Cannot read Kind "ns/name" in <source>: <why>": keep where and why, not the name again.
    const cut = e.message.startsWith("Cannot read ") ? e.message.indexOf(": ") : -1;
    const why = cut >= 0 ? e.message.slice(cut + 2) : e.message;
    out[e.key] = e.source ? `${describeSource(e.source)}: ${why}` : why;
  }
  return out;
}
