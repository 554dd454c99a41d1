/**
 * The harness's stand-in for kubelet in tests that need Nodes and Pods in the API but no
 * containers: it registers Nodes, creates Pods bound to a node (the harness binds them; no
 * scheduler runs), and patches their status Running and Ready with an address, as kubelet would.
 * The addresses come from 203.0.113.0/24, a documentation range: nothing ever connects to them
 * from the host.
 *
 * @module
 */
import type { TestCluster } from "./cluster.ts";

/** Creates a Node object that reports Ready. */
export async function registerNode(
  cluster: TestCluster,
  name: string,
  internalIP?: string,
): Promise<void> {
  await cluster.must("POST", "/api/v1/nodes", {
    apiVersion: "v1",
    kind: "Node",
    metadata: { name, labels: { "kubernetes.io/hostname": name } },
  });
  await patchStatus(cluster, `/api/v1/nodes/${name}/status`, {
    status: {
      conditions: [{
        type: "Ready",
        status: "True",
        reason: "KubeletReady",
        message: "the meshd test harness plays kubelet",
        lastHeartbeatTime: new Date().toISOString(),
        lastTransitionTime: new Date().toISOString(),
      }],
      addresses: [
        ...(internalIP ? [{ type: "InternalIP", address: internalIP }] : []),
        { type: "Hostname", address: name },
      ],
    },
  });
}

/** What a test Pod looks like. */
export interface PodSpec {
  namespace?: string;
  name: string;
  node: string;
  ip: string;
  labels: Record<string, string>;
  serviceAccount?: string;
  /** Container ports, named or not. */
  ports?: { name?: string; containerPort: number; protocol?: string }[];
  ready?: boolean;
  /** The node's address, as kubelet reports it (default 203.0.113.254). */
  hostIP?: string;
  /** A pod in its node's network namespace, as a DaemonSet's with `hostNetwork: true`. */
  hostNetwork?: boolean;
}

/** Creates a Pod bound to `node` and marks it Running (and Ready unless `ready: false`). */
export async function runPod(cluster: TestCluster, pod: PodSpec): Promise<void> {
  const ns = pod.namespace ?? "default";
  await cluster.must("POST", `/api/v1/namespaces/${ns}/pods`, {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: pod.name, namespace: ns, labels: pod.labels },
    spec: {
      nodeName: pod.node,
      serviceAccountName: pod.serviceAccount ?? "default",
      automountServiceAccountToken: false,
      ...(pod.hostNetwork ? { hostNetwork: true } : {}),
      containers: [{ name: "app", image: "meshd.test/none", ports: pod.ports ?? [] }],
    },
  });
  await setPodReady(cluster, ns, pod.name, pod.ip, pod.ready ?? true, pod.hostIP);
}

/** Patches a Pod's status as kubelet would: Running, with `ip`, Ready or not. */
export async function setPodReady(
  cluster: TestCluster,
  namespace: string,
  name: string,
  ip: string,
  ready: boolean,
  hostIP = "203.0.113.254",
): Promise<void> {
  const now = new Date().toISOString();
  const cond = (type: string, ok: boolean) => ({
    type,
    status: ok ? "True" : "False",
    lastTransitionTime: now,
  });
  await patchStatus(cluster, `/api/v1/namespaces/${namespace}/pods/${name}/status`, {
    status: {
      phase: "Running",
      podIP: ip,
      podIPs: [{ ip }],
      hostIP,
      startTime: now,
      conditions: [
        cond("PodScheduled", true),
        cond("Initialized", true),
        cond("ContainersReady", ready),
        cond("Ready", ready),
      ],
    },
  });
}

async function patchStatus(cluster: TestCluster, path: string, body: unknown): Promise<void> {
  await cluster.must("PATCH", path, body, "application/strategic-merge-patch+json");
}
