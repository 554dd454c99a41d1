/**
 * Distribution: how the leader's MeshConfig reaches every node, as versioned deltas.
 *
 * @module
 */
export * from "./config_delta.ts";
export * from "./config_history.ts";
export * from "./grpc_service.ts";
export * from "./distribution_server.ts";
export * from "./distribution_client.ts";
export * from "./leader_identity.ts";
