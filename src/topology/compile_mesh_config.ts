import { buildMeshConfig, type BuildMeshConfigOptions } from "./build_mesh_config.ts";
import { buildTopology, type BuildTopologyOptions } from "./build_topology.ts";
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
