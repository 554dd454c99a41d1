/**
 * What meshd tells the world: one-line logs, and the HTTP API with health, readiness and the
 * config in force.
 *
 * @module
 */
export * from "./log.ts";
export * from "./api_server.ts";
