/**
 * The node agent: applies each MeshConfig to this node's data plane and reports its state.
 *
 * @module
 */
export { NodeAgent } from "./node_agent.ts";
export type { ConfigSource, NodeAgentOptions } from "./node_agent.ts";
export * from "./config_store.ts";
export * from "./zone_store.ts";
export * from "./successor.ts";
