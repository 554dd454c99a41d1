/**
 * How long the model takes to turn a cluster's worth of objects into a MeshConfig: 10
 * services, and 1,000 services with 10,000 endpoints. `deno task bench`.
 */
import { compileMeshConfig } from "./compile_mesh_config.ts";
import type { MeshObject } from "./objects.ts";

function cluster(services: number, endpointsEach: number): MeshObject[] {
  const out: MeshObject[] = [];
  for (let s = 0; s < services; s++) {
    const meta = { name: `svc-${s}`, namespace: `ns-${s % 20}`, labels: {}, annotations: {} };
    out.push({
      kind: "Service",
      meta,
      clusterIP: null,
      ports: [{ name: "web", port: 80, targetPort: 8080, protocol: "TCP" }],
      selector: { app: meta.name },
      mesh: s % 3 === 0 ? { trafficType: "tcp" } : {},
    });
    out.push({
      kind: "EndpointSlice",
      meta: {
        ...meta,
        name: `${meta.name}-a`,
        labels: { "kubernetes.io/service-name": meta.name },
      },
      serviceName: meta.name,
      addressType: "IPv4",
      ports: [{ name: "web", port: 8080, protocol: "TCP" }],
      endpoints: Array.from({ length: endpointsEach }, (_, e) => ({
        addresses: [`127.${(s >> 8) & 255}.${s & 255}.${e + 1}`],
        ready: e % 10 !== 0,
        serving: true,
        terminating: false,
        nodeName: null,
        podName: null,
      })),
    });
  }
  return out;
}

const small = cluster(10, 3);
const large = cluster(1000, 10);

Deno.bench("compileMeshConfig 10 services", { group: "compile", baseline: true }, () => {
  compileMeshConfig(small);
});
Deno.bench("compileMeshConfig 1,000 services, 10,000 endpoints", { group: "compile" }, () => {
  compileMeshConfig(large);
});
const previous = compileMeshConfig(large).config;
Deno.bench("compileMeshConfig 1,000 services, unchanged rebuild", { group: "compile" }, () => {
  compileMeshConfig(large, { previous });
});

// The leader's step on every change at the scale of issue 21: 10,000 services, one endpoint of
// one changed, on the config before it (what the kube provider gives after one write).
const huge = cluster(10_000, 2);
let last = compileMeshConfig(huge).config;
let generation = 0;
Deno.bench("compileMeshConfig 10,000 services, one endpoint changed", { group: "change" }, () => {
  const slice = huge[1] as Extract<MeshObject, { kind: "EndpointSlice" }>;
  huge[1] = {
    ...slice,
    endpoints: [{ ...slice.endpoints[0]!, addresses: [`198.51.100.${++generation % 250 + 1}`] }],
  };
  last = compileMeshConfig(huge, { previous: last }).config;
});
