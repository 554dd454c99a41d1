/**
 * Kubernetes-style YAML for the file provider, as the end-to-end tests write it: a Pod with an
 * address and a ServiceAccount, a Service, an EndpointSlice whose endpoints name their Pods,
 * and the SMI objects. Join documents with {@linkcode yamlDocs}.
 *
 * @module
 */

/** A running Pod at `ip` with ServiceAccount `sa` (what access control identifies). */
export function pod(ns: string, name: string, ip: string, sa: string): string {
  return `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${ns} }
spec: { serviceAccountName: ${sa}, nodeName: local }
status: { phase: Running, podIP: ${ip} }
`;
}

/** A Service with one port named `http`; `annotations` as `key: value` pairs. */
export function service(
  ns: string,
  name: string,
  opts: { port?: number; protocol?: "TCP" | "UDP"; annotations?: Record<string, string> } = {},
): string {
  const annotations = Object.entries(opts.annotations ?? {}).map(([k, v]) =>
    `${k}: ${JSON.stringify(v)}`
  ).join(", ");
  return `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: ${ns}, annotations: { ${annotations} } }
spec: { ports: [{ name: http, port: ${opts.port ?? 80}, protocol: ${opts.protocol ?? "TCP"} }] }
`;
}

/** An EndpointSlice of Service `svc`: ready endpoints at `port`, each naming its Pod. */
export function endpointSlice(
  ns: string,
  svc: string,
  name: string,
  port: number,
  endpoints: { ip: string; pod: string }[],
  protocol: "TCP" | "UDP" = "TCP",
): string {
  return `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: ${name}, namespace: ${ns}, labels: { kubernetes.io/service-name: ${svc} } }
addressType: IPv4
ports: [{ name: http, port: ${port}, protocol: ${protocol} }]
endpoints:
${
    endpoints.map((e) =>
      `  - { addresses: ["${e.ip}"], conditions: { ready: true }, targetRef: { kind: Pod, name: ${e.pod} } }`
    ).join("\n")
  }
`;
}

/** An SMI TrafficSplit (split v1alpha3) of `root` over weighted backends. */
export function trafficSplit(
  ns: string,
  name: string,
  root: string,
  backends: [service: string, weight: number][],
): string {
  return `apiVersion: split.smi-spec.io/v1alpha3
kind: TrafficSplit
metadata: { name: ${name}, namespace: ${ns} }
spec:
  service: ${root}
  backends:
${backends.map(([s, w]) => `    - { service: ${s}, weight: ${w} }`).join("\n")}
`;
}

/** An HTTPRouteGroup (specs v1alpha3) with one match of every method and path. */
export function anyHttpRoute(ns: string, name: string, match = "any"): string {
  return `apiVersion: specs.smi-spec.io/v1alpha3
kind: HTTPRouteGroup
metadata: { name: ${name}, namespace: ${ns} }
spec:
  matches:
    - { name: ${match}, pathRegex: "/.*" }
`;
}

/** A TrafficTarget (access v1alpha2) letting ServiceAccount `from` reach `to` by an HTTPRouteGroup. */
export function trafficTarget(
  ns: string,
  name: string,
  from: string,
  to: string,
  routeGroup: string,
  matches: string[],
): string {
  return `apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata: { name: ${name}, namespace: ${ns} }
spec:
  destination: { kind: ServiceAccount, name: ${to}, namespace: ${ns} }
  rules: [{ kind: HTTPRouteGroup, name: ${routeGroup}, matches: [${matches.join(", ")}] }]
  sources: [{ kind: ServiceAccount, name: ${from}, namespace: ${ns} }]
`;
}

/** Documents as one YAML stream. */
export function yamlDocs(...docs: string[]): string {
  return docs.join("---\n");
}
