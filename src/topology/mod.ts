/**
 * The mesh model: Kubernetes-style objects in, a versioned {@linkcode MeshConfig} out. Pure:
 * no I/O, no clock, no randomness, so every case is a golden-file test.
 *
 * @example
 * ```ts
 * import { buildMeshConfig, buildTopology, decodeObject } from "./mod.ts";
 * const objects = raws.map((r) => decodeObject(r)).flatMap((r) => r.status === "ok" ? [r.object] : []);
 * const { config } = buildMeshConfig(buildTopology(objects), { previous: null });
 * ```
 *
 * @module
 */
export * from "./objects.ts";
export * from "./errors.ts";
export * from "./mesh_config.ts";
export type { LoadResult } from "./load_result.ts";
export { ANNOTATION_PREFIXES, MAX_RETRY_ATTEMPTS, parseServiceAnnotations } from "./annotations.ts";
export type { AnnotationProblem, AnnotationResult } from "./annotations.ts";
export {
  MAX_BREAKER_EXPRESSION_LENGTH,
  MAX_BREAKER_NESTING,
  MAX_BREAKER_TERMS,
  parseBreakerExpression,
} from "./circuit_breaker.ts";
export { decodeObject, isIpv4, isIpv6, SUPPORTED_KINDS } from "./decode.ts";
export { LINEAR_REGEX_FLAGS, pathRegexSource, userRegex } from "./user_regex.ts";
export type { DecodeResult } from "./decode.ts";
export { buildTopology, TopologyCache } from "./build_topology.ts";
export { sameJson } from "./same_json.ts";
export type {
  BuildTopologyOptions,
  Topology,
  TopologyPort,
  TopologyService,
} from "./build_topology.ts";
export { buildMeshConfig, DEFAULT_TCP_PORTS, DEFAULT_UDP_PORTS } from "./build_mesh_config.ts";
export type {
  BuildMeshConfigOptions,
  BuildMeshConfigResult,
  PortRange,
} from "./build_mesh_config.ts";
export { compileMeshConfig, unreadableObjects } from "./compile_mesh_config.ts";
export type { CompileOptions } from "./compile_mesh_config.ts";
export { compareNames } from "./compare_names.ts";
export { compareAddresses } from "./compare_addresses.ts";
