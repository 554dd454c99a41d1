/**
 * The sockmap experiment's benchmark (not a test): does sockops + sk_msg redirection between
 * local sockets (`bpf/sockmap_accel.bpf.c`) make traffic through meshd's userspace proxy
 * faster on this kernel?
 *
 * hey, meshd (`--datapath userspace`) and one nginx run in a loopback-only network namespace,
 * all three in a scratch cgroup. Every case runs with the sockops program detached ("off")
 * and attached ("on"), in turn within each round, so both see the same machine:
 *
 * - through meshd's TCP proxy: a new connection per request; keep-alive with a 3-byte body;
 *   keep-alive with a 256 KiB body;
 * - through meshd's HTTP proxy (routed by Host), keep-alive;
 * - straight to nginx, new connections, keep-alive and 256 KiB: what the redirect does with no proxy.
 *
 * It prints requests per second, p99 and the whole machine's CPU time per request for each,
 * the on/off ratios taken round by round, and the experiment's counters, so a run where no
 * send was redirected shows as such.
 *
 *   deno run -A tests/bench/sockmap_bench.ts [--requests N] [--concurrency C] [--rounds R] [--out FILE]
 *
 * @module
 */
import { EbpfEnv } from "../testenv/ebpf_env.ts";
import type { Child } from "../testenv/process.ts";
import { findLibbpf } from "../../src/datapath/mod.ts";
import {
  hey,
  median,
  parseBenchArgs,
  say,
  serviceYaml,
  spawnMeshd,
  startNginx,
  waitAnswering,
  WEB_SERVICE,
  writeResult,
} from "./local_servers.ts";
import { type AccelStats, SOCKMAP_OBJECT, SockmapAccel, statsSince } from "./sockmap_accel.ts";

const MESH = WEB_SERVICE + "---\n" + serviceYaml("webh", {
  clusterIP: "10.96.0.11",
  type: "http",
  port: 80,
  endpoint: "127.0.1.1",
  target: 8080,
});

const BIG = 256 * 1024;
// meshd's first TCP listener (the web service) and its HTTP entrypoint; "{tcp}" and
// "{http}" become the ports of the mode's meshd.
const MESHD_TCP = "http://127.0.0.1:{tcp}";
const MESHD_HTTP = "http://127.0.0.1:{http}";

interface Case {
  name: string;
  url: string;
  flags: string[];
  /** Requests per run, as a share of --requests (the slow cases take fewer). */
  share: number;
}

const CASES: Case[] = [
  { name: "meshd tcp, new conn", url: `${MESHD_TCP}/`, flags: ["-disable-keepalive"], share: 1 },
  { name: "meshd tcp, keep-alive", url: `${MESHD_TCP}/`, flags: [], share: 2 },
  { name: "meshd tcp, 256 KiB", url: `${MESHD_TCP}/big`, flags: [], share: 0.5 },
  {
    name: "meshd http, keep-alive",
    url: `${MESHD_HTTP}/`,
    flags: ["-host", "webh.default.mesh"],
    share: 2,
  },
  {
    name: "direct, new conn",
    url: "http://127.0.1.1:8080/",
    flags: ["-disable-keepalive"],
    share: 1,
  },
  { name: "direct, keep-alive", url: "http://127.0.1.1:8080/", flags: [], share: 2 },
  { name: "direct, 256 KiB", url: "http://127.0.1.1:8080/big", flags: [], share: 0.5 },
];

/** Busy CPU time of the whole machine so far, in ms, from /proc/stat (all but idle and iowait). */
async function busyCpuMs(): Promise<number> {
  const f = (await Deno.readTextFile("/proc/stat")).split("\n")[0]!.trim().split(/\s+/).slice(1)
    .map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return (total - f[3]! - f[4]!) * 1000 / 100; // USER_HZ is 100 on Linux
}

const args = parseBenchArgs(Deno.args, "sockmap_bench.ts", {
  requests: 10_000,
  what: "per case, mode and round",
});
const env = await EbpfEnv.create();
const procs: Child[] = [];
let accel: SockmapAccel | null = null;
try {
  const dir = env.dir;
  await Deno.mkdir(`${dir}/config`);
  await Deno.writeTextFile(`${dir}/config/mesh.yaml`, MESH);
  procs.push(await startNginx(env, "127.0.1.1:8080", { inCgroup: true }));
  await waitAnswering(env, "nginx", "127.0.1.1", 8080);
  await Deno.writeFile(`${dir}/nginx/www/big`, new Uint8Array(BIG).map((_, i) => i * 31 + 7));
  // One meshd per mode. meshd's HTTP proxy keeps its upstream connections, and a socket is
  // only accelerated when it was established while sockops was attached: so the "on" runs
  // use a meshd whose every connection was made while on, and the "off" runs one that never was.
  const meshds = {
    off: { http: 5000, tcp: 10000, api: 9000 },
    on: { http: 5001, tcp: 10100, api: 9001 },
  };
  accel = SockmapAccel.load(findLibbpf()!, await Deno.readFile(SOCKMAP_OBJECT));
  for (const [mode, p] of Object.entries(meshds)) {
    // Even the backend connection the readiness check leaves in the pool is made in its mode.
    if (mode === "on") accel.enable(env.cgroup);
    else accel.disable();
    procs.push(spawnMeshd(env, `${dir}/config`, [
      `--http-port=${p.http}`,
      `--tcp-ports=${p.tcp}-${p.tcp + 99}`,
      `--udp-ports=${p.tcp + 1000}-${p.tcp + 1099}`,
      `--api-port=${p.api}`,
      "--datapath=userspace",
    ], { inCgroup: true }));
    await waitAnswering(env, `meshd (${mode}) TCP listener`, "127.0.0.1", p.tcp);
    await waitAnswering(
      env,
      `meshd (${mode}) HTTP entrypoint`,
      "127.0.0.1",
      p.http,
      "webh.default.mesh",
    );
  }
  type Runs = { rps: number[]; p99: number[]; cpu: number[]; errors: number; stats: AccelStats };
  const zero = (): AccelStats => ({ added: 0, addFailed: 0, redirected: 0, passed: 0 });
  const runs: Record<string, Record<"off" | "on", Runs>> = {};
  for (const c of CASES) {
    const fresh = (): Runs => ({ rps: [], p99: [], cpu: [], errors: 0, stats: zero() });
    runs[c.name] = { off: fresh(), on: fresh() };
  }
  const run = async (c: Case, mode: "off" | "on", n: number) => {
    if (mode === "on") accel!.enable(env.cgroup);
    else accel!.disable();
    const before = accel!.stats();
    const url = c.url.replace("{tcp}", String(meshds[mode].tcp))
      .replace("{http}", String(meshds[mode].http));
    const cpu0 = await busyCpuMs();
    const h = await hey(env, url, n, args.concurrency, c.flags);
    // The whole machine's busy CPU per request: hey, meshd, nginx and the kernel's share
    // (softirq included), which throughput alone hides on a saturated machine.
    const cpuUs = ((await busyCpuMs()) - cpu0) * 1000 /
      (Math.floor(n / args.concurrency) * args.concurrency);
    const d = statsSince(before, accel!.stats());
    return { h, d, cpuUs };
  };
  // A short warm-up of each case in each mode, then rounds that take them in turn.
  for (const c of CASES) for (const mode of ["off", "on"] as const) await run(c, mode, 300);
  for (let r = 0; r < args.rounds; r++) {
    for (const c of CASES) {
      // Which mode goes first alternates, so neither always runs on a warmer machine.
      const order = r % 2 === 0 ? ["off", "on"] as const : ["on", "off"] as const;
      for (const mode of order) {
        const { h, d, cpuUs } = await run(c, mode, Math.round(args.requests * c.share));
        const x = runs[c.name]![mode];
        x.rps.push(h.rps);
        x.p99.push(h.p99);
        x.cpu.push(cpuUs);
        x.errors += h.errors;
        for (const k of Object.keys(d) as (keyof AccelStats)[]) x.stats[k] += d[k];
        say(
          `round ${r + 1} ${c.name} sockmap ${mode}: ${h.rps.toFixed(0)} req/s, ` +
            `p99 ${h.p99.toFixed(2)} ms, CPU ${cpuUs.toFixed(0)} us/req, ` +
            `redirected ${d.redirected}, passed ${d.passed}`,
        );
      }
    }
  }
  accel.disable();

  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  // on/off taken round by round (the two ran next to each other), then the median and range.
  const paired = (on: number[], off: number[]) => {
    const q = on.map((v, i) => v / off[i]!);
    return { median: r3(median(q)), min: r3(Math.min(...q)), max: r3(Math.max(...q)) };
  };
  const table = CASES.map((c) => {
    const { off, on } = runs[c.name]!;
    return {
      case: c.name,
      offRps: Math.round(median(off.rps)),
      onRps: Math.round(median(on.rps)),
      rpsOnVsOff: paired(on.rps, off.rps),
      offP99Ms: Math.round(median(off.p99) * 100) / 100,
      onP99Ms: Math.round(median(on.p99) * 100) / 100,
      p99OnVsOff: paired(on.p99, off.p99),
      offCpuUsPerReq: Math.round(median(off.cpu)),
      onCpuUsPerReq: Math.round(median(on.cpu)),
      cpuOnVsOff: paired(on.cpu, off.cpu),
      errors: off.errors + on.errors,
      onStats: on.stats,
      offRedirected: off.stats.redirected,
    };
  });
  console.log(
    `\nsockops + sk_msg redirect between local sockets, off vs on; hey -c ${args.concurrency}, ` +
      `${args.rounds} rounds, one nginx backend, meshd --datapath userspace, ` +
      `kernel ${Deno.osRelease()}, ${navigator.hardwareConcurrency} CPUs. req/s, p99 and CPU: ` +
      "medians; on/off: the median of the rounds' paired ratios [min-max]",
  );
  const range = (q: { median: number; min: number; max: number }) =>
    `${q.median.toFixed(2)} [${q.min.toFixed(2)}-${q.max.toFixed(2)}]`;
  console.log(
    "case".padEnd(24) + "off req/s".padStart(10) + "on req/s".padStart(10) +
      "req/s on/off".padStart(19) + "off p99".padStart(9) + "on p99".padStart(8) +
      "CPU us/req".padStart(12) + "CPU on/off".padStart(19) + "redirected".padStart(12) +
      "errors".padStart(8),
  );
  for (const t of table) {
    console.log(
      t.case.padEnd(24) + String(t.offRps).padStart(10) + String(t.onRps).padStart(10) +
        range(t.rpsOnVsOff).padStart(19) + t.offP99Ms.toFixed(2).padStart(9) +
        t.onP99Ms.toFixed(2).padStart(8) +
        `${t.offCpuUsPerReq}/${t.onCpuUsPerReq}`.padStart(12) + range(t.cpuOnVsOff).padStart(19) +
        String(t.onStats.redirected).padStart(12) + String(t.errors).padStart(8),
    );
  }
  await writeResult(args.out, "sockmap.json", { args, table, kernel: Deno.osRelease() });
} finally {
  accel?.close();
  await env.remove();
}
Deno.exit(0);
