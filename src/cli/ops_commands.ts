import type { KubeApi, MeshView } from "../kube/mod.ts";
import { CliError, type CliIo, kubeClientFor, warningLine } from "./common.ts";
import { type FlagValue, FlagValues } from "./flags.ts";
import { formatStatTable, goldenSignals, type MetricsWindow } from "./golden_signals.ts";
import {
  meshdVersion,
  nodeFacts,
  type NodeReport,
  PROBLEM_KINDS,
  readNodeMetrics,
} from "./mesh_nodes.ts";
import { parsePromText } from "./prom_text.ts";

type Values = FlagValues;

function meshRef(v: Values) {
  return {
    namespace: v.string("mesh-namespace"),
    daemonSet: v.string("daemonset"),
    selector: v.list("meshd-selector").join(","),
  };
}

async function readView(
  api: KubeApi,
  kube: typeof import("../kube/mod.ts"),
  v: Values,
): Promise<MeshView> {
  try {
    return await kube.readMeshView(api, meshRef(v));
  } catch (e) {
    throw new CliError(`Cannot read meshd's DaemonSet, pods and Nodes: ${(e as Error).message}`);
  }
}

/** One node in `meshd status`. */
export interface StatusNode {
  node: string;
  nodeReady: boolean;
  pod: string | null;
  podReady: boolean;
  leader: boolean;
  configVersion: number | null;
  datapath: string | null;
  datapathReason: string | null;
  /**
   * The meshd it runs: `meshd_build_info` (version, commit, Deno), or its pod's image tag
   * (`... (image tag)`) from a meshd older than the metric or whose metrics were not read.
   */
  version: string;
  /** What its `/api/status` lists, by kind (`meshd_status_problems`); absent when unknown. */
  problems?: Record<string, number>;
  /** Where its config came from: provider, leader, or disk (no leader reached yet). */
  configSource?: string;
  /** Why its metrics could not be read, when they could not. */
  metricsError?: string;
}

/** `meshd status` as data (`-o json`). */
export interface MeshStatus {
  server: string;
  kubernetes: string;
  /** The meshd versions the nodes run (see {@linkcode StatusNode.version}). */
  versions: string[];
  /** The meshd image(s) the pods run. */
  images: string[];
  daemonSet: MeshView["daemonSet"];
  /** What this identity may not read (`daemonsets`, `nodes`). */
  forbidden: string[];
  leader: string | null;
  nodesReady: number;
  nodes: number;
  /** Lowest and highest config version among the nodes read. */
  configVersions: { min: number; max: number } | null;
  perNode: StatusNode[];
  /** Newest first: pod restarts, error counters, Warning Events. */
  errors: string[];
}

/** Builds the status from what the API server and the nodes' metrics say. */
export function buildStatus(
  init: { server: string; kubernetes: string; leader: string | null },
  view: MeshView,
  reports: readonly NodeReport[],
  events: readonly { at: string; object: string; reason: string; message: string; count: number }[],
): MeshStatus {
  const perNode: StatusNode[] = reports.map((r) => {
    const f = r.metrics ? nodeFacts(r.metrics) : null;
    return {
      node: r.node.name,
      nodeReady: r.node.ready,
      pod: r.pod?.name ?? null,
      podReady: r.pod?.ready ?? false,
      leader: !!r.pod && r.pod.name === init.leader,
      configVersion: f?.configVersion ?? null,
      datapath: f?.datapath ?? null,
      datapathReason: f?.datapathReason ?? null,
      version: meshdVersion(f, r.pod?.image),
      ...(f && Object.keys(f.problems).length ? { problems: f.problems } : {}),
      ...(f?.configSource ? { configSource: f.configSource } : {}),
      ...(r.metricsError ? { metricsError: r.metricsError } : {}),
    };
  });
  const versions = perNode.map((n) => n.configVersion).filter((x): x is number => x !== null);
  const errors: string[] = [];
  for (const r of reports) {
    const p = r.pod;
    if (!p) continue;
    if (p.waiting) errors.push(`${r.node.name} ${p.name}: waiting, ${p.waiting}`);
    if (p.restarts > 0) {
      errors.push(
        `${r.node.name} ${p.name}: ${p.restarts} restart${p.restarts === 1 ? "" : "s"}` +
          (p.lastTermination ? `, last ended ${p.lastTermination}` : ""),
      );
    }
    if (r.metrics) {
      for (const [what, n] of Object.entries(nodeFacts(r.metrics).errors)) {
        errors.push(`${r.node.name} ${p.name}: ${what}: ${n}`);
      }
      const f = nodeFacts(r.metrics);
      if (f.connected === false) {
        errors.push(`${r.node.name} ${p.name}: no config stream to the leader`);
      }
      if (f.configSource === "disk") {
        errors.push(
          `${r.node.name} ${p.name}: routes by the config saved on disk (no leader reached yet)`,
        );
      }
      errors.push(...problemLines(`${r.node.name} ${p.name}`, f));
    }
  }
  for (const e of events) {
    errors.push(
      `${e.at} ${e.object} ${e.reason}${e.count > 1 ? ` (x${e.count})` : ""}: ${e.message}`,
    );
  }
  return {
    ...init,
    versions: [...new Set(perNode.filter((n) => n.pod).map((n) => n.version))].sort(),
    images: [...new Set(view.pods.map((p) => p.image).filter((i) => i))].sort(),
    daemonSet: view.daemonSet,
    forbidden: view.forbidden,
    nodesReady: perNode.filter((n) => n.podReady).length,
    nodes: perNode.length,
    configVersions: versions.length
      ? { min: Math.min(...versions), max: Math.max(...versions) }
      : null,
    perNode,
    errors,
  };
}

/**
 * The errors of what a node's `/api/status` lists (warnings are left to it): each message
 * served, then how many more of a kind there are.
 */
function problemLines(who: string, f: ReturnType<typeof nodeFacts>): string[] {
  const out: string[] = [];
  for (const kind of ["invalid_object", "listener_unbound", "save_failed"]) {
    const n = f.problems[kind] ?? 0;
    if (n === 0) continue;
    const shown = f.problemMessages.filter((p) => p.kind === kind);
    for (const p of shown) out.push(`${who}: ${PROBLEM_KINDS[kind]}: ${p.message}`);
    if (n > shown.length) {
      out.push(
        `${who}: ${PROBLEM_KINDS[kind]}: ${shown.length ? `${n - shown.length} more` : n}` +
          (kind === "save_failed" ? "" : " (its /api/status lists them all)"),
      );
    }
  }
  return out;
}

/** `text`, cut to `max` characters with an ellipsis (the JSON has it whole). */
function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

/** One version, or each with its nodes. */
function versionsRow(s: MeshStatus): string {
  const withPod = s.perNode.filter((n) => n.pod);
  if (withPod.length === 0) return "(no pods)";
  if (s.versions.length === 1) return s.versions[0]!;
  return s.versions.map((v) =>
    `${v} on ${withPod.filter((n) => n.version === v).map((n) => n.node).join(", ")}`
  ).join("; ");
}

/** `meshd status` as one screen of text. */
export function formatStatus(s: MeshStatus): string {
  const ds = s.daemonSet;
  const rows: [string, string][] = [
    ["Cluster", `${s.server}, Kubernetes ${s.kubernetes}`],
    ["meshd", versionsRow(s)],
    [
      "DaemonSet",
      ds
        ? `desired ${ds.desired}, ready ${ds.ready}, up to date ${ds.updated}, available ${ds.available}`
        : s.forbidden.includes("daemonsets")
        ? "not readable by this identity"
        : "not found",
    ],
    ["Leader", s.leader ?? "none (no meshd holds the Lease)"],
    ["Nodes", `${s.nodesReady}/${s.nodes} with a ready meshd`],
    [
      "Config",
      !s.configVersions
        ? "unknown (no node's metrics could be read)"
        : s.configVersions.min === s.configVersions.max
        ? `v${s.configVersions.max} on every node read`
        : `skew: v${s.configVersions.min} to v${s.configVersions.max} (${
          s.perNode.filter((n) =>
            n.configVersion !== null && n.configVersion < s.configVersions!.max
          )
            .map((n) => `${n.node} v${n.configVersion}`).join(", ")
        } behind)`,
    ],
    [
      "Data path",
      Object.entries(
        s.perNode.reduce((m, n) => {
          const k = n.datapath ?? "unknown";
          m[k] = (m[k] ?? 0) + 1;
          return m;
        }, {} as Record<string, number>),
      ).map(([k, n]) => `${k} ${n}`).join(", ") || "-",
    ],
  ];
  const out = rows.map(([k, v]) => `${(k + ":").padEnd(12)}${v}`);
  const table = [
    ["NODE", "POD", "READY", "CONFIG", "DATA PATH"],
    ...s.perNode.map((n) => [
      n.node,
      `${n.pod ?? "(none)"}${n.leader ? " (leader)" : ""}`,
      n.podReady ? "yes" : "no",
      n.configVersion === null ? "?" : `v${n.configVersion}`,
      n.datapath === null
        ? `? (${n.metricsError ?? "no metrics"})`
        : n.datapath === "ebpf"
        ? "ebpf"
        : clip(`${n.datapath}: ${n.datapathReason}`, 72),
    ]),
  ];
  const w = table[0]!.map((_, i) => Math.max(...table.map((t) => t[i]!.length)));
  out.push("", ...table.map((t) => t.map((c, i) => i < 4 ? c.padEnd(w[i]!) : c).join("  ")));
  out.push("", s.errors.length ? "Last errors:" : "Last errors: none");
  for (const e of s.errors.slice(0, 10)) out.push(`  ${e}`);
  return out.join("\n") + "\n";
}

/** `meshd status`: a one-screen summary of the installed mesh. */
export async function statusCommand(
  values: Record<string, FlagValue>,
  io: CliIo,
): Promise<number> {
  const v = new FlagValues(values);
  const { kapi, kube } = await kubeClientFor(v.optionalString("kubeconfig"), io);
  const ver = await kapi.request("GET", "/version", undefined, { timeoutMs: 5_000 });
  const view = await readView(kapi, kube, v);
  const ns = v.string("mesh-namespace");
  const { leaseHolder } = await import("../controller/mod.ts");
  const leader = await leaseHolder(kapi, ns, v.string("lease-name"), Date.now());
  const reports = await readNodeMetrics(kapi, kube, view, {
    namespace: ns,
    port: v.number("metrics-port"),
  });
  let events: Awaited<ReturnType<typeof kube.warningEvents>> = [];
  try {
    events = await kube.warningEvents(kapi, ns);
  } catch (e) {
    io.stderr(
      warningLine("meshd status", `cannot read the Events in ${ns}: ${(e as Error).message}`),
    );
  }
  const s = buildStatus(
    { server: kapi.server, kubernetes: String(ver["gitVersion"] ?? "?"), leader },
    view,
    reports,
    events,
  );
  io.stdout(
    v.optionalString("output") === "json" ? JSON.stringify(s, null, 2) + "\n" : formatStatus(s),
  );
  const healthy = (s.daemonSet !== null || s.forbidden.includes("daemonsets")) &&
    s.leader !== null && s.nodesReady === s.nodes && s.nodes > 0;
  return healthy ? 0 : 1;
}

/** `meshd stat`: per service port, the golden signals over `--window`, from every node. */
export async function statCommand(
  values: Record<string, FlagValue>,
  io: CliIo,
  positionals: string[],
): Promise<number> {
  const v = new FlagValues(values);
  const { kapi, kube } = await kubeClientFor(v.optionalString("kubeconfig"), io);
  const view = await readView(kapi, kube, v);
  const ns = v.string("mesh-namespace");
  const port = v.number("metrics-port");
  const windowMs = v.number("window");
  const pods = view.pods.filter((p) => p.ready);
  if (pods.length === 0) {
    throw new CliError(`No ready meshd pod in ${ns} (selector ${meshRef(v).selector})`);
  }
  const read = (name: string) =>
    kube.podMetrics(kapi, { namespace: ns, name, port }).then(parsePromText);
  const first = await Promise.all(pods.map((p) => read(p.name).catch((e: Error) => e)));
  const started = performance.now();
  await new Promise((r) => setTimeout(r, windowMs));
  const second = await Promise.all(pods.map((p) => read(p.name).catch((e: Error) => e)));
  const seconds = (performance.now() - started) / 1000;
  const windows: MetricsWindow[] = [];
  const unread: string[] = [];
  pods.forEach((p, i) => {
    const [a, b] = [first[i]!, second[i]!];
    if (a instanceof Error || b instanceof Error) {
      unread.push(`${p.node} (${p.name}): ${((a instanceof Error ? a : b) as Error).message}`);
    } else windows.push({ before: a, after: b });
  });
  for (const u of unread) {
    io.stderr(warningLine("meshd stat", `left out, its metrics cannot be read: ${u}`));
  }
  if (windows.length === 0) {
    throw new CliError(
      "Cannot read any meshd pod's metrics through the API server's pod proxy (needs get " +
        "pods/proxy, and the API server a route to the nodes)",
    );
  }
  const filter = positionals[0];
  const rows = goldenSignals(windows, seconds).filter((r) =>
    !filter || r.service === filter || r.service.startsWith(`${filter}/`)
  );
  const windowSeconds = Math.round(windowMs / 100) / 10;
  io.stdout(
    v.optionalString("output") === "json"
      ? JSON.stringify(
        { windowSeconds, nodes: windows.length, unread, services: rows },
        null,
        2,
      ) + "\n"
      : formatStatTable(rows, windowSeconds),
  );
  return 0;
}
