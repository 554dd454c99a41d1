/**
 * MeshConfig builders for tests: a config written as short specs, every omitted field at a
 * default. Pure, like the rest of `topology/`; the unit tests of every room and the tests under
 * `tests/` build their configs here. For tests only: nothing in meshd imports it.
 *
 * @module
 */
import type { MeshConfig, MeshEndpoint, MeshPort, MeshService } from "./mesh_config.ts";

/** A service port as a test writes it: only what the case needs. */
export type PortSpec = Partial<MeshPort> & { port: number; endpoints?: MeshEndpoint[] };
/** A service as a test writes it. */
export type ServiceSpec = Partial<Omit<MeshService, "ports">> & { name: string; ports: PortSpec[] };

/** A ready endpoint at `address:port`. */
export function endpoint(
  address: string,
  port: number,
  extra: Partial<MeshEndpoint> = {},
): MeshEndpoint {
  return {
    address,
    port,
    ready: true,
    serving: true,
    terminating: false,
    nodeName: null,
    serviceAccount: null,
    ...extra,
  };
}

/** A MeshConfig from short specs; every omitted field takes the builder's default. */
export function meshConfig(
  services: ServiceSpec[],
  extra: Partial<Omit<MeshConfig, "services">> = {},
): MeshConfig {
  return {
    version: 1,
    domain: "mesh",
    acl: false,
    identities: {},
    ...extra,
    services: services.map((s) => ({
      namespace: "default",
      clusterIP: null,
      scheme: "http",
      retryAttempts: 0,
      circuitBreaker: null,
      rateLimit: null,
      ...s,
      ports: s.ports.map((p) => ({
        name: "",
        protocol: "http",
        listenPort: null,
        endpoints: [],
        split: null,
        access: null,
        ...p,
      })),
    })),
  };
}
