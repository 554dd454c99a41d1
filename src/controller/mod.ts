/**
 * The controller: what the elected leader writes to the Kubernetes API.
 *
 * @module
 */
export * from "./shadow_services.ts";
export * from "./corefile.ts";
export * from "./prepare.ts";
export * from "./mesh_controller.ts";
export * from "./compile_load.ts";
export * from "./local_controller.ts";
