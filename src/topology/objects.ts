/**
 * Domain types for the Kubernetes-style objects meshd reads. They are produced once, at the
 * edge, by {@linkcode decodeObject}; nothing past the edge sees raw YAML or JSON.
 */

/** Where an object came from, so an error can name it: a file and a document, or an API path. */
export interface SourceRef {
  /** File path or API location, as the user would recognise it. */
  file: string;
  /** Zero-based index of the YAML document within the file; -1 when not from a file. */
  doc: number;
  /** Zero-based index within the `items` of a `kind: List` document. */
  item?: number;
}

/** Identity shared by every object. */
export interface ObjectMeta {
  name: string;
  namespace: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

/** The traffic kinds a service port can carry. */
export type TrafficType = "http" | "tcp" | "udp";
/** How the proxy talks to an HTTP backend. */
export type Scheme = "http" | "https" | "h2c";

/** A comparison in a circuit-breaker expression, such as `NetworkErrorRatio() > 0.5`. */
export type BreakerMetric =
  | { fn: "NetworkErrorRatio" }
  | { fn: "LatencyAtQuantileMS"; quantile: number }
  | { fn: "ResponseCodeRatio"; from: number; to: number; divFrom: number; divTo: number };
/** The parsed form of a circuit-breaker expression. */
export type BreakerExpr =
  | { op: "&&" | "||"; left: BreakerExpr; right: BreakerExpr }
  | { op: ">" | ">=" | "<" | "<=" | "==" | "!="; metric: BreakerMetric; value: number };

/** Mesh settings a Service carries in its annotations; absent fields fall back to defaults. */
export interface ServiceMeshOptions {
  trafficType?: TrafficType;
  scheme?: Scheme;
  retryAttempts?: number;
  circuitBreaker?: { expression: string; expr: BreakerExpr };
  rateLimit?: { average: number; burst: number };
  /** `access-log`: "true" or "false". */
  accessLog?: boolean;
}

/** One port of a Service. */
export interface ServicePort {
  name: string;
  port: number;
  /** A number, or the name of a container port. */
  targetPort: number | string;
  protocol: "TCP" | "UDP" | "SCTP";
}

/** core/v1 Service. */
export interface Service {
  kind: "Service";
  meta: ObjectMeta;
  source?: SourceRef;
  clusterIP: string | null;
  ports: ServicePort[];
  selector: Record<string, string>;
  mesh: ServiceMeshOptions;
}

/** One endpoint of an EndpointSlice. */
export interface SliceEndpoint {
  addresses: string[];
  /** Kubernetes: a nil `ready` means ready. */
  ready: boolean;
  /** Kubernetes: a nil `serving` takes the value of `ready`. */
  serving: boolean;
  terminating: boolean;
  nodeName: string | null;
  /** Name of the Pod behind the endpoint, from `targetRef` when it names a Pod. */
  podName: string | null;
}

/** discovery.k8s.io/v1 EndpointSlice. */
export interface EndpointSlice {
  kind: "EndpointSlice";
  meta: ObjectMeta;
  source?: SourceRef;
  /** The Service it belongs to, from the `kubernetes.io/service-name` label. */
  serviceName: string | null;
  addressType: "IPv4" | "IPv6" | "FQDN";
  ports: { name: string; port: number; protocol: "TCP" | "UDP" | "SCTP" }[];
  endpoints: SliceEndpoint[];
}

/** core/v1 Pod, reduced to what the mesh needs. */
export interface Pod {
  kind: "Pod";
  meta: ObjectMeta;
  source?: SourceRef;
  podIP: string | null;
  serviceAccountName: string;
  phase: string;
  nodeName: string | null;
}

/** A reference to a ServiceAccount, as SMI uses it. */
export interface IdentityRef {
  name: string;
  namespace: string;
}

/** access.smi-spec.io/v1alpha2 TrafficTarget. */
export interface TrafficTarget {
  kind: "TrafficTarget";
  meta: ObjectMeta;
  source?: SourceRef;
  destination: IdentityRef & { port: number | null };
  rules: { kind: "HTTPRouteGroup" | "TCPRoute"; name: string; matches: string[] }[];
  sources: IdentityRef[];
}

/** One match of an HTTPRouteGroup (specs.smi-spec.io/v1alpha3). */
export interface HttpMatch {
  name: string;
  /** Upper-case methods; `*` matches any. Empty means any. */
  methods: string[];
  /** Anchored at the start of the path. Empty means any path. */
  pathRegex: string;
  headers: Record<string, string>;
}

/** specs.smi-spec.io/v1alpha3 HTTPRouteGroup. */
export interface HttpRouteGroup {
  kind: "HTTPRouteGroup";
  meta: ObjectMeta;
  source?: SourceRef;
  matches: HttpMatch[];
}

/** specs.smi-spec.io/v1alpha3 TCPRoute (its spec is empty in this version). */
export interface TcpRoute {
  kind: "TCPRoute";
  meta: ObjectMeta;
  source?: SourceRef;
}

/** split.smi-spec.io/v1alpha3 TrafficSplit. */
export interface TrafficSplit {
  kind: "TrafficSplit";
  meta: ObjectMeta;
  source?: SourceRef;
  /** The root service clients address. */
  service: string;
  matches: { kind: "HTTPRouteGroup"; name: string }[];
  backends: { service: string; weight: number }[];
}

/** Every object kind the model understands. */
export type MeshObject =
  | Service
  | EndpointSlice
  | Pod
  | TrafficTarget
  | HttpRouteGroup
  | TcpRoute
  | TrafficSplit;

/** The key that identifies an object: `Kind/namespace/name`. */
export function objectKey(
  obj: { kind: string; meta: { namespace: string; name: string } },
): string {
  return `${obj.kind}/${obj.meta.namespace}/${obj.meta.name}`;
}
