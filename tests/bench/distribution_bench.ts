/**
 * The config distribution benchmark, against the real control plane on loopback:
 *
 * - Propagation: from an API write (one endpoint of one Service changed) to the moment the last
 *   node applied the version that carries it (each node acknowledges right after it applies),
 *   p50 and p99, with 3 real meshd nodes (one leads), then with 100 and 500 simulated node
 *   agents more (real DistributionClients, many per process: tests/bench/sim_agents.ts), at
 *   1,000 and 10,000 Services.
 * - Bytes: what the leader sent per node per change, against the whole config every second to
 *   every node (Traefik Mesh's model, whose proxies poll the full configuration each second).
 * - The leader's memory (RSS, and its peak) and CPU, over the changes and while idle.
 *
 * Prints a table and writes JSON. Not a test: it asserts nothing about times.
 *
 *   deno run --allow-all tests/bench/distribution_bench.ts [--services 1000,10000]
 *     [--agents 100,500] [--changes 40] [--out FILE]
 *
 * @module
 */
import { serverSideApply, TestCluster } from "../testenv/cluster.ts";
import { applyManifests, kustomizationObjects, meshdKubeconfig } from "../testenv/manifests.ts";
import { MeshdProcess } from "../testenv/meshd.ts";
import { Child, waitFor } from "../testenv/process.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const SIM = new URL("./sim_agents.ts", import.meta.url).pathname;
const NS = "bench";
const AGENTS_PER_PROCESS = 100;

interface Args {
  services: number[];
  agents: number[];
  changes: number;
  /** The longest wait for the leader's shadow Services before measuring anyway, seconds. */
  shadowWaitS: number;
  out: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    services: [1000, 10000],
    agents: [100, 500],
    changes: 40,
    shadowWaitS: 600,
    out: `${ROOT}bench-results/distribution.json`,
  };
  const list = (v: string) => v.split(",").map(Number);
  for (let i = 0; i < argv.length; i++) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (k === "--services" && v) a.services = list(v), i++;
    else if (k === "--agents" && v) a.agents = list(v), i++;
    else if (k === "--changes" && v) a.changes = Number(v), i++;
    else if (k === "--shadow-wait" && v) a.shadowWaitS = Number(v), i++;
    else if (k === "--out" && v) a.out = v, i++;
    else {
      console.error(
        "usage: distribution_bench.ts [--services 1000,10000] [--agents 100,500] " +
          "[--changes N (per case, default 40)] [--shadow-wait SECONDS (default 600)] [--out FILE]",
      );
      Deno.exit(2);
    }
  }
  const ok = (n: number, lo: number, hi: number) => Number.isInteger(n) && n >= lo && n <= hi;
  if (
    !a.services.every((n) => ok(n, 1, 50_000)) ||
    a.services.some((n, i) => n < (a.services[i - 1] ?? 0))
  ) {
    console.error("--services: ascending counts from 1 to 50000");
    Deno.exit(2);
  }
  if (
    !a.agents.every((n) => ok(n, 1, 2_000)) || a.agents.some((n, i) => n < (a.agents[i - 1] ?? 0))
  ) {
    console.error("--agents: ascending counts from 1 to 2000");
    Deno.exit(2);
  }
  if (!ok(a.shadowWaitS, 0, 3600)) {
    console.error("--shadow-wait: 0 to 3600 seconds");
    Deno.exit(2);
  }
  if (!ok(a.changes, 5, 500)) {
    console.error("--changes: 5 to 500");
    Deno.exit(2);
  }
  return a;
}

/** One process of simulated agents. */
class SimProcess {
  readonly #child: Child;
  /** Every version all of its agents applied: epoch/version to the last apply time. */
  readonly done = new Map<string, { version: number; epoch: string; last: number }>();
  readonly errors: string[] = [];
  readonly count: number;

  constructor(prefix: string, count: number, leader: unknown, token: string) {
    this.count = count;
    this.#child = new Child(prefix, ["run", "--allow-all", `--config=${ROOT}deno.json`, SIM], {
      stdin: true,
      onLine: (l, stream) => {
        if (!l) return;
        if (stream === "stderr") {
          this.errors.push(l);
          return;
        }
        const r = JSON.parse(l) as { epoch: string; version: number; last: number };
        this.done.set(`${r.epoch}/${r.version}`, r);
      },
    });
    this.#child.write(JSON.stringify({ prefix, count, leader, token }) + "\n");
  }

  /** When all its agents had applied `version` of `epoch` or a later one; undefined before. */
  appliedAt(epoch: string, version: number): number | undefined {
    let best: number | undefined;
    for (const r of this.done.values()) {
      if (r.epoch === epoch && r.version >= version && (best === undefined || r.last < best)) {
        best = r.last;
      }
    }
    return best;
  }

  async stop(): Promise<void> {
    await this.#child.closeStdin();
    await this.#child.wait(10_000);
  }
}

/** CPU seconds (user + system) process `pid` has used. */
function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

/** RSS and its peak, MiB. */
function memory(pid: number): { rss: number; peak: number } {
  const s = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kb = (k: string) => Number(s.match(new RegExp(`^${k}:\\s+(\\d+) kB`, "m"))?.[1] ?? 0);
  return { rss: kb("VmRSS") / 1024, peak: kb("VmHWM") / 1024 };
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

async function pool<T>(items: T[], width: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

function endpointSlice(i: number, generation: number) {
  return {
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: {
      name: `s-${i}-1`,
      namespace: NS,
      labels: { "kubernetes.io/service-name": `s-${i}` },
    },
    addressType: "IPv4",
    ports: [{ name: "web", port: 8080, protocol: "TCP" }],
    endpoints: [
      {
        addresses: [`203.0.113.${(i + generation) % 250 + 1}`],
        conditions: { ready: true },
        nodeName: "node-1",
      },
      {
        addresses: [`192.0.2.${i % 250 + 1}`],
        conditions: { ready: true },
        nodeName: "node-2",
      },
    ],
  };
}

/**
 * A write that the API server may refuse for a while under load (429, 5xx: on 2 busy cores a
 * POST can answer 504 after it stored the object): tried up to 6 times with a growing pause. A
 * 409 to a POST after a failed try is that try's object, already stored.
 */
async function write(
  cluster: TestCluster,
  method: "POST" | "PUT",
  path: string,
  body: unknown,
): Promise<void> {
  for (let attempt = 1;; attempt++) {
    const r = await cluster.request(method, path, body).catch((e) => ({
      status: 0,
      body: { message: String(e) } as Record<string, unknown>,
    }));
    if (r.status >= 200 && r.status <= 299) return;
    if (method === "POST" && r.status === 409 && attempt > 1) return;
    const transient = r.status === 0 || r.status === 429 || r.status >= 500;
    if (!transient || attempt >= 6) {
      throw new Error(`${method} ${path} answered ${r.status}: ${JSON.stringify(r.body)}`);
    }
    await new Promise((done) => setTimeout(done, 250 * 2 ** attempt));
  }
}

/** Creates Services s-<from>..s-<to-1> in the bench namespace, each with its EndpointSlice. */
async function populate(cluster: TestCluster, from: number, to: number): Promise<void> {
  const ids = Array.from({ length: to - from }, (_, k) => from + k);
  // Eight at a time: more only queues on two cores, and the API server starts timing out.
  await pool(ids, 8, async (i) => {
    await write(cluster, "POST", `/api/v1/namespaces/${NS}/services`, {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: `s-${i}`, namespace: NS },
      spec: { ports: [{ name: "web", port: 80, targetPort: 8080 }] },
    });
    await write(
      cluster,
      "POST",
      `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices`,
      endpointSlice(i, 0),
    );
  });
}

/** The Services in the meshd namespace: the leader's shadows. */
async function shadowCount(cluster: TestCluster): Promise<number> {
  const r = await cluster.must("GET", "/api/v1/namespaces/meshd/services?limit=1");
  const meta = r["metadata"] as { remainingItemCount?: number };
  return (r["items"] as unknown[]).length + (meta.remainingItemCount ?? 0);
}

/**
 * Waits until the leader has `want` shadow Services, or `seconds` pass; says how many it has
 * every 30 s. Returns the count at the end.
 */
async function waitForShadows(
  cluster: TestCluster,
  want: number,
  seconds: number,
  say: (s: string) => void,
): Promise<number> {
  const deadline = performance.now() + seconds * 1000;
  let told = performance.now();
  for (;;) {
    const n = await shadowCount(cluster).catch(() => 0);
    if (n >= want || performance.now() >= deadline) return n;
    if (performance.now() - told >= 30_000) {
      say(`  ${n} of ${want} shadow Services so far`);
      told = performance.now();
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

interface CaseResult {
  services: number;
  realNodes: number;
  simulatedAgents: number;
  changes: number;
  /** The leader's shadow Services when the case began (fewer than `services`: still writing). */
  shadows: number;
  p50Ms: number;
  p99Ms: number;
  /** Write to the leader's publish, p50 and p99. */
  publishP50Ms: number;
  publishP99Ms: number;
  /** The PUT's round trip through the API server, p50 and p99. */
  putP50Ms: number;
  putP99Ms: number;
  /** Write to the last real node's apply, p99. */
  realNodesP99Ms: number;
  maxMs: number;
  fullConfigBytes: number;
  deltaBytesPerNodePerChange: number;
  deltaShareOfFull: number;
  traefikBytesPerSecond: number;
  meshdBytesPerChange: number;
  leaderRssMiB: number;
  leaderPeakRssMiB: number;
  leaderCpuDuringChanges: number;
  leaderCpuIdle: number;
}

async function main(): Promise<void> {
  const args = parseArgs(Deno.args);
  const say = (s: string) => console.error(`[bench] ${s}`);
  say("starting the control plane");
  const cluster = await TestCluster.start({
    controllerManager: false,
    serviceCidr: "198.18.0.0/15",
  });
  const nodes: MeshdProcess[] = [];
  const sims: SimProcess[] = [];
  const results: CaseResult[] = [];
  try {
    await applyManifests(
      cluster,
      (await kustomizationObjects()).filter((o) => o.kind === "CustomResourceDefinition"),
    );
    const kc = await meshdKubeconfig(cluster);
    const token = (await Deno.readTextFile(kc)).match(/token: (\S+)/)![1]!;
    await serverSideApply(cluster, { apiVersion: "v1", kind: "Namespace", metadata: { name: NS } });

    let populated = 0;
    let generation = 0;
    let leader: MeshdProcess | undefined;
    for (const services of args.services) {
      say(`creating Services ${populated}..${services - 1} with their EndpointSlices`);
      const t0 = performance.now();
      await populate(cluster, populated, services);
      populated = services;
      say(`  ${Math.round(performance.now() - t0)} ms`);
      if (nodes.length === 0) {
        for (const n of ["meshd-1", "meshd-2", "meshd-3"]) {
          nodes.push(MeshdProcess.start(kc, n, ["--log-level=info"], ""));
        }
      }
      leader = await waitFor(
        "a leader",
        () => nodes.find((n) => n.events().some((e) => e["msg"] === "controller started")),
        60_000,
      );
      const configOf = async () => JSON.parse((await leader!.api("/api/config")).body);
      const full = await waitFor(
        `the leader's config to hold ${services} services`,
        async () => {
          const c = await configOf();
          return c.services.length >= services ? c : undefined;
        },
        600_000,
        500,
      );
      const fullBytes = new TextEncoder().encode(JSON.stringify(full)).length;
      say(`the config holds ${full.services.length} services, ${fullBytes} bytes of JSON`);
      // The leader keeps a shadow Service per meshed Service; let it finish before measuring,
      // for at most --shadow-wait seconds: past that the cases run while it still writes them,
      // and the table says how many there were. (Only shadows live in the meshd namespace
      // here; a label selector would hide the count.)
      const shadows = await waitForShadows(cluster, services, args.shadowWaitS, say);
      say(`${shadows} of ${services} shadow Services`);
      const leaderInfo = async () => {
        const r = await cluster.must(
          "GET",
          "/apis/coordination.k8s.io/v1/namespaces/meshd/leases/meshd-controller",
        );
        const a = (r["metadata"] as { annotations: Record<string, string> }).annotations;
        return {
          address: a["meshd.io/distribution-address"]!,
          certPem: a["meshd.io/distribution-cert"]!,
        };
      };

      for (const simulated of [0, ...args.agents]) {
        // Grow the simulated agents to `simulated`, in processes of up to 100.
        const have = sims.reduce((n, s) => n + s.count, 0);
        if (simulated > have) {
          const info = await leaderInfo();
          for (let left = simulated - have; left > 0;) {
            const n = Math.min(AGENTS_PER_PROCESS, left);
            sims.push(new SimProcess(`sim-${sims.length + 1}`, n, info, token));
            left -= n;
          }
        }
        say(`case: ${services} services, 3 real nodes + ${simulated} simulated agents`);
        const epochOf = () =>
          leader!.events().filter((e) => e["msg"] === "config published").at(-1)?.["epoch"] as
            | string
            | undefined;
        // Everyone in sync with the newest version first.
        const settleStart = performance.now();
        await waitFor(
          "every agent on the leader's newest version",
          async () => {
            const s = JSON.parse((await leader!.api("/api/status/nodes")).body) as {
              nodes: { connected: boolean; inSync: boolean }[];
            };
            const live = s.nodes.filter((n) => n.connected);
            return live.length === 3 + simulated && live.every((n) => n.inSync) ? true : undefined;
          },
          900_000,
          100,
        );
        say(
          `  all ${3 + simulated} nodes in sync after ${
            Math.round(performance.now() - settleStart)
          } ms`,
        );

        const pid = leader.child.pid;
        const sentBefore = sentBytes((await leader.api("/metrics")).body);
        const cpu0 = cpuSeconds(pid);
        const wall0 = performance.now();
        const times: number[] = [];
        // Where the time goes: the write to the leader's publish, and to the real nodes' apply.
        const toPublish: number[] = [];
        // The API server's own part: the PUT's round trip (the watch event may come sooner).
        const putMs: number[] = [];
        const toRealNodes: number[] = [];
        for (let k = 0; k < args.changes; k++) {
          generation++;
          const i = (generation * 7919) % services;
          const published = leader.events().filter((e) => e["msg"] === "config published").length;
          const t0 = performance.timeOrigin + performance.now();
          await write(
            cluster,
            "PUT",
            `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices/s-${i}-1`,
            endpointSlice(i, generation),
          );
          putMs.push(performance.timeOrigin + performance.now() - t0);
          const pub = await waitFor(
            "the change published",
            () => leader!.events().filter((e) => e["msg"] === "config published")[published],
            30_000,
          );
          const version = pub["version"] as number;
          const epoch = pub["epoch"] as string;
          toPublish.push(Math.max(0, (pub["at"] as number) - t0));
          const last = await waitFor(`version ${version} on every node`, () => {
            const at: number[] = [];
            for (const n of nodes) {
              const e = n.events().find((e) =>
                e["msg"] === "config applied" && e["from"] === "leader" &&
                (e["version"] as number) >= version && Date.parse(e["ts"] as string) >= t0 - 1
              );
              if (!e) return undefined;
              at.push(Date.parse(e["ts"] as string));
            }
            const real = Math.max(...at);
            for (const s of sims) {
              const t = s.appliedAt(epoch, version);
              if (t === undefined) return undefined;
              at.push(t);
            }
            return { all: Math.max(...at), real };
          }, 30_000);
          times.push(Math.max(0, last.all - t0));
          toRealNodes.push(Math.max(0, last.real - t0));
          if (epochOf() !== epoch) throw new Error("leadership moved during the benchmark");
        }
        const wall = (performance.now() - wall0) / 1000;
        const cpu = (cpuSeconds(pid) - cpu0) / wall;
        await waitFor("the last acknowledgements", async () => {
          const s = JSON.parse((await leader!.api("/api/status/nodes")).body) as {
            nodes: { connected: boolean; inSync: boolean }[];
          };
          return s.nodes.filter((n) => n.connected).every((n) => n.inSync) ? true : undefined;
        }, 60_000);
        const sent = sentBytes((await leader.api("/metrics")).body) - sentBefore;
        const idle0 = cpuSeconds(pid);
        await new Promise((r) => setTimeout(r, 5_000));
        const idle = (cpuSeconds(pid) - idle0) / 5;
        const mem = memory(pid);
        const sorted = [...times].sort((a, b) => a - b);
        const nodeCount = 3 + simulated;
        const perNode = sent / args.changes / nodeCount;
        const r: CaseResult = {
          services,
          realNodes: 3,
          simulatedAgents: simulated,
          changes: args.changes,
          shadows: await shadowCount(cluster),
          p50Ms: quantile(sorted, 0.5),
          publishP50Ms: quantile([...toPublish].sort((a, b) => a - b), 0.5),
          publishP99Ms: quantile([...toPublish].sort((a, b) => a - b), 0.99),
          putP50Ms: quantile([...putMs].sort((a, b) => a - b), 0.5),
          putP99Ms: quantile([...putMs].sort((a, b) => a - b), 0.99),
          realNodesP99Ms: quantile([...toRealNodes].sort((a, b) => a - b), 0.99),
          p99Ms: quantile(sorted, 0.99),
          maxMs: sorted.at(-1)!,
          fullConfigBytes: fullBytes,
          deltaBytesPerNodePerChange: perNode,
          deltaShareOfFull: perNode / fullBytes,
          traefikBytesPerSecond: fullBytes * nodeCount,
          meshdBytesPerChange: sent / args.changes,
          leaderRssMiB: mem.rss,
          leaderPeakRssMiB: mem.peak,
          leaderCpuDuringChanges: cpu,
          leaderCpuIdle: idle,
        };
        results.push(r);
        say(
          `  p50 ${r.p50Ms.toFixed(1)} ms, p99 ${r.p99Ms.toFixed(1)} ms; ${
            perNode.toFixed(0)
          } B per node per change (${(r.deltaShareOfFull * 100).toFixed(3)}% of the config)`,
        );
      }
      for (const s of sims.splice(0)) await s.stop();
    }
  } finally {
    for (const s of sims) await s.stop();
    for (const n of nodes) await n.stop();
    await cluster.stop();
    // Each meshd's log beside the results, to see what a failed or slow case went through.
    const dir = args.out.slice(0, args.out.lastIndexOf("/"));
    await Deno.mkdir(dir, { recursive: true });
    for (const n of nodes) {
      await Deno.writeTextFile(`${dir}/distribution-${n.identity}.log`, n.child.lines.join("\n"));
    }
  }

  const pad = (s: string, n: number) => s.padStart(n);
  console.log(
    "\nConfig distribution: propagation from an API write to the last node's apply, and bytes " +
      "per change against resending the whole config to every node every second",
  );
  console.log(
    [
      pad("services", 8),
      pad("nodes", 12),
      pad("shadows", 8),
      pad("p50 ms", 8),
      pad("p99 ms", 8),
      pad("PUT p50/p99", 12),
      pad("publish p50/p99", 16),
      pad("real p99", 9),
      pad("max ms", 8),
      pad("config B", 10),
      pad("delta B/node", 12),
      pad("delta/full", 10),
      pad("full/s B", 12),
      pad("per change B", 12),
      pad("full/s÷change", 13),
      pad("RSS MiB", 8),
      pad("peak", 6),
      pad("CPU busy", 8),
      pad("CPU idle", 8),
    ].join(" "),
  );
  for (const r of results) {
    console.log(
      [
        pad(String(r.services), 8),
        pad(`3+${r.simulatedAgents}`, 12),
        pad(String(r.shadows), 8),
        pad(r.p50Ms.toFixed(1), 8),
        pad(r.p99Ms.toFixed(1), 8),
        pad(`${r.putP50Ms.toFixed(0)}/${r.putP99Ms.toFixed(0)}`, 12),
        pad(`${r.publishP50Ms.toFixed(0)}/${r.publishP99Ms.toFixed(0)}`, 16),
        pad(r.realNodesP99Ms.toFixed(0), 9),
        pad(r.maxMs.toFixed(1), 8),
        pad(String(r.fullConfigBytes), 10),
        pad(r.deltaBytesPerNodePerChange.toFixed(0), 12),
        pad(`${(r.deltaShareOfFull * 100).toFixed(3)}%`, 10),
        pad(String(r.traefikBytesPerSecond), 12),
        pad(r.meshdBytesPerChange.toFixed(0), 12),
        pad(`${(r.traefikBytesPerSecond / r.meshdBytesPerChange).toFixed(0)}x`, 13),
        pad(r.leaderRssMiB.toFixed(0), 8),
        pad(r.leaderPeakRssMiB.toFixed(0), 6),
        pad(`${(r.leaderCpuDuringChanges * 100).toFixed(0)}%`, 8),
        pad(`${(r.leaderCpuIdle * 100).toFixed(1)}%`, 8),
      ].join(" "),
    );
  }
  console.log(
    "nodes: real meshd + simulated agents. shadows: the leader's shadow Services when the " +
      "case began (fewer than the services: it was still writing them). PUT: the write's round trip through the API server. publish: from the write to the leader's publish. " +
      "real: from the write to the last real node's apply. delta/full: bytes a node got per one-endpoint change " +
      "over the whole config. full/s: the whole config to every node each second (Traefik " +
      "Mesh's polling). full/s÷change: how many changes a second meshd could push for the " +
      "bytes that polling sends. CPU: the leader's share of one core.",
  );
  await Deno.mkdir(args.out.slice(0, args.out.lastIndexOf("/")), { recursive: true });
  await Deno.writeTextFile(
    args.out,
    JSON.stringify({ date: new Date().toISOString(), results }, null, 2),
  );
  console.log(`wrote ${args.out}`);
}

function sentBytes(metrics: string): number {
  const m = metrics.match(/^meshd_distribution_sent_bytes_total (\d+(\.\d+)?)/m);
  if (!m) throw new Error("the leader's /metrics has no meshd_distribution_sent_bytes_total");
  return Number(m[1]);
}

if (import.meta.main) await main();
