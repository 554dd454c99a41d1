import {
  cleanupCoreDns,
  coreDnsCorefile,
  corefileZones,
  currentMeshBlock,
  deleteShadowServices,
  dnsServiceAddresses,
  leaseHolder,
  meshZones,
  prepareCoreDns,
} from "../controller/mod.ts";
import {
  EbpfDatapath,
  findLibbpf,
  kernelVersion,
  MIN_KERNEL,
  probeDatapath,
  readBpfObject,
} from "../datapath/mod.ts";
import type { KubeApi, MeshPodView, MeshView } from "../kube/mod.ts";
import { type CheckResult, checksJson, formatChecks } from "./check_report.ts";
import { CliError, type CliIo, kubeClientFor, warningLine } from "./common.ts";
import {
  appliedByLeader,
  meshdVersion,
  type NodeFacts,
  nodeFacts,
  type NodeReport,
  PROBLEM_KINDS,
  readNodeMetrics,
} from "./mesh_nodes.ts";
import { type FlagValue, FlagValues } from "./flags.ts";
import { dnsTtlSeconds } from "./options.ts";

type Values = FlagValues;

const corednsRef = (v: Values) => ({
  namespace: v.string("coredns-namespace"),
  name: v.string("coredns-configmap"),
});

/** `meshd prepare`: meshd's server block into the CoreDNS Corefile. */
export async function prepareCommand(
  values: Record<string, FlagValue>,
  io: CliIo,
): Promise<number> {
  const v = new FlagValues(values);
  const { kapi } = await kubeClientFor(v.optionalString("kubeconfig"), io);
  const ref = corednsRef(v);
  const r = await prepareCoreDns(kapi, {
    meshNamespace: v.string("mesh-namespace"),
    dnsService: v.string("dns-service"),
    domain: v.string("domain"),
    aliases: v.list("domain-aliases"),
    coredns: ref,
    cacheSeconds: dnsTtlSeconds(v.number("dns-ttl")),
  });
  const where = `${ref.namespace}/${ref.name}`;
  const zones = r.zones.join(", ");
  io.stdout(
    r.changed
      ? `CoreDNS (${where}) now forwards ${zones} to ${r.upstreams.join(", ")}\n`
      : `CoreDNS (${where}) already forwards ${zones} to ${
        r.upstreams.join(", ")
      }; nothing changed\n`,
  );
  for (const a of r.leftOut) {
    io.stderr(warningLine(
      "meshd prepare",
      `the Corefile already serves "${a}:53" in a block meshd did not add (Traefik Mesh's?), ` +
        `so CoreDNS does not forward ${a} to meshd; run meshd prepare again after Traefik ` +
        "Mesh's cleanup removes that block",
    ));
  }
  if (!r.reloads) {
    io.stderr(warningLine(
      "meshd prepare",
      "the Corefile has no reload plugin, so CoreDNS reads it only at start; restart it " +
        `(kubectl -n ${ref.namespace} rollout restart deployment coredns)`,
    ));
  }
  return 0;
}

/** `meshd cleanup`: what prepare added, and the shadow Services. */
export async function cleanupCommand(
  values: Record<string, FlagValue>,
  io: CliIo,
): Promise<number> {
  const v = new FlagValues(values);
  const { kapi } = await kubeClientFor(v.optionalString("kubeconfig"), io);
  const ns = v.string("mesh-namespace");
  const lease = v.string("lease-name");
  const holder = await leaseHolder(kapi, ns, lease, Date.now());
  if (holder && !v.bool("force")) {
    throw new CliError(
      `meshd is still running: "${holder}" holds the Lease ${ns}/${lease} and would ` +
        "write its shadow Services again; delete the DaemonSet first, or pass --force",
    );
  }
  const ref = corednsRef(v);
  const removed = await cleanupCoreDns(kapi, ref);
  io.stdout(
    removed
      ? `Removed meshd's block from the CoreDNS Corefile (${ref.namespace}/${ref.name})\n`
      : `The CoreDNS Corefile (${ref.namespace}/${ref.name}) has no meshd block; nothing changed\n`,
  );
  const n = await deleteShadowServices(kapi, ns);
  io.stdout(`Deleted ${n} shadow Service${n === 1 ? "" : "s"} in ${ns}\n`);
  return 0;
}

/** The Kubernetes minors meshd supports: SelfSubjectReview v1 (1.28) up to the newest tested. */
export const KUBE_SUPPORTED: { min: [number, number]; max: [number, number] } = {
  min: [1, 28],
  max: [1, 37],
};

type Add = (r: Omit<CheckResult, "group">) => void;

/**
 * `meshd check`: the checks grouped, ✔ ‼ ✘ per line with a hint under each problem, or
 * `-o json`; `--pre` checks a cluster before install, otherwise an installed meshd too.
 * `--wait` runs them again until none fails or the time is up. 1 when something fails.
 */
export async function checkCommand(
  values: Record<string, FlagValue>,
  io: CliIo,
): Promise<number> {
  const v = new FlagValues(values);
  const waitMs = v.optionalNumber("wait") ?? 0;
  const deadline = Date.now() + waitMs;
  for (let round = 1;; round++) {
    const results = await runChecks(v, io);
    const failed = results.filter((r) => r.level === "fail");
    const left = deadline - Date.now();
    if (failed.length === 0 || left <= 0) {
      io.stdout(v.string("output") === "json" ? checksJson(results) : formatChecks(results));
      return failed.length ? 1 : 0;
    }
    if (v.string("output") !== "json") {
      io.stderr(
        `meshd check: waiting (round ${round}, ${Math.ceil(left / 1000)}s left): ${
          failed.map((f) => f.message).join("; ")
        }\n`,
      );
    }
    await new Promise((r) => setTimeout(r, Math.min(2_000, left)));
  }
}

async function runChecks(v: Values, io: CliIo): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  const group = (g: string): Add => (r) => results.push({ group: g, ...r });
  const pre = v.bool("pre");
  let api: KubeApi | null = null;
  let kube: typeof import("../kube/mod.ts") | null = null;
  const apiLine = group("Kubernetes API");
  try {
    ({ kapi: api, kube } = await kubeClientFor(v.optionalString("kubeconfig"), io));
    const ver = await api.request("GET", "/version", undefined, { timeoutMs: 5_000 });
    const git = String(ver["gitVersion"] ?? "(no version)");
    apiLine({ name: "api", level: "ok", message: `${api.server} answers, Kubernetes ${git}` });
    apiLine(versionCheck(git));
  } catch (e) {
    apiLine({
      name: "api",
      level: "fail",
      message: (e as Error).message,
      hint: "check --kubeconfig (or $KUBECONFIG) and that the API server is up",
    });
    api = null;
  }
  if (api && kube) {
    if (pre) await checkInstallRbac(api, kube, v, group("RBAC"));
    await checkRbac(api, kube, v, group("RBAC"));
    const smi = group("SMI CRDs");
    try {
      for (const s of await kube.smiGroupStatus(api)) {
        smi({
          name: "smi",
          level: s.ok ? "ok" : "warn",
          message: s.message,
          ...(s.ok ? {} : { hint: "kubectl apply --server-side -f manifests/crds/" }),
        });
      }
    } catch (e) {
      smi({
        name: "smi",
        level: "fail",
        message: `Cannot read the SMI API groups: ${(e as Error).message}`,
      });
    }
    if (pre) {
      await checkCoreDnsFound(api, v, group("CoreDNS"));
      await checkKernels(api, kube, group("Nodes"));
    } else {
      await checkCoreDns(api, v, group("CoreDNS"));
      await checkInstalled(api, kube, v, group("meshd"));
    }
  } else {
    const names = pre ? ["rbac", "smi", "coredns", "kernel"] : ["rbac", "smi", "coredns", "meshd"];
    for (const name of names) {
      results.push({ group: "Skipped", name, level: "skip", message: `${name}: needs the API` });
    }
  }
  group("Data path on this machine")(await localDatapath(v));
  return results;
}

/**
 * What `meshd run --datapath auto` would choose on this machine, short of attaching: the
 * programs are loaded (the verifier runs) and let go. Run in a meshd pod, that node's answer.
 */
async function localDatapath(v: Values): Promise<Omit<CheckResult, "group">> {
  const libbpf = v.optionalString("libbpf");
  const dp = await probeDatapath({
    kernelRelease: v.optionalString("kernel-release"),
    libbpfPath: libbpf,
    bpffs: v.string("bpffs"),
    cgroup: v.optionalString("cgroup"),
    programs: async () => {
      const object = await readBpfObject(v.optionalString("bpf-object"));
      EbpfDatapath.verify(libbpf ?? findLibbpf() ?? "libbpf.so.1", object);
      return "the programs load (not attached by check)";
    },
  });
  return {
    name: "datapath",
    level: dp.datapath === "ebpf" ? "ok" : "warn",
    message: `${dp.datapath}: ${dp.reason}`,
    ...(dp.datapath === "ebpf" ? {} : {
      hint: "meshd runs on the userspace proxy here; in a meshd pod this is that node's answer",
    }),
  };
}

/** Whether the API server's version is one meshd supports. */
export function versionCheck(gitVersion: string): Omit<CheckResult, "group"> {
  const m = gitVersion.match(/^v?(\d+)\.(\d+)/);
  const { min, max } = KUBE_SUPPORTED;
  const range = `${min.join(".")} to ${max.join(".")}`;
  if (!m) {
    return {
      name: "version",
      level: "warn",
      message: `Kubernetes "${gitVersion}" is not a version meshd can read; it supports ${range}`,
      hint: "meshd may work; it is tested on the versions named",
    };
  }
  const v = [Number(m[1]), Number(m[2])];
  const cmp = (a: number[], b: number[]) => a[0]! - b[0]! || a[1]! - b[1]!;
  if (cmp(v, min) < 0) {
    return {
      name: "version",
      level: "fail",
      message: `Kubernetes ${v.join(".")} is older than ${
        min.join(".")
      }, the oldest meshd supports`,
      hint: `upgrade the cluster to ${range}`,
    };
  }
  if (cmp(v, max) > 0) {
    return {
      name: "version",
      level: "warn",
      message: `Kubernetes ${v.join(".")} is newer than ${max.join(".")}, the newest meshd is ` +
        "tested on",
      hint: "meshd should work; report what does not",
    };
  }
  return {
    name: "version",
    level: "ok",
    message: `Kubernetes ${v.join(".")} is in the supported range (${range})`,
  };
}

/** A 403 from the API: the identity may not look, which is no failure of meshd. */
function forbidden(e: unknown): boolean {
  return (e as { status?: number })?.status === 403;
}

async function checkInstallRbac(
  api: KubeApi,
  kube: typeof import("../kube/mod.ts"),
  v: Values,
  add: Add,
): Promise<void> {
  try {
    const wanted = kube.installPermissions(v.string("mesh-namespace"), corednsRef(v));
    const missing = [];
    for (const p of wanted) if (!(await kube.mayI(api, p))) missing.push(p);
    add(
      missing.length === 0
        ? {
          name: "rbac-install",
          level: "ok",
          message: `you may create all ${wanted.length} kinds of object the install creates`,
        }
        : {
          name: "rbac-install",
          level: "fail",
          message: `the install needs to ${
            missing.map((p) => `${kube.describePermission(p)} (${p.why})`).join("; ")
          }`,
          hint: "install as a cluster admin (kubectl apply --server-side -k manifests/)",
        },
    );
  } catch (e) {
    add({
      name: "rbac-install",
      level: "fail",
      message: `Cannot review access: ${(e as Error).message}`,
    });
  }
}

async function checkCoreDnsFound(api: KubeApi, v: Values, add: Add): Promise<void> {
  const ref = corednsRef(v);
  const where = `${ref.namespace}/${ref.name}`;
  let corefile: string;
  try {
    corefile = await coreDnsCorefile(api, ref);
  } catch (e) {
    add({
      name: "coredns",
      level: "fail",
      message: (e as Error).message,
      hint: "meshd prepare edits CoreDNS's Corefile; pass --coredns-namespace and " +
        "--coredns-configmap if it lives elsewhere",
    });
    return;
  }
  const [domain, ...aliases] = meshZones({
    domain: v.string("domain"),
    aliases: v.list("domain-aliases"),
  });
  // Zones another block serves: prepare refuses the domain there, and leaves an alias out.
  const { elsewhere } = corefileZones(corefile);
  const held = aliases.filter((a) => elsewhere.includes(a));
  if (elsewhere.includes(domain!)) {
    add({
      name: "coredns",
      level: "fail",
      message: `the Corefile in ${where} already serves "${domain}" in a block meshd did not add`,
      hint: "remove that block, or pick another --domain; meshd prepare refuses to serve it twice",
    });
  } else if (held.length > 0) {
    add({
      name: "coredns",
      level: "warn",
      message: `the Corefile in ${where} already serves ${held.join(", ")} in a block meshd did ` +
        "not add (Traefik Mesh's?): meshd prepare will leave " +
        (held.length === 1 ? "it" : "them") + " out",
      hint: "run meshd prepare again once that block is gone",
    });
  } else {
    add({
      name: "coredns",
      level: "ok",
      message: `CoreDNS's Corefile is in ConfigMap ${where}` +
        (currentMeshBlock(corefile) ? ", with meshd's block already" : ""),
    });
  }
}

async function checkKernels(
  api: KubeApi,
  kube: typeof import("../kube/mod.ts"),
  add: Add,
): Promise<void> {
  let nodes;
  try {
    nodes = await kube.listNodes(api);
  } catch (e) {
    add({
      name: "kernel",
      level: forbidden(e) ? "skip" : "fail",
      message: `Cannot list the Nodes: ${(e as Error).message}`,
    });
    return;
  }
  if (nodes.length === 0) {
    add({
      name: "kernel",
      level: "warn",
      message: "the cluster has no Nodes yet",
      hint: "meshd runs on every node; add nodes",
    });
    return;
  }
  const min = MIN_KERNEL.join(".");
  for (const n of nodes) {
    const kv = kernelVersion(n.kernelVersion);
    const ok = !!kv &&
      (kv[0] > MIN_KERNEL[0] || (kv[0] === MIN_KERNEL[0] && kv[1] >= MIN_KERNEL[1]));
    add(
      ok
        ? {
          name: "kernel",
          level: "ok",
          message: `${n.name}: kernel ${n.kernelVersion} (eBPF needs ${min})`,
        }
        : {
          name: "kernel",
          level: "warn",
          message:
            `${n.name}: kernel ${n.kernelVersion || "(not reported)"} is older than ${min}, ` +
            "or not a version: meshd runs there on the userspace proxy alone",
          hint: `upgrade the node's kernel to ${min} or newer for the eBPF fast path`,
        },
    );
  }
}

/** After install: the DaemonSet rolled out, a leader elected, every node's config and data path. */
async function checkInstalled(
  api: KubeApi,
  kube: typeof import("../kube/mod.ts"),
  v: Values,
  add: Add,
): Promise<void> {
  const ns = v.string("mesh-namespace");
  const ref = { namespace: ns, daemonSet: v.string("daemonset"), selector: selectorOf(v) };
  let view;
  try {
    view = await kube.readMeshView(api, ref);
  } catch (e) {
    add({
      name: "daemonset",
      level: forbidden(e) ? "skip" : "fail",
      message: `Cannot read meshd's DaemonSet, pods and Nodes: ${(e as Error).message}`,
      ...(forbidden(e)
        ? {}
        : { hint: "is the API server reachable, and meshd installed in --mesh-namespace?" }),
    });
    return;
  }
  add(daemonSetCheck(view, ref));
  const lease = v.string("lease-name");
  let holder: string | null = null;
  try {
    holder = await leaseHolder(api, ns, lease, Date.now());
    add(leaderCheck(holder, view, { ...ref, lease }));
  } catch (e) {
    add({
      name: "leader",
      level: forbidden(e) ? "skip" : "fail",
      message: `Cannot read the Lease ${ns}/${lease}: ${(e as Error).message}`,
    });
  }
  const reports = await readNodeMetrics(api, kube, view, {
    namespace: ns,
    port: v.number("metrics-port"),
  });
  // The leader's version is what every node should route by; without its metrics, the newest.
  const leaderReport = reports.find((r) => r.pod?.name === holder && r.metrics);
  const applied = leaderReport ? appliedByLeader(leaderReport.metrics!) : new Map<string, number>();
  const target = (leaderReport && nodeFacts(leaderReport.metrics!).configVersion) ??
    Math.max(0, ...reports.map((r) => r.metrics ? nodeFacts(r.metrics).configVersion ?? 0 : 0));
  for (const r of reports) add(nodeCheck(r, { ns, target, applied, leader: holder }));
  const versions = versionsCheck(reports, ns);
  if (versions) add(versions);
}

/**
 * Every node's meshd the same build (`meshd_build_info`; the image tag for a meshd older than
 * the metric, or whose metrics were not read); different ones are a warning. Null: no pod.
 */
export function versionsCheck(
  reports: readonly NodeReport[],
  ns: string,
): Omit<CheckResult, "group"> | null {
  const by = new Map<string, string[]>();
  for (const r of reports) {
    if (!r.pod) continue;
    const v = meshdVersion(r.metrics ? nodeFacts(r.metrics) : null, r.pod.image);
    by.set(v, [...(by.get(v) ?? []), r.node.name]);
  }
  if (by.size === 0) return null;
  if (by.size === 1) {
    const [v] = [...by.keys()];
    return { name: "versions", level: "ok", message: `every node runs meshd ${v}` };
  }
  return {
    name: "versions",
    level: "warn",
    message: `nodes run different meshd builds: ${
      [...by].map(([v, nodes]) => `${v} on ${nodes.join(", ")}`).join("; ")
    }`,
    hint: `a rollout under way, or pods left behind: kubectl -n ${ns} rollout status daemonset`,
  };
}

/** The DaemonSet rolled out: seen by its controller, on some node, every pod new and ready. */
function daemonSetCheck(
  view: MeshView,
  ref: { namespace: string; daemonSet: string },
): Omit<CheckResult, "group"> {
  const ds = view.daemonSet;
  const name = `${ref.namespace}/${ref.daemonSet}`;
  if (view.forbidden.includes("daemonsets")) {
    return {
      name: "daemonset",
      level: "skip",
      message: `the DaemonSet ${name} is not this identity's to read (the nodes below are ` +
        `from its pods${view.forbidden.includes("nodes") ? "; Nodes may not be listed" : ""})`,
    };
  }
  if (!ds) {
    return {
      name: "daemonset",
      level: "fail",
      message: `there is no DaemonSet ${name}`,
      hint: "install meshd (kubectl apply --server-side -k manifests/), or pass --mesh-namespace",
    };
  }
  const done = ds.observed && ds.desired > 0 && ds.updated === ds.desired &&
    ds.ready === ds.desired && ds.available === ds.desired;
  return done
    ? {
      name: "daemonset",
      level: "ok",
      message: `DaemonSet ${name} is rolled out: ${ds.ready} of ${ds.desired} pods ready and ` +
        "up to date",
    }
    : {
      name: "daemonset",
      level: "fail",
      message: `DaemonSet ${name} is not rolled out: ${ds.ready} of ${ds.desired} pods ready, ` +
        `${ds.updated} up to date, ${ds.available} available`,
      hint: `kubectl -n ${ref.namespace} rollout status daemonset ${ref.daemonSet}; --wait 2m ` +
        "waits for it",
    };
}

/** A leader elected, and one of meshd's pods now. */
function leaderCheck(
  holder: string | null,
  view: MeshView,
  ref: { namespace: string; selector: string; lease: string },
): Omit<CheckResult, "group"> {
  const lease = `${ref.namespace}/${ref.lease}`;
  if (!holder) {
    return {
      name: "leader",
      level: "fail",
      message: `no meshd holds the Lease ${lease}: no controller is elected`,
      hint: `see the meshd pods' logs (kubectl -n ${ref.namespace} logs -l ${ref.selector})`,
    };
  }
  return view.pods.some((p) => p.name === holder)
    ? { name: "leader", level: "ok", message: `${holder} leads (Lease ${lease})` }
    : {
      name: "leader",
      level: "warn",
      message: `${holder} holds the Lease ${lease} but is not a meshd pod now`,
      hint: "a pod that left recently: another takes over when the Lease expires",
    };
}

/**
 * One node's check: its meshd pod ready, the config version it routes by against `target` (the
 * leader's), and its data path; from its metrics, else from what the leader says it applied.
 */
export function nodeCheck(
  r: NodeReport,
  o: { ns: string; target: number; applied: Map<string, number>; leader: string | null },
): Omit<CheckResult, "group"> {
  const name = r.node.name;
  if (!r.pod) {
    return {
      name: "node",
      level: "fail",
      message: `${name}: no meshd pod`,
      hint:
        `kubectl -n ${o.ns} describe daemonset (a taint, the nodeSelector, or not scheduled yet)`,
    };
  }
  const pod = r.pod;
  if (!pod.ready) return notReadyCheck(name, pod, o.ns);
  const byLeader = o.applied.get(pod.name);
  if (!r.metrics) return unreadCheck(name, pod.name, r.metricsError, byLeader, o.target);
  return metricsCheck(name, pod.name, nodeFacts(r.metrics), o);
}

/** The check of a node whose meshd pod is not ready, with what its status says of why. */
function notReadyCheck(name: string, pod: MeshPodView, ns: string): Omit<CheckResult, "group"> {
  const why = [
    pod.waiting,
    pod.restarts ? `${pod.restarts} restarts` : "",
    pod.lastTermination ? `last ended ${pod.lastTermination}` : "",
  ].filter((x) => x).join(", ");
  return {
    name: "node",
    level: "fail",
    message: `${name}: meshd pod ${pod.name} is not ready (${pod.phase}${why ? `, ${why}` : ""})`,
    hint: `kubectl -n ${ns} logs ${pod.name}; /readyz says why on port 9001`,
  };
}

/** The check of a ready node whose metrics cannot be read: by what the leader says it applied. */
function unreadCheck(
  name: string,
  podName: string,
  metricsError: string | undefined,
  byLeader: number | undefined,
  target: number,
): Omit<CheckResult, "group"> {
  if (byLeader !== undefined) {
    const behind = byLeader < target;
    return {
      name: "node",
      level: behind ? "fail" : "warn",
      message: `${name}: pod ${podName} applied config v${byLeader}` +
        (behind ? `, the leader is at v${target}` : "") +
        ` (as the leader says; its metrics: ${metricsError})`,
      hint: "check needs get pods/proxy, and the API server a route to the node's address",
    };
  }
  return {
    name: "node",
    level: "warn",
    message: `${name}: pod ${podName} is ready; its metrics cannot be read: ${metricsError}`,
    hint: "check needs get pods/proxy, and the API server a route to the node's address " +
      "and --metrics-port",
  };
}

/** The check of a ready node from its metrics: config version, data path and problems. */
function metricsCheck(
  name: string,
  podName: string,
  f: NodeFacts,
  o: { target: number; leader: string | null },
): Omit<CheckResult, "group"> {
  const version = f.configVersion ?? 0;
  const dp = f.datapath
    ? `${f.datapath}${f.datapath === "ebpf" ? "" : ` (${f.datapathReason})`}`
    : "data path unknown";
  const lead = podName === o.leader ? ", leader" : "";
  if (version < o.target) {
    return {
      name: "node",
      level: "fail",
      message: `${name}: pod ${podName} routes by config v${version}, ` +
        `the leader is at v${o.target}; ${dp}`,
      hint: f.connected === false
        ? "it holds no config stream to the leader (meshd_distribution_connected 0): see its log"
        : "it is behind; --wait gives it time",
    };
  }
  // What its /api/status lists that degrades the node itself (meshd_status_problems): objects
  // rejected are the input's, the same wherever they are compiled; `meshd status` shows them.
  const problems = ["listener_unbound", "save_failed"]
    .filter((k) => (f.problems[k] ?? 0) > 0)
    .map((k) => `${PROBLEM_KINDS[k]}: ${f.problems[k]}`);
  const fromDisk = f.configSource === "disk" ? ", from the config saved on disk" : "";
  const ok = f.datapath === "ebpf" && problems.length === 0 && !fromDisk;
  return {
    name: "node",
    level: ok ? "ok" : "warn",
    message: `${name}: pod ${podName}${lead}, config v${version}${fromDisk}, ${dp}` +
      (problems.length ? `; ${problems.join(", ")}` : ""),
    ...(ok ? {} : {
      hint: problems.length
        ? "meshd status shows the messages; the node's /api/status lists them all"
        : fromDisk
        ? "it has not reached a leader since it started: see its log"
        : "this node runs on the userspace proxy alone (meshd_datapath_info says why)",
    }),
  };
}

/** The `--meshd-selector` pairs as a label selector. */
export function selectorOf(v: Values): string {
  return v.list("meshd-selector").join(",");
}

async function checkRbac(
  api: KubeApi,
  kube: typeof import("../kube/mod.ts"),
  v: Values,
  add: Add,
): Promise<void> {
  let who = "this identity";
  try {
    const r = await api.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", {
      apiVersion: "authentication.k8s.io/v1",
      kind: "SelfSubjectReview",
    });
    const name = ((r["status"] ?? {}) as { userInfo?: { username?: string } }).userInfo?.username;
    if (name) who = name;
  } catch { /* an older API server: the reviews below still answer */ }
  try {
    const wanted = kube.runPermissions(v.string("mesh-namespace"));
    const missing = [];
    for (const p of wanted) if (!(await kube.mayI(api, p))) missing.push(p);
    if (missing.length === 0) {
      add({
        name: "rbac",
        level: "ok",
        message: `${who} may do all ${wanted.length} things meshd run does`,
      });
    } else {
      add({
        name: "rbac",
        level: "fail",
        message: `${who} may not ${
          missing.map((p) => `${kube.describePermission(p)} (${p.why})`).join("; ")
        }`,
        hint: "apply manifests/rbac.yaml; meshd's ServiceAccount needs it all",
      });
    }
  } catch (e) {
    add({ name: "rbac", level: "fail", message: `Cannot review access: ${(e as Error).message}` });
  }
}

async function checkCoreDns(
  api: KubeApi,
  v: Values,
  add: Add,
): Promise<void> {
  const ref = corednsRef(v);
  const where = `${ref.namespace}/${ref.name}`;
  try {
    const [domain, ...aliases] = meshZones({
      domain: v.string("domain"),
      aliases: v.list("domain-aliases"),
    });
    const corefile = await coreDnsCorefile(api, ref);
    const block = currentMeshBlock(corefile);
    if (!block) {
      add({
        name: "coredns",
        level: "fail",
        message: `the Corefile in ${where} has no meshd block`,
        hint: "run meshd prepare (the install's meshd-prepare Job runs it)",
      });
      return;
    }
    const { forwarded, elsewhere } = corefileZones(corefile);
    const to = (block.match(/^\s*forward \. (.+)$/m)?.[1] ?? "").split(/\s+/)
      .map((a) => a.replace(/:53$/, "").replace(/^\[(.*)\]$/, "$1"));
    const want = await dnsServiceAddresses(
      api,
      v.string("mesh-namespace"),
      v.string("dns-service"),
    );
    const missing = aliases.filter((a) => !forwarded.includes(a));
    if (!forwarded.includes(domain!)) {
      add({
        name: "coredns",
        level: "fail",
        message: `${where} forwards "${forwarded.join(", ")}", not "${domain}"`,
        hint: "run meshd prepare",
      });
    } else if (to.join() !== want.join()) {
      add({
        name: "coredns",
        level: "fail",
        message:
          `${where} forwards ${domain} to ${to.join(", ")}, but ${v.string("dns-service")} is ` +
          `at ${want.join(", ")}`,
        hint: "run meshd prepare",
      });
    } else if (missing.length > 0) {
      // meshd answers them, but a client's query never reaches it
      const held = missing.filter((a) => elsewhere.includes(a));
      add({
        name: "coredns",
        level: "warn",
        message: `${where} forwards ${forwarded.join(", ")} to ${want.join(", ")}, not the alias` +
          `${missing.length === 1 ? "" : "es"} ${missing.join(", ")}` +
          (held.length > 0
            ? `: a block meshd did not add serves ${held.join(", ")} (Traefik Mesh's?)`
            : ""),
        hint: held.length > 0 ? "run meshd prepare after removing that block" : "run meshd prepare",
      });
    } else {
      add({
        name: "coredns",
        level: "ok",
        message: `${where} forwards ${forwarded.join(", ")} to ${want.join(", ")}`,
      });
    }
  } catch (e) {
    add({ name: "coredns", level: "fail", message: (e as Error).message });
  }
}
