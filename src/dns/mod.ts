/**
 * The mesh DNS responder: the DNS wire format, the mesh zone (`<service>.<namespace>.<domain>`
 * to the addresses clients should dial), and a UDP and TCP server for it.
 *
 * @module
 */
export * from "./dns_message.ts";
export * from "./mesh_zone.ts";
export * from "./dns_server.ts";
