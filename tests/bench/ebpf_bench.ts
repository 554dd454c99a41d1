/**
 * The eBPF fast path benchmark (not a test). In one run, a new TCP connection plus one HTTP
 * request, with `hey -disable-keepalive`, to one nginx backend:
 *
 * - direct, by the backend's address;
 * - through the eBPF path, by the service's mesh address (the hook picks the backend);
 * - through meshd's userspace TCP proxy (the service's listener port);
 * - through HAProxy in TCP mode.
 *
 * It prints requests per second and p99 for each, with ratios against direct. Then it prints
 * the kernel memory of the maps at 1,000 and 10,000 services of 3 endpoints each, and how long
 * writing them took. Everything runs in a network namespace with only loopback, with the
 * hooks on a scratch cgroup that holds the load generator; all of it is removed at the end.
 *
 *   deno run -A tests/bench/ebpf_bench.ts [--requests N] [--concurrency C] [--rounds R] [--out FILE]
 *
 * @module
 */
import { EbpfEnv } from "../testenv/ebpf_env.ts";
import type { Child } from "../testenv/process.ts";
import {
  hey,
  median,
  parseBenchArgs,
  say,
  spawnMeshd,
  startNginx,
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

const args = parseBenchArgs(Deno.args, "ebpf_bench.ts", {
  requests: 20_000,
  what: "per case and round",
});
const env = await EbpfEnv.create();
const procs: Child[] = [];
try {
  const dir = env.dir;
  await Deno.mkdir(`${dir}/config`);
  await Deno.writeTextFile(`${dir}/config/mesh.yaml`, WEB_SERVICE);
  await Deno.writeTextFile(
    `${dir}/haproxy.cfg`,
    `global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend web
  bind 127.0.0.1:9100
  default_backend web
backend web
  server b1 127.0.1.1:8080
`,
  );
  procs.push(await startNginx(env, "127.0.1.1:8080"));
  procs.push(env.spawn("haproxy", ["-f", `${dir}/haproxy.cfg`, "-db"]));
  const meshd = spawnMeshd(env, `${dir}/config`, [
    `--cgroup=${env.cgroup}`,
    `--bpffs=${env.bpffs}`,
    "--datapath=ebpf",
  ]);
  procs.push(meshd);
  // The service's TCP listener is the first port of meshd's TCP range.
  const meshdPort = 10000;
  await waitAnswering(env, "nginx", "127.0.1.1", 8080);
  await waitAnswering(env, "haproxy", "127.0.0.1", 9100);
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
      say(`round ${r + 1} ${name}: ${h.rps.toFixed(0)} conn+req/s, p99 ${h.p99.toFixed(2)} ms`);
    }
  }
  meshd.kill("SIGTERM");
  await meshd.wait(10_000);
  await Deno.remove(`${env.bpffs}/meshd`, { recursive: true });

  const direct = median(runs["direct"]!.rps);
  const directP99 = median(runs["direct"]!.p99);
  const table = cases.map(([name]) => {
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
  say("measuring the maps' memory");
  const memory = await mapMemory(env);

  console.log(
    `\nnew connection + 1 request, hey -disable-keepalive -c ${args.concurrency}, ` +
      `${args.requests} requests x ${args.rounds} rounds (median), one nginx backend, 2 cores`,
  );
  console.log(
    "path".padEnd(17) + "conn+req/s".padStart(11) + "p99 ms".padStart(9) +
      "rps/direct".padStart(12) + "p99/direct".padStart(12) + "errors".padStart(8),
  );
  for (const t of table) {
    console.log(
      t.path.padEnd(17) + String(t.rps).padStart(11) + t.p99Ms.toFixed(2).padStart(9) +
        t.rpsVsDirect.toFixed(3).padStart(12) + t.p99VsDirect.toFixed(2).padStart(12) +
        String(t.errors).padStart(8),
    );
  }
  console.log("\nmaps (meshd_svc4_v2 etc.), kernel memory from each map's fdinfo memlock:");
  for (const m of memory) {
    console.log(
      `${String(m.services).padStart(6)} services (${m.entries} entries): ` +
        `${(m.mapBytes / 1048576).toFixed(2)} MiB, written in ${m.writeMs.toFixed(0)} ms`,
    );
  }
  await writeResult(args.out, "ebpf.json", { args, table, memory, kernel: Deno.osRelease() });
} finally {
  await env.remove();
}
Deno.exit(0);
