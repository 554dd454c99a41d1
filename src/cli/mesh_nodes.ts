import type { KubeApi, MeshPodView, MeshView, NodeView } from "../kube/mod.ts";
import { parsePromText, type PromSample, select, valueOf } from "./prom_text.ts";
import { compareNames } from "../topology/mod.ts";

/** One node as `meshd check` and `meshd status` see it: the Node, its meshd pod, its metrics. */
export interface NodeReport {
  node: NodeView;
  /** Its meshd pod (the Ready one while a rollout surges); null when it has none. */
  pod: MeshPodView | null;
  /** The pod's `/metrics`, or null when they could not be read (`metricsError` says why). */
  metrics: PromSample[] | null;
  metricsError?: string;
}

/** What a node's metrics say of it. */
export interface NodeFacts {
  configVersion?: number;
  datapath?: string;
  datapathReason?: string;
  leading: boolean;
  /** Holds a config stream to the leader; undefined when the metric is absent. */
  connected?: boolean;
  /** Non-zero error counters: `name{label}` → value. */
  errors: Record<string, number>;
  /** `meshd_build_info`; absent from a meshd older than the metric. */
  build?: { version: string; commit: string; deno: string };
  /** What `/api/status` lists, by kind (`meshd_status_problems`); empty on an older meshd. */
  problems: Record<string, number>;
  /** The first messages of each kind (`meshd_status_problem_info`). */
  problemMessages: { kind: string; message: string }[];
  /** Where its config came from (`meshd_config_source`): provider, leader or disk. */
  configSource?: string;
}

/** Reads the facts `meshd check` and `meshd status` show from one node's metrics. */
export function nodeFacts(m: readonly PromSample[]): NodeFacts {
  const dp = select(m, "meshd_datapath_info")[0];
  const connected = valueOf(m, "meshd_distribution_connected");
  const errors: Record<string, number> = {};
  const failed = valueOf(m, "meshd_distribution_updates_total", { kind: "failed" }) ?? 0;
  if (failed > 0) errors["config updates failed to apply"] = failed;
  const ebpf = valueOf(m, "meshd_ebpf_apply_errors_total") ?? 0;
  if (ebpf > 0) errors["configs the eBPF maps could not take"] = ebpf;
  for (const d of select(m, "meshd_dropped_total")) {
    if (d.value > 0) errors[`dropped (${d.labels["reason"]})`] = d.value;
  }
  const build = select(m, "meshd_build_info")[0]?.labels;
  const problems: Record<string, number> = {};
  for (const p of select(m, "meshd_status_problems")) problems[p.labels["kind"] ?? ""] = p.value;
  return {
    configVersion: valueOf(m, "meshd_config_version"),
    datapath: dp?.labels["datapath"],
    datapathReason: dp?.labels["reason"],
    leading: valueOf(m, "meshd_controller_leading") === 1,
    connected: connected === undefined ? undefined : connected === 1,
    errors,
    ...(build
      ? {
        build: {
          version: build["version"] ?? "?",
          commit: build["commit"] ?? "unknown",
          deno: build["deno"] ?? "?",
        },
      }
      : {}),
    problems,
    problemMessages: select(m, "meshd_status_problem_info").map((p) => ({
      kind: p.labels["kind"] ?? "",
      message: p.labels["message"] ?? "",
    })),
    ...(select(m, "meshd_config_source")[0]
      ? { configSource: select(m, "meshd_config_source")[0]!.labels["source"] }
      : {}),
  };
}

/** How `status` and `check` name a node's meshd: its build, or its pod's image tag. */
export function meshdVersion(
  f: Pick<NodeFacts, "build"> | null,
  image: string | null | undefined,
): string {
  if (f?.build) {
    // A full hash is cut as git shows it; `-dirty` (a build from a changed checkout) stays.
    const c = f.build.commit.replace(/^([0-9a-f]{7})[0-9a-f]{33}/, "$1");
    return `${f.build.version} (commit ${c}, deno ${f.build.deno})`;
  }
  // An older meshd serves no meshd_build_info (or its metrics were not read): the tag it runs.
  return image ? `${image} (image tag)` : "unknown";
}

/** What a problem kind of `meshd_status_problems` is called in `status` and `check`. */
export const PROBLEM_KINDS: Record<string, string> = {
  invalid_object: "object rejected",
  listener_unbound: "listener not bound",
  save_failed: "config saves failed",
  config_warning: "config warning",
};

/** The leader's view of every node: `meshd_distribution_node_applied_version` by pod name. */
export function appliedByLeader(m: readonly PromSample[]): Map<string, number> {
  return new Map(
    select(m, "meshd_distribution_node_applied_version").map((s) => [s.labels["node"]!, s.value]),
  );
}

/** Picks each node's meshd pod: the Ready one, else any. Pods on unknown nodes get a Node. */
export function podsByNode(view: MeshView): { node: NodeView; pod: MeshPodView | null }[] {
  const nodes = new Map(view.nodes.map((n) => [n.name, n]));
  for (const p of view.pods) {
    if (p.node && !nodes.has(p.node)) {
      nodes.set(p.node, { name: p.node, ready: false, kernelVersion: "" });
    }
  }
  return [...nodes.values()].sort((a, b) => compareNames(a.name, b.name)).map((node) => {
    const mine = view.pods.filter((p) => p.node === node.name);
    return { node, pod: mine.find((p) => p.ready) ?? mine[0] ?? null };
  });
}

/**
 * Reads every node's meshd metrics through the API server's pod proxy, in parallel. A pod
 * that cannot be read gets `metricsError` (a Status message: forbidden, no route, refused).
 */
export async function readNodeMetrics(
  api: KubeApi,
  kube: typeof import("../kube/mod.ts"),
  view: MeshView,
  where: { namespace: string; port: number },
): Promise<NodeReport[]> {
  return await Promise.all(
    podsByNode(view).map(async ({ node, pod }) => {
      if (!pod || !pod.ip) return { node, pod, metrics: null, metricsError: "no pod address" };
      try {
        const text = await kube.podMetrics(api, {
          namespace: where.namespace,
          name: pod.name,
          port: where.port,
        });
        return { node, pod, metrics: parsePromText(text) };
      } catch (e) {
        return { node, pod, metrics: null, metricsError: (e as Error).message };
      }
    }),
  );
}
