/**
 * Distribution: how the leader's MeshConfig reaches every node, as versioned deltas.
 *
 * @module
 */
export * from "./config_delta.ts";
export * from "./config_history.ts";
