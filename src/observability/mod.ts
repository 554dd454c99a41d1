/**
 * What meshd tells the world: one-line logs, Prometheus metrics, and the HTTP API with health,
 * readiness, metrics and the config in force.
 *
 * @module
 */
export * from "./log.ts";
export * from "./metrics.ts";
export * from "./api_server.ts";
export * from "./build_info_metric.ts";
export * from "./watchdog.ts";
