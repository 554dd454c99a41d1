/**
 * The node proxy: HTTP/1.1 routed by Host, TCP and UDP on a listener per service port;
 * endpoints chosen by power of two choices with outlier detection; TrafficSplit in one hop;
 * SMI access control by source address; retries, timeouts and rate limits; metrics. It knows
 * {@linkcode MeshConfig} and nothing of Kubernetes.
 *
 * @module
 */
export { NodeProxy } from "./node_proxy.ts";
export type { BindError, ListenerState, NodeProxyOptions } from "./node_proxy.ts";
export { buildRouteTable, lookupHttpRoute, newRouteState } from "./route_table.ts";
export type { Route, RouteState, RouteTable } from "./route_table.ts";
export { DEFAULT_OUTLIER, EndpointPool, EndpointState } from "./endpoint_pool.ts";
export type { OutlierOptions } from "./endpoint_pool.ts";
export { AccessPolicy } from "./access.ts";
export { ProxyMetrics } from "./proxy_metrics.ts";
export type { Connect } from "./connect_upstream.ts";
export type { DataPlane } from "./data_plane.ts";
export { L4WorkerError, ProxyPool, ProxyWorkerError } from "./proxy_pool.ts";
export { SplitPlane } from "./split_plane.ts";
export type { SplitPlaneOptions } from "./split_plane.ts";
export type { ProxyPoolOptions, WorkerProxyOptions } from "./proxy_pool.ts";
export { probeEngine } from "../engine/probe_engine.ts";
export type { EngineProbe, ProbeEngineOptions } from "../engine/probe_engine.ts";
export { availableCpus } from "./available_cpus.ts";
export { AccessLog } from "./access_log.ts";
export type { AccessEntry, AccessLogMode } from "./access_log.ts";
