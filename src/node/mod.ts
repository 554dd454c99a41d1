/**
 * The node agent: applies each MeshConfig to this node's data plane and reports its state.
 *
 * @module
 */
export { MeshNode } from "./mesh_node.ts";
export type { ConfigSource, MeshNodeOptions } from "./mesh_node.ts";
export * from "./config_store.ts";
export * from "./zone_store.ts";
export * from "./successor.ts";
