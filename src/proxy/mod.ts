/**
 * The node proxy: HTTP routed by Host, TCP on a listener per service port, round-robin over
 * ready endpoints. It knows {@linkcode MeshConfig} and nothing of Kubernetes.
 *
 * @module
 */
export { NodeProxy } from "./node_proxy.ts";
export type { ListenerState, NodeProxyOptions } from "./node_proxy.ts";
export { buildRouteTable, lookupHttpRoute } from "./route_table.ts";
export type { Route, RouteTable } from "./route_table.ts";
export { RoundRobin } from "./balancer.ts";
export type { Connect } from "./tcp_proxy.ts";
