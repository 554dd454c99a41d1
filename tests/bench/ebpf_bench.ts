/**
 * The eBPF fast path benchmark (not a test). Everything runs in a network namespace with only
 * loopback (so no address in it leads off the machine), with meshd's hooks on a scratch cgroup
 * that holds the load generator; all of it is removed at the end, on a failure or Ctrl-C too.
 * Its cases (`--cases`, default all):
 *
 * - `conn`: a new TCP connection plus one HTTP request, `hey -disable-keepalive`, to one nginx:
 *   direct by the backend's address; through the eBPF path, by the service's mesh address (the
 *   hook picks the backend); through meshd's userspace TCP proxy; through HAProxy in TCP mode.
 *   Requests per second and p99, with ratios against direct.
 * - `tcp-rr`, `udp-rr`: the loads of `dataplane_bench.ts`'s cases of the same names (the Go
 *   tools of `tests/bench/loadtools`: 16 connections, or 16 connected UDP sockets, each sending
 *   64 bytes and waiting for their echo, again and again for `--seconds`) against the same
 *   four kinds of target: direct, the eBPF path, meshd's userspace proxy, and the reference
 *   with one thread (HAProxy in TCP mode; nginx's stream module for UDP, which HAProxy cannot
 *   proxy). Rate, p50, p99, the ratios to the reference and to direct, each proxy process's
 *   CPU per request, and the whole path's (load tool, echo backend and proxy).
 * - `tcp-conn`: the hook's cost per new connection. 16 workers of the Go tool, each opening a new
 *   TCP connection per exchange (connect, 64 bytes each way, close), so connect4 runs on every
 *   request; the same four targets and figures as tcp-rr, where proxy CPU is per connection.
 *   Against `conn` it leaves out HTTP (hey's client, nginx's parser) and adds CPU per request.
 * - `udp-unconnected`: 16 unconnected UDP sockets using sendto and recvfrom to the service's
 *   address, so sendmsg4 and recvmsg4 run on every datagram (a connected socket pays only at
 *   connect). A reply from another address than the one sent to (a backend's, where recvmsg4
 *   did not rewrite it back) counts as an error. Targets as in udp-rr.
 * - `maps`: the kernel memory of the maps at 1,000 and 10,000 services of 3 endpoints each,
 *   and how long writing them took.
 *
 * The four load cases (all but `conn` and `maps`) also read the hooks' own run counts and
 * times from the kernel's BPF statistics (on while the bench runs, off at its end): runs and ns
 * per request, for each target (the load tool sits in the hooked cgroup, so the direct rows
 * and those through a proxy pay the hooks' lookups that miss).
 *
 * The targets of a case take turns over `--rounds` rounds, so the machine's other load hits
 * each alike; the table shows medians, and below it each round's ratios as median and range.
 *
 *   deno run -A tests/bench/ebpf_bench.ts [--cases conn,tcp-rr,udp-rr,tcp-conn,udp-unconnected,maps]
 *     [--rounds R] [--seconds S] [--requests N] [--concurrency C] [--loadtools BINARY] [--out FILE]
 *
 * @module
 */
import { EbpfEnv, enableBpfRunStats, type HookRuns } from "../testenv/ebpf_env.ts";
import { type Child, waitFor } from "../testenv/process.ts";
import {
  buildLoadtools,
  cgroupCpuUs,
  hey,
  median,
  processCpuUs,
  rrLoad,
  type RrResult,
  say,
  serviceYaml,
  spawnMeshd,
  startNginx,
  startNginxUdp,
  waitAnswering,
  WEB_SERVICE,
  writeResult,
} from "./local_servers.ts";
import {
  type DatapathEntry,
  DEFAULT_BPF_OBJECT,
  EbpfDatapath,
  findLibbpf,
} from "../../src/datapath/mod.ts";
import { Logger } from "../../src/observability/mod.ts";

const SOCK = new URL("../ebpf/sock_tool.ts", import.meta.url).pathname;
const CASES = ["conn", "tcp-rr", "udp-rr", "tcp-conn", "udp-unconnected", "maps"] as const;
type CaseName = typeof CASES[number];
/** The cases that run a load of the Go tools against the four targets. */
const RR_CASES = ["tcp-rr", "udp-rr", "tcp-conn", "udp-unconnected"] as const;
type RrCase = typeof RR_CASES[number];
const isUdp = (c: RrCase) => c.startsWith("udp");

/**
 * Addresses of the request/response cases, all inside the namespace (its own loopback): the
 * echo backends, the references' listeners, and the mesh addresses (ClusterIPs) the hooks
 * answer for. Nothing listens on a mesh address: without the hook, a connect to it is refused.
 */
const RR = {
  backend: "127.0.68.1",
  haproxy: "127.0.68.2",
  nginx: "127.0.68.3",
  tcpVip: "127.0.68.10",
  udpVip: "127.0.68.11",
  tcpPort: 7000,
  udpPort: 7001,
  /**
   * Connections (tcp-rr), sockets (udp-rr, udp-unconnected), as in dataplane_bench.ts; or
   * workers each with one connection at a time (tcp-conn).
   */
  conns: 16,
};

interface Args {
  cases: Set<CaseName>;
  rounds: number;
  seconds: number;
  requests: number;
  concurrency: number;
  loadtools: string;
  out: string;
}

const USAGE = "usage: ebpf_bench.ts " +
  "[--cases conn,tcp-rr,udp-rr,tcp-conn,udp-unconnected,maps (default all)] " +
  "[--rounds R (1 to 10, default 3)] [--seconds S (per rr load, 1 to 60, default 5)] " +
  "[--requests N (conn, per target and round, default 20000)] [--concurrency C (conn, default 8)] " +
  "[--loadtools BINARY] [--out FILE]";

function parseArgs(argv: string[]): Args {
  const a: Args = {
    cases: new Set(CASES),
    rounds: 3,
    seconds: 5,
    requests: 20_000,
    concurrency: 8,
    loadtools: "",
    out: "",
  };
  const bad = (what: string) => {
    console.error(`ebpf_bench.ts: ${what}\n${USAGE}`);
    Deno.exit(2);
  };
  for (let i = 0; i < argv.length; i++) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (v === undefined) bad(`${k} needs a value`);
    else if (k === "--cases") {
      const names = v.split(",").filter(Boolean);
      const unknown = names.filter((n) => !(CASES as readonly string[]).includes(n));
      if (unknown.length || !names.length) bad(`unknown case "${unknown.join(",")}"`);
      a.cases = new Set(names as CaseName[]);
    } else if (k === "--rounds") a.rounds = Number(v);
    else if (k === "--seconds") a.seconds = Number(v);
    else if (k === "--requests") a.requests = Number(v);
    else if (k === "--concurrency") a.concurrency = Number(v);
    else if (k === "--loadtools") a.loadtools = v;
    else if (k === "--out") a.out = v;
    else bad(`unknown flag "${k}"`);
    i++;
  }
  const int = (x: number, lo: number, hi: number) => Number.isInteger(x) && x >= lo && x <= hi;
  if (!int(a.rounds, 1, 10)) bad(`--rounds is ${a.rounds}, expected 1 to 10`);
  if (!(a.seconds >= 1 && a.seconds <= 60)) bad(`--seconds is ${a.seconds}, expected 1 to 60`);
  // hey prints no p99 for fewer than 100 answers.
  if (!int(a.requests, 1000, 200_000)) bad(`--requests is ${a.requests}, expected 1000 to 200000`);
  if (!int(a.concurrency, 1, 64)) bad(`--concurrency is ${a.concurrency}, expected 1 to 64`);
  return a;
}

async function mapMemory(env: EbpfEnv): Promise<
  { services: number; entries: number; mapBytes: number; writeMs: number }[]
> {
  const object = await Deno.readFile(DEFAULT_BPF_OBJECT);
  const out = [];
  for (const services of [0, 1_000, 10_000]) {
    const dp = EbpfDatapath.load({
      libbpfPath: findLibbpf()!,
      object,
      cgroup: env.cgroup,
      pinDir: `${env.bpffs}/meshd-mem`,
      logger: new Logger({ level: "error", write: () => {} }),
    });
    try {
      const entries: DatapathEntry[] = Array.from({ length: services }, (_, i) => ({
        family: 4,
        address: `10.${96 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`,
        port: 80,
        protocol: "tcp",
        backends: [1, 2, 3].map((b) => ({
          address: `10.${200 + b}.${(i >> 8) & 255}.${i & 255}`,
          port: 8080,
        })),
        redirect: false,
        service: `ns/svc-${i}:80`,
      }));
      const t0 = performance.now();
      dp.apply(entries, 1);
      const writeMs = performance.now() - t0;
      out.push({ services, entries: services * 4, mapBytes: dp.mapBytes(), writeMs });
    } finally {
      dp.remove();
    }
  }
  return out;
}

/** The UDP Service of the udp-rr case: its mesh address, one ready echo endpoint. */
function udpServiceYaml(): string {
  return `
apiVersion: v1
kind: Service
metadata: { name: uecho, namespace: default }
spec:
  clusterIP: ${RR.udpVip}
  ports: [{ name: u, port: ${RR.udpPort}, protocol: UDP }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: uecho-1, namespace: default, labels: { kubernetes.io/service-name: uecho } }
addressType: IPv4
ports: [{ name: u, port: ${RR.udpPort}, protocol: UDP }]
endpoints:
  - { addresses: ["${RR.backend}"], conditions: { ready: true } }
`;
}

/** One rr measurement: one load against one target in one round. */
interface RrMeasure extends RrResult {
  case: RrCase;
  target: RrTarget;
  round: number;
  /** The proxy process's user and system CPU per request, µs; null where there is none. */
  proxyCpuUs: number | null;
  /** The load tool's (its cgroup's), the echo backend's and the proxy's CPU per request, µs. */
  pathCpuUs: number;
  /** meshd's CPU per request during the load, µs: what it does while another target runs. */
  meshdCpuUs: number;
  /** Runs of the cgroup's hooks per request, all hooks together; null without BPF statistics. */
  hookRuns: number | null;
  /** The hooks' run time per request, ns; null without BPF statistics. */
  hookNs: number | null;
  /** Each hook's runs and run time during the load (not per request). */
  hooks: Record<string, HookRuns>;
}
type RrTarget = "direct" | "ebpf" | "meshd-userspace" | "haproxy" | "nginx";

/** What each rr case's load is, for its table's title. */
const LOADS: Record<RrCase, string> = {
  "tcp-rr": "connections",
  "udp-rr": "connected sockets",
  "tcp-conn": "workers each opening a new connection per exchange",
  "udp-unconnected": "unconnected sockets (sendto, recvfrom; a reply from elsewhere an error)",
};

/** A ratio over rounds: its median and range. */
interface Spread {
  median: number;
  min: number;
  max: number;
}

function spread(xs: number[]): Spread | null {
  const ok = xs.filter(Number.isFinite);
  if (ok.length === 0) return null;
  return { median: median(ok), min: Math.min(...ok), max: Math.max(...ok) };
}

/** The rr rows of one case: medians per target, the ratios, and each round's ratios. */
function rrTable(all: RrMeasure[], c: RrCase, rounds: number) {
  const ref: RrTarget = isUdp(c) ? "nginx" : "haproxy";
  const targets: RrTarget[] = ["direct", "ebpf", "meshd-userspace", ref];
  const of = (t: RrTarget) => all.filter((m) => m.case === c && m.target === t);
  const med = (t: RrTarget, f: (m: RrMeasure) => number | null) => {
    const xs = of(t).map(f).filter((x): x is number => x !== null && Number.isFinite(x));
    return xs.length ? median(xs) : null;
  };
  const r3 = (x: number | null, d = 3) => x === null ? null : Math.round(x * 10 ** d) / 10 ** d;
  const refRate = med(ref, (m) => m.rate);
  const directRate = med("direct", (m) => m.rate);
  const rows = targets.map((t) => {
    const rate = med(t, (m) => m.rate);
    return {
      case: c,
      target: t,
      rate: r3(rate, 1),
      p50Ms: r3(med(t, (m) => m.p50Ms)),
      p99Ms: r3(med(t, (m) => m.p99Ms)),
      errors: of(t).reduce((n, m) => n + m.errors, 0),
      vsReference: rate !== null && refRate ? r3(rate / refRate) : null,
      vsDirect: rate !== null && directRate ? r3(rate / directRate) : null,
      proxyCpuUs: r3(med(t, (m) => m.proxyCpuUs), 2),
      pathCpuUs: r3(med(t, (m) => m.pathCpuUs), 2),
      meshdCpuUs: r3(med(t, (m) => m.meshdCpuUs), 2),
      hookRuns: r3(med(t, (m) => m.hookRuns), 2),
      hookNs: r3(med(t, (m) => m.hookNs), 0),
      hooks: hookTotals(of(t)),
      rounds: of(t).map((m) => Math.round(m.rate)),
      firstError: of(t).find((m) => m.firstError)?.firstError,
    };
  });
  // Each round's ratio of one target's figure to another's (or, `diff`, their difference),
  // both measured in that round.
  const perRound = (
    a: RrTarget,
    b: RrTarget,
    f: (m: RrMeasure) => number | null,
    diff = false,
  ) => {
    const xs: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const [x, y] = [a, b].map((t) => of(t).find((m) => m.round === r));
      const [fx, fy] = [x ? f(x) : null, y ? f(y) : null];
      if (fx === null || fy === null) continue;
      if (diff) xs.push(fx - fy);
      else if (fy > 0) xs.push(fx / fy);
    }
    return spread(xs);
  };
  const ratios = {
    [`ebpf/${ref} rate`]: perRound("ebpf", ref, (m) => m.rate),
    [`ebpf/direct rate`]: perRound("ebpf", "direct", (m) => m.rate),
    [`meshd-userspace/${ref} rate`]: perRound("meshd-userspace", ref, (m) => m.rate),
    [`ebpf/${ref} path CPU`]: perRound("ebpf", ref, (m) => m.pathCpuUs),
    [`ebpf/direct path CPU`]: perRound("ebpf", "direct", (m) => m.pathCpuUs),
    [`meshd-userspace/${ref} proxy CPU`]: perRound(
      "meshd-userspace",
      ref,
      (m) => m.proxyCpuUs,
    ),
  };
  // Differences, not ratios: what the hook's hit adds to each request, in µs and ns.
  const differences = {
    "ebpf-direct path CPU µs": perRound("ebpf", "direct", (m) => m.pathCpuUs, true),
    "ebpf-direct hook ns": perRound("ebpf", "direct", (m) => m.hookNs, true),
  };
  return { rows, ratios, differences };
}

/** Each hook's runs and run time summed over some measurements. */
function hookTotals(ms: RrMeasure[]): Record<string, HookRuns & { requests: number }> {
  const out: Record<string, HookRuns & { requests: number }> = {};
  for (const m of ms) {
    for (const [name, h] of Object.entries(m.hooks)) {
      const t = out[name] ??= { runs: 0, ns: 0, requests: 0 };
      t.runs += h.runs;
      t.ns += h.ns;
      t.requests += m.requests;
    }
  }
  return out;
}

/** What changed in each hook's counters from `a` to `b`. */
function hookDelta(a: Map<string, HookRuns>, b: Map<string, HookRuns>): Record<string, HookRuns> {
  const out: Record<string, HookRuns> = {};
  for (const [name, h] of b) {
    const was = a.get(name) ?? { runs: 0, ns: 0 };
    out[name] = { runs: h.runs - was.runs, ns: h.ns - was.ns };
  }
  return out;
}

/** The machine's 1-minute load average now: how busy the shared machine was around the run. */
const loadAverage = () => Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);

const args = parseArgs(Deno.args);
const loadBefore = loadAverage();
const want = (c: CaseName) => args.cases.has(c);
const env = await EbpfEnv.create();

// Ctrl-C, a TERM, or a run past its bound: the namespace, cgroup, pins and processes go all
// the same. env.remove() stops every process it started (meshd too), then removes the pins,
// which detaches the hooks; the BPF statistics go off (the kernel would do it at exit too).
let removing: Promise<void> | null = null;
let stopping = false;
/** The handle that keeps the kernel's BPF run-time statistics on while the rr cases run. */
let runStats: { close(): void } | null = null;
const cleanUp = () => {
  runStats?.close();
  runStats = null;
  return removing ??= env.remove();
};
const onSignal = (signal: Deno.Signal) => async () => {
  stopping = true;
  say(`${signal}: removing the namespace, cgroup, pins and processes`);
  await cleanUp();
  Deno.exit(130);
};
for (const s of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(s, onSignal(s));
const rrTargets = RR_CASES.filter(want).length * 4;
const boundMs = 240_000 + (want("conn") ? args.rounds * 4 * 120_000 : 0) +
  rrTargets * args.rounds * (args.seconds * 1000 + 30_000) + (want("maps") ? 120_000 : 0);
const watchdog = setTimeout(async () => {
  stopping = true;
  say(`still running after ${Math.round(boundMs / 1000)} s: giving up`);
  await cleanUp();
  Deno.exit(1);
}, boundMs);

const procs: Child[] = [];
let conn: Record<string, unknown>[] = [];
let rr: Record<string, unknown> = {};
let memory: Awaited<ReturnType<typeof mapMemory>> = [];
let failed = false;
try {
  const dir = env.dir;
  // tcp-conn leaves a TIME_WAIT per connection for 60 s, on the client's side and (through a
  // proxy) on the proxy's, most of them from 127.0.0.1 to the one echo backend. With the default
  // 28,232 ephemeral ports a later target would connect among more of them than an earlier one:
  // the whole range spreads them thinner, so the port search weighs less on the later ones.
  if (want("tcp-conn")) await env.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
  const needMeshd = want("conn") || RR_CASES.some(want);
  const loadtools = RR_CASES.some(want)
    ? args.loadtools || await buildLoadtools(`${dir}/loadtools`)
    : "";
  await Deno.mkdir(`${dir}/config`);
  await Deno.writeTextFile(
    `${dir}/config/mesh.yaml`,
    [
      WEB_SERVICE,
      serviceYaml("echo", {
        clusterIP: RR.tcpVip,
        type: "tcp",
        port: RR.tcpPort,
        endpoint: RR.backend,
        target: RR.tcpPort,
      }),
      udpServiceYaml(),
    ].join("---\n"),
  );
  // One thread, as meshd's proxy runs (HAProxy 2.6 starts one per CPU by default).
  await Deno.writeTextFile(
    `${dir}/haproxy.cfg`,
    `global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend web
  bind 127.0.0.1:9100
  default_backend web
backend web
  server b1 127.0.1.1:8080
frontend echo
  bind ${RR.haproxy}:${RR.tcpPort}
  default_backend echo
backend echo
  server b1 ${RR.backend}:${RR.tcpPort}
`,
  );
  const haproxy = env.spawn("haproxy", ["-f", `${dir}/haproxy.cfg`, "-db"]);
  procs.push(haproxy);
  let meshd: Child | null = null;
  if (needMeshd) {
    meshd = spawnMeshd(env, `${dir}/config`, [
      `--cgroup=${env.cgroup}`,
      `--bpffs=${env.bpffs}`,
      "--datapath=ebpf",
    ]);
    procs.push(meshd);
  }

  if (want("conn")) {
    procs.push(await startNginx(env, "127.0.1.1:8080"));
    // The web service's TCP listener: meshd's first TCP port, which the API below confirms.
    await waitAnswering(env, "nginx", "127.0.1.1", 8080);
    await waitAnswering(env, "haproxy", "127.0.0.1", 9100);
  }
  // meshd's userspace listener of each service, from its applied config.
  const listenPorts = new Map<string, number>();
  if (meshd) {
    await Deno.writeTextFile(
      `${dir}/get_config.ts`,
      "const r = await fetch(Deno.args[0]!);\n" +
        "console.log(JSON.stringify(r.ok ? await r.json() : null));\n",
    );
    type Config = { services: { name: string; ports: { listenPort: number | null }[] }[] };
    const config = await waitFor(
      "meshd's config applied",
      async () => {
        const c = await env.deno<Config | null>(`${dir}/get_config.ts`, [
          "http://127.0.0.1:9000/api/config",
        ]).catch(() => null);
        const ready = ["web", "echo", "uecho"].every((n) =>
          c?.services.some((s) => s.name === n && s.ports[0]?.listenPort)
        );
        return ready ? c! : undefined;
      },
      60_000,
      200,
    );
    for (const s of config.services) {
      const port = s.ports[0]?.listenPort;
      if (port) listenPorts.set(s.name, port);
    }
  }

  if (want("conn")) {
    const meshdPort = listenPorts.get("web")!;
    await waitAnswering(env, "meshd's TCP listener", "127.0.0.1", meshdPort);
    // The eBPF path answers by the mesh address only from inside the cgroup.
    const viaHook = await env.deno<{ status: number }>(SOCK, ["http", "10.96.0.10", "8080", "x"], {
      inCgroup: true,
    });
    if (viaHook.status !== 200) throw new Error("the eBPF path does not answer");

    const cases = [
      ["direct", "http://127.0.1.1:8080/"],
      ["ebpf", "http://10.96.0.10:8080/"],
      ["meshd-userspace", `http://127.0.0.1:${meshdPort}/`],
      ["haproxy", "http://127.0.0.1:9100/"],
    ] as const;
    const runs: Record<string, { rps: number[]; p99: number[]; errors: number }> = {};
    for (const [name] of cases) runs[name] = { rps: [], p99: [], errors: 0 };
    // A short warm-up, then rounds that take the cases in turn, so drift hits each alike.
    for (const [, url] of cases) await hey(env, url, 500, args.concurrency, ["-disable-keepalive"]);
    for (let r = 0; r < args.rounds; r++) {
      for (const [name, url] of cases) {
        const h = await hey(env, url, args.requests, args.concurrency, ["-disable-keepalive"]);
        runs[name]!.rps.push(h.rps);
        runs[name]!.p99.push(h.p99);
        runs[name]!.errors += h.errors;
        say(
          `conn round ${r + 1} ${name}: ${h.rps.toFixed(0)} conn+req/s, p99 ${h.p99.toFixed(2)} ms`,
        );
      }
    }
    const direct = median(runs["direct"]!.rps);
    const directP99 = median(runs["direct"]!.p99);
    conn = cases.map(([name]) => {
      const x = runs[name]!;
      return {
        path: name,
        rps: Math.round(median(x.rps)),
        p99Ms: Math.round(median(x.p99) * 100) / 100,
        rpsVsDirect: Math.round((median(x.rps) / direct) * 1000) / 1000,
        p99VsDirect: Math.round((median(x.p99) / directP99) * 100) / 100,
        errors: x.errors,
      };
    });
  }

  const rrCases = RR_CASES.filter(want);
  if (rrCases.length) {
    const tcpEcho = env.spawn(loadtools, ["tcp-echo", "-listen", `${RR.backend}:${RR.tcpPort}`]);
    const udpEcho = env.spawn(loadtools, ["udp-echo", "-listen", `${RR.backend}:${RR.udpPort}`]);
    procs.push(tcpEcho, udpEcho);
    const nginx = rrCases.some(isUdp)
      ? await startNginxUdp(env, `${RR.nginx}:${RR.udpPort}`, `${RR.backend}:${RR.udpPort}`)
      : null;
    if (nginx) procs.push(nginx);
    type Target = readonly [RrTarget, string, Child | null];
    const tcpTargets: Target[] = [
      ["direct", `${RR.backend}:${RR.tcpPort}`, null],
      ["ebpf", `${RR.tcpVip}:${RR.tcpPort}`, null],
      ["meshd-userspace", `127.0.0.1:${listenPorts.get("echo")}`, meshd],
      ["haproxy", `${RR.haproxy}:${RR.tcpPort}`, haproxy],
    ];
    const udpTargets: Target[] = [
      ["direct", `${RR.backend}:${RR.udpPort}`, null],
      ["ebpf", `${RR.udpVip}:${RR.udpPort}`, null],
      ["meshd-userspace", `127.0.0.1:${listenPorts.get("uecho")}`, meshd],
      ["nginx", `${RR.nginx}:${RR.udpPort}`, nginx],
    ];
    const targets = (c: RrCase) => isUdp(c) ? udpTargets : tcpTargets;
    const backendOf = (c: RrCase) => isUdp(c) ? udpEcho : tcpEcho;
    // Every target answers before anything is measured. The mesh address answers only through
    // the hook: nothing listens there, so a connect that the hook left alone is refused.
    for (const c of rrCases) {
      for (const [t, target] of targets(c)) {
        await waitFor(
          `${c} ${t} (${target}) answers`,
          async () => {
            const r = await rrLoad(env, { bin: loadtools, kind: c, target, conns: 1, ms: 200 });
            if (r.errors > 0) throw new Error(r.firstError ?? `${r.errors} errors`);
            return r.requests > 0 ? true : undefined;
          },
          30_000,
          200,
        );
      }
    }
    // The hooks' own cost: the kernel's BPF statistics, on from here to the end of the run.
    try {
      runStats = enableBpfRunStats(findLibbpf()!);
    } catch (e) {
      say(`no hook run times: ${e instanceof Error ? e.message : e}`);
    }
    const all: RrMeasure[] = [];
    const ms = Math.round(args.seconds * 1000);
    for (const c of rrCases) {
      for (let round = 0; round < args.rounds; round++) {
        for (const [t, target, proxy] of targets(c)) {
          const backendPid = backendOf(c).pid;
          const hooksBefore = runStats ? await env.hookRuns() : null;
          const before = {
            client: cgroupCpuUs(env.cgroup),
            backend: processCpuUs(backendPid),
            proxy: proxy ? processCpuUs(proxy.pid) : 0,
            meshd: processCpuUs(meshd!.pid),
          };
          const r = await rrLoad(env, { bin: loadtools, kind: c, target, conns: RR.conns, ms });
          const n = Math.max(r.requests, 1);
          const proxyUs = proxy ? (processCpuUs(proxy.pid) - before.proxy) / n : null;
          const hooksAfter = hooksBefore ? await env.hookRuns() : null;
          const hooks = hooksBefore && hooksAfter ? hookDelta(hooksBefore, hooksAfter) : {};
          const hookSum = (f: (h: HookRuns) => number) =>
            hooksAfter ? Object.values(hooks).reduce((a, h) => a + f(h), 0) / n : null;
          const m: RrMeasure = {
            ...r,
            case: c,
            target: t,
            round,
            proxyCpuUs: proxyUs,
            pathCpuUs: (cgroupCpuUs(env.cgroup) - before.client) / n +
              (processCpuUs(backendPid) - before.backend) / n + (proxyUs ?? 0),
            meshdCpuUs: (processCpuUs(meshd!.pid) - before.meshd) / n,
            hookRuns: hookSum((h) => h.runs),
            hookNs: hookSum((h) => h.ns),
            hooks,
          };
          all.push(m);
          say(
            `${c} round ${round + 1} ${t}: ${r.rate.toFixed(0)}/s, p99 ${r.p99Ms.toFixed(2)} ms, ` +
              `errors ${r.errors}${r.firstError ? ` (${r.firstError})` : ""}`,
          );
        }
      }
    }
    rr = Object.fromEntries(rrCases.map((c) => [c, rrTable(all, c, args.rounds)]));
  }

  if (meshd) {
    meshd.kill("SIGTERM");
    await meshd.wait(10_000);
    await Deno.remove(`${env.bpffs}/meshd`, { recursive: true });
    const left = await env.attached();
    if (left.length) throw new Error(`programs still attached after meshd: ${left.join(", ")}`);
  }
  if (want("maps")) {
    say("measuring the maps' memory");
    memory = await mapMemory(env);
  }
} catch (e) {
  failed = true;
  // Stopping on a signal or the time bound kills the load mid-run: that error is no news.
  if (stopping) await new Promise(() => {});
  for (const p of procs) {
    if (p.lines.length) console.error(`--- ${p.name}:\n${p.lines.slice(-10).join("\n")}`);
  }
  console.error(`ebpf_bench.ts failed: ${e instanceof Error ? e.message : e}`);
} finally {
  clearTimeout(watchdog);
  await cleanUp();
}
if (failed) Deno.exit(1);
const load = { before: loadBefore, after: loadAverage() };

const fmt = (n: unknown, d = 2) => typeof n === "number" && Number.isFinite(n) ? n.toFixed(d) : "-";
if (conn.length) {
  console.log(
    `\nnew connection + 1 request, hey -disable-keepalive -c ${args.concurrency}, ` +
      `${args.requests} requests x ${args.rounds} rounds (median), one nginx backend`,
  );
  console.log(
    "path".padEnd(17) + "conn+req/s".padStart(11) + "p99 ms".padStart(9) +
      "rps/direct".padStart(12) + "p99/direct".padStart(12) + "errors".padStart(8),
  );
  for (const t of conn) {
    console.log(
      String(t.path).padEnd(17) + String(t.rps).padStart(11) + fmt(t.p99Ms).padStart(9) +
        fmt(t.rpsVsDirect, 3).padStart(12) + fmt(t.p99VsDirect).padStart(12) +
        String(t.errors).padStart(8),
    );
  }
}
for (const [c, tab] of Object.entries(rr) as [string, ReturnType<typeof rrTable>][]) {
  console.log(
    `\n${c}: ${RR.conns} ${LOADS[c as RrCase]}, 64 B each way, ` +
      `${args.seconds} s x ${args.rounds} interleaved rounds (median), Go echo backend, ` +
      `${navigator.hardwareConcurrency} CPUs, load average ${load.before} before, ${load.after} after`,
  );
  console.log(
    "target".padEnd(16) + "rate/s".padStart(10) + "p50 ms".padStart(8) + "p99 ms".padStart(8) +
      "errors".padStart(8) + "vs ref".padStart(8) + "vs direct".padStart(10) +
      "proxy CPU µs".padStart(13) + "path CPU µs".padStart(12) + "hook runs".padStart(10) +
      "hook ns".padStart(8),
  );
  for (const r of tab.rows) {
    console.log(
      r.target.padEnd(16) + fmt(r.rate, 0).padStart(10) + fmt(r.p50Ms).padStart(8) +
        fmt(r.p99Ms).padStart(8) + String(r.errors).padStart(8) +
        fmt(r.vsReference, 3).padStart(8) + fmt(r.vsDirect, 3).padStart(10) +
        fmt(r.proxyCpuUs, 1).padStart(13) + fmt(r.pathCpuUs, 1).padStart(12) +
        fmt(r.hookRuns, 2).padStart(10) + fmt(r.hookNs, 0).padStart(8),
    );
  }
  const ebpfRow = tab.rows.find((r) => r.target === "ebpf");
  console.log(
    `meshd's CPU while the ebpf rows ran: ${fmt(ebpfRow?.meshdCpuUs, 2)} µs per request ` +
      "(no proxy hop: the hook sent each socket to the backend)",
  );
  for (const r of tab.rows.filter((r) => r.target === "ebpf" || r.target === "direct")) {
    const each = Object.entries(r.hooks).filter(([, h]) => h.runs > 0).map(([name, h]) =>
      `${name} ${fmt(h.ns / h.runs, 0)} ns, ` +
      `${(h.runs / Math.max(h.requests, 1)).toPrecision(2)} runs per request`
    );
    if (each.length) console.log(`hooks per run on the ${r.target} rows: ${each.join(", ")}`);
  }
  console.log(`each round's ratios, median (min–max) of ${args.rounds}:`);
  const show = (name: string, s: Spread | null, d: number) =>
    console.log(
      `  ${name.padEnd(34)} ${s ? `${fmt(s.median, d)} (${fmt(s.min, d)}–${fmt(s.max, d)})` : "-"}`,
    );
  for (const [name, s] of Object.entries(tab.ratios)) show(name, s, 3);
  console.log("and differences:");
  show("ebpf-direct path CPU µs", tab.differences["ebpf-direct path CPU µs"], 2);
  show("ebpf-direct hook ns", tab.differences["ebpf-direct hook ns"], 0);
}
if (Object.keys(rr).length) {
  console.log(
    "\nvs ref: the rate over the reference's (HAProxy TCP mode; nginx stream for UDP), each " +
      "one thread; proxy CPU: that process's user+system time per request (/proc/PID/stat); " +
      "path CPU: the load tool's (its cgroup's cpu.stat), the echo backend's and the proxy's, " +
      "per request; hook runs and ns: the runs of meshd's programs on the load's cgroup and " +
      "their run time per request, from the kernel's BPF statistics (run_cnt, run_time_ns; " +
      "on during the run, which adds two clock reads to each run). The load tool sits in that " +
      "cgroup for every target, so the rows other than ebpf pay the hooks' lookups that miss.",
  );
}
if (memory.length) {
  console.log("\nmaps (meshd_svc4_v2 etc.), kernel memory from each map's fdinfo memlock:");
  for (const m of memory) {
    console.log(
      `${String(m.services).padStart(6)} services (${m.entries} entries): ` +
        `${(m.mapBytes / 1048576).toFixed(2)} MiB, written in ${m.writeMs.toFixed(0)} ms`,
    );
  }
}
await writeResult(args.out, "ebpf.json", {
  date: new Date().toISOString(),
  args: { ...args, cases: [...args.cases] },
  kernel: Deno.osRelease(),
  cpus: navigator.hardwareConcurrency,
  loadAverage: load,
  ...(conn.length ? { table: conn } : {}),
  ...(Object.keys(rr).length ? { rr } : {}),
  ...(memory.length ? { memory } : {}),
});
Deno.exit(0);
