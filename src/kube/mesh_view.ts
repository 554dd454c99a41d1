import { type KubeApi, KubeApiError } from "./api.ts";
import { compareNames } from "../topology/mod.ts";

/** A meshd pod as `meshd status` and `meshd check` show it, from its status. */
export interface MeshPodView {
  name: string;
  node: string;
  /** The meshd container's image, which names its version (`meshd:0.1.0`). */
  image: string;
  /** The pod's address (the node's, with hostNetwork); "" before it has one. */
  ip: string;
  phase: string;
  ready: boolean;
  restarts: number;
  /** Why the container waits (CrashLoopBackOff, ImagePullBackOff), or "". */
  waiting: string;
  /** How the container last ended (`Error, exit code 1, at <time>`), or "". */
  lastTermination: string;
}

/** A Node: its name, whether the kubelet says Ready, and its kernel. */
export interface NodeView {
  name: string;
  ready: boolean;
  /** `status.nodeInfo.kernelVersion`, as the kubelet reports `uname -r`. */
  kernelVersion: string;
}

/** The DaemonSet's rollout, from its status. */
export interface DaemonSetView {
  desired: number;
  current: number;
  ready: number;
  updated: number;
  available: number;
  /** The controller has seen the latest spec (observedGeneration). */
  observed: boolean;
}

/** What the API server knows of an installed meshd. */
export interface MeshView {
  /** The Nodes; those of the pods alone when Nodes may not be listed. */
  nodes: NodeView[];
  /** Null when there is no such DaemonSet, or it may not be read. */
  daemonSet: DaemonSetView | null;
  pods: MeshPodView[];
  /**
   * What the caller may not read (`daemonsets`, `nodes`): meshd's own ServiceAccount, in a
   * meshd pod, may list pods but not these.
   */
  forbidden: string[];
}

/** Where meshd is installed: namespace, DaemonSet name and the pods' label selector. */
export interface MeshRef {
  namespace: string;
  daemonSet: string;
  selector: string;
}

/** meshd's manifests: namespace meshd, DaemonSet meshd, pods labelled by name. */
export const DEFAULT_MESH_REF: MeshRef = {
  namespace: "meshd",
  daemonSet: "meshd",
  selector: "app.kubernetes.io/name=meshd",
};

type Obj = {
  metadata?: { name?: string; generation?: number };
  spec?: { nodeName?: string; containers?: { image?: string }[] };
  status?: Record<string, unknown>;
};

function podView(p: Obj): MeshPodView {
  const st = (p.status ?? {}) as {
    phase?: string;
    podIP?: string;
    conditions?: { type: string; status: string }[];
    containerStatuses?: {
      restartCount?: number;
      state?: { waiting?: { reason?: string; message?: string } };
      lastState?: { terminated?: { reason?: string; exitCode?: number; finishedAt?: string } };
    }[];
  };
  const c = st.containerStatuses?.[0];
  const t = c?.lastState?.terminated;
  return {
    name: p.metadata?.name ?? "",
    node: p.spec?.nodeName ?? "",
    image: p.spec?.containers?.[0]?.image ?? "",
    ip: st.podIP ?? "",
    phase: st.phase ?? "Unknown",
    ready: (st.conditions ?? []).some((x) => x.type === "Ready" && x.status === "True"),
    restarts: (st.containerStatuses ?? []).reduce((n, x) => n + (x.restartCount ?? 0), 0),
    waiting: c?.state?.waiting?.reason ?? "",
    lastTermination: t
      ? `${t.reason ?? "terminated"}, exit code ${t.exitCode ?? "?"}${
        t.finishedAt ? `, at ${t.finishedAt}` : ""
      }`
      : "",
  };
}

function nodeView(n: Obj): NodeView {
  const st = (n.status ?? {}) as {
    conditions?: { type: string; status: string }[];
    nodeInfo?: { kernelVersion?: string };
  };
  return {
    name: n.metadata?.name ?? "",
    ready: (st.conditions ?? []).some((x) => x.type === "Ready" && x.status === "True"),
    kernelVersion: st.nodeInfo?.kernelVersion ?? "",
  };
}

/** The Nodes, sorted by name. */
export async function listNodes(api: KubeApi): Promise<NodeView[]> {
  const r = await api.request("GET", "/api/v1/nodes");
  return ((r["items"] ?? []) as Obj[]).map(nodeView).sort((a, b) => compareNames(a.name, b.name));
}

/**
 * The Nodes, meshd's DaemonSet and its pods, as the API server has them.
 *
 * @example
 * ```ts
 * const view = await readMeshView(api, DEFAULT_MESH_REF);
 * ```
 */
export async function readMeshView(api: KubeApi, ref: MeshRef): Promise<MeshView> {
  const ns = encodeURIComponent(ref.namespace);
  let daemonSet: DaemonSetView | null = null;
  const forbidden: string[] = [];
  try {
    const ds = await api.request(
      "GET",
      `/apis/apps/v1/namespaces/${ns}/daemonsets/${encodeURIComponent(ref.daemonSet)}`,
    ) as Obj;
    const st = (ds.status ?? {}) as Record<string, number | undefined>;
    daemonSet = {
      desired: st["desiredNumberScheduled"] ?? 0,
      current: st["currentNumberScheduled"] ?? 0,
      ready: st["numberReady"] ?? 0,
      updated: st["updatedNumberScheduled"] ?? 0,
      available: st["numberAvailable"] ?? 0,
      observed: (st["observedGeneration"] ?? 0) >= (ds.metadata?.generation ?? 0),
    };
  } catch (e) {
    if (e instanceof KubeApiError && e.status === 403) forbidden.push("daemonsets");
    else if (!(e instanceof KubeApiError && e.status === 404)) throw e;
  }
  let nodes: NodeView[] = [];
  try {
    nodes = await listNodes(api);
  } catch (e) {
    if (!(e instanceof KubeApiError && e.status === 403)) throw e;
    forbidden.push("nodes");
  }
  const pods = await api.request(
    "GET",
    `/api/v1/namespaces/${ns}/pods?labelSelector=${encodeURIComponent(ref.selector)}`,
  );
  return {
    nodes,
    daemonSet,
    forbidden,
    pods: ((pods["items"] ?? []) as Obj[]).map(podView)
      .sort((a, b) => compareNames(a.node, b.node) || compareNames(a.name, b.name)),
  };
}

/**
 * A pod's `/metrics`, through the API server's pod proxy
 * (`/api/v1/namespaces/NS/pods/POD:PORT/proxy/metrics`): the caller needs `get pods/proxy`,
 * and the API server a route to the pod's address.
 */
export async function podMetrics(
  api: KubeApi,
  pod: { namespace: string; name: string; port: number },
  options: { timeoutMs?: number } = {},
): Promise<string> {
  return await api.requestText(
    "GET",
    `/api/v1/namespaces/${encodeURIComponent(pod.namespace)}/pods/${
      encodeURIComponent(pod.name)
    }:${pod.port}/proxy/metrics`,
    { timeoutMs: options.timeoutMs ?? 5_000 },
  );
}

/** The Warning Events of a namespace, newest first (at most `limit`). */
export async function warningEvents(
  api: KubeApi,
  namespace: string,
  limit = 5,
): Promise<{ at: string; object: string; reason: string; message: string; count: number }[]> {
  const r = await api.request(
    "GET",
    `/api/v1/namespaces/${encodeURIComponent(namespace)}/events?fieldSelector=type%3DWarning`,
  );
  type Ev = {
    involvedObject?: { kind?: string; name?: string };
    reason?: string;
    message?: string;
    count?: number;
    lastTimestamp?: string;
    eventTime?: string;
    metadata?: { creationTimestamp?: string };
  };
  return ((r["items"] ?? []) as Ev[]).map((e) => ({
    at: e.lastTimestamp ?? e.eventTime ?? e.metadata?.creationTimestamp ?? "",
    object: `${e.involvedObject?.kind ?? ""}/${e.involvedObject?.name ?? ""}`,
    reason: e.reason ?? "",
    message: (e.message ?? "").trim(),
    count: e.count ?? 1,
  })).sort((a, b) => compareNames(b.at, a.at)).slice(0, limit);
}
