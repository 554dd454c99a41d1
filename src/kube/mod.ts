/**
 * meshd and the Kubernetes API: credentials and requests through `@kubernetes/client-node`,
 * list-and-watch reflectors, the kube provider, and Lease leader election.
 *
 * @module
 */
export * from "./api.ts";
export * from "./reflector.ts";
export * from "./kube_provider.ts";
export * from "./leader.ts";
export * from "./permissions.ts";
export * from "./token_review.ts";
export * from "./mesh_view.ts";
