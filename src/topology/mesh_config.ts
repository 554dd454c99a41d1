import type { BreakerExpr, HttpMatch, Scheme, SourceRef, TrafficType } from "./objects.ts";

/** One backend address of a service port. */
export interface MeshEndpoint {
  address: string;
  port: number;
  ready: boolean;
  serving: boolean;
  terminating: boolean;
  nodeName: string | null;
  /** `namespace/name` of the Pod's ServiceAccount, when the Pod is known. */
  serviceAccount: string | null;
}

/** A TrafficSplit resolved for one port of its root service. */
export interface MeshSplit {
  /** The TrafficSplit, as `namespace/name`. */
  name: string;
  /** When not empty, only HTTP requests that match one of these go through the split. */
  matches: HttpMatch[];
  /** Services in the root's namespace that expose the same port, with relative weights > 0. */
  backends: { service: string; weight: number }[];
}

/** What a TrafficTarget grants on one service port. */
export interface MeshAccessRule {
  /** The TrafficTarget, as `namespace/name`. */
  trafficTarget: string;
  /** Only endpoints running as this ServiceAccount (`namespace/name`) may be reached. */
  destination: string;
  /** ServiceAccounts (`namespace/name`) allowed in. */
  sources: string[];
  /** HTTP requests allowed; `[]` allows none. Only used on HTTP ports. */
  http: HttpMatch[];
  /** Whole connections allowed (a TCPRoute rule): TCP and UDP ports. */
  l4: boolean;
}

/** One port of a mesh service, the unit the proxy serves. */
export interface MeshPort {
  name: string;
  port: number;
  protocol: TrafficType;
  /**
   * The proxy port for this service port: allocated from a range for TCP and UDP; `null` for
   * HTTP, which shares the HTTP entrypoint and is routed by Host.
   */
  listenPort: number | null;
  endpoints: MeshEndpoint[];
  split: MeshSplit | null;
  /** Present when ACL is on: the rules that let traffic in (none means deny all). */
  access: MeshAccessRule[] | null;
}

/** A Service as the data plane sees it. */
export interface MeshService {
  name: string;
  namespace: string;
  clusterIP: string | null;
  scheme: Scheme;
  retryAttempts: number;
  circuitBreaker: { expression: string; expr: BreakerExpr } | null;
  rateLimit: { average: number; burst: number } | null;
  /**
   * The `meshd.io/access-log` annotation: logs this Service's traffic (true) or not (false)
   * whatever `--access-log` says; absent when not annotated, and the flag decides.
   */
  accessLog?: boolean;
  ports: MeshPort[];
}

/** Something the builder noticed about an object: a skipped part, a conflict, a bad reference. */
export interface Diagnostic {
  /** `info`: meshd read the object as Traefik Mesh does, which may surprise; nothing is wrong. */
  level: "info" | "warn" | "error";
  /** `Kind/namespace/name` of the object concerned. */
  object: string;
  source?: SourceRef;
  message: string;
}

/**
 * The whole routing configuration of the mesh. It is the only thing the data plane knows:
 * no Kubernetes object goes past the topology builder.
 */
export interface MeshConfig {
  /** Grows by one each time the content changes; an unchanged rebuild keeps the version. */
  version: number;
  /** The mesh DNS domain: services are `<name>.<namespace>.<domain>`. */
  domain: string;
  acl: boolean;
  services: MeshService[];
  /**
   * Source address to ServiceAccount (`namespace/name`), for access control. Where running
   * Pods of several ServiceAccounts share an address (hostNetwork Pods on one node), their
   * ServiceAccounts, sorted and joined by `,` (see {@linkcode identitiesAt}).
   */
  identities: Record<string, string>;
}

/** The ServiceAccounts an entry of {@linkcode MeshConfig.identities} names. */
export function identitiesAt(entry: string): string[] {
  return entry.includes(",") ? entry.split(",") : [entry];
}
