/**
 * The leader's memory against the node count, for config distribution alone (no cluster): a
 * DistributionServer in a process of its own holds a config of S services, and N simulated
 * node agents (tests/bench/sim_agents.ts, a hundred per process) subscribe to it, get the whole
 * config, then N deltas a change for C one-endpoint changes. For each N it prints the leader's
 * RSS once idle, its peak, and the propagation from publish to the last node's apply, and the
 * RSS ratio to the 3-node case of the same run. Each case runs twice: with updates in parts
 * (what meshd does) and written whole to each node (what it did before), so the table shows
 * what the parts save.
 *
 * Not a test: it asserts nothing. The full benchmark, with the API server and real meshd
 * nodes, is scripts/bench-distribution.
 *
 *   deno run --allow-all tests/bench/leader_memory_bench.ts [--services 3000]
 *     [--nodes 3,100,300] [--changes 20] [--rounds 1] [--host 127.0.0.1] [--out FILE]
 *
 * @module
 */
import { compareServices } from "../../src/distribution/config_delta.ts";
import { createLeaderIdentity, DistributionServer } from "../../src/distribution/mod.ts";
import { Logger } from "../../src/observability/mod.ts";
import type { MeshConfig } from "../../src/topology/mod.ts";
import { endpoint, meshConfig, type ServiceSpec } from "../../src/topology/_testing.ts";
import { Child } from "../testenv/process.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const SIM = new URL("./sim_agents.ts", import.meta.url).pathname;
const AGENTS_PER_PROCESS = 100;

interface Args {
  services: number;
  nodes: number[];
  changes: number;
  rounds: number;
  host: string;
  out: string;
  /** DistributionServer's partBytes and partsAhead; 0 for its defaults. */
  partBytes: number;
  partsAhead: number;
}

/** One leader process's figures. */
interface CaseResult {
  round?: number;
  services: number;
  nodes: number;
  mode: "parts" | "whole";
  configBytes: number;
  settleMs: number;
  p50Ms: number;
  p99Ms: number;
  rssMiB: number;
  peakRssMiB: number;
  heapUsedMiB: number;
  /** CPU seconds the leader process used, user and system. */
  cpuSeconds: number;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    services: 3000,
    nodes: [3, 100, 300],
    changes: 20,
    rounds: 1,
    host: "127.0.0.1",
    out: `${ROOT}bench-results/leader_memory.json`,
    partBytes: 0,
    partsAhead: 0,
  };
  for (let i = 0; i < argv.length; i++) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (k === "--services" && v) a.services = Number(v), i++;
    else if (k === "--nodes" && v) a.nodes = v.split(",").map(Number), i++;
    else if (k === "--changes" && v) a.changes = Number(v), i++;
    else if (k === "--rounds" && v) a.rounds = Number(v), i++;
    else if (k === "--host" && v) a.host = v, i++;
    else if (k === "--out" && v) a.out = v, i++;
    else if (k === "--part-bytes" && v) a.partBytes = Number(v), i++;
    else if (k === "--parts-ahead" && v) a.partsAhead = Number(v), i++;
    else {
      console.error(
        "usage: leader_memory_bench.ts [--services 3000] [--nodes 3,100,300] [--changes 20] " +
          "[--rounds 1] [--host 127.0.0.1] [--part-bytes N] [--parts-ahead N] [--out FILE]",
      );
      Deno.exit(2);
    }
  }
  const ok = (n: number, lo: number, hi: number) => Number.isInteger(n) && n >= lo && n <= hi;
  if (!ok(a.services, 1, 50_000) || !a.nodes.every((n) => ok(n, 1, 2_000))) {
    console.error("--services: 1 to 50000; --nodes: counts from 1 to 2000");
    Deno.exit(2);
  }
  if (
    !ok(a.changes, 1, 500) || !ok(a.rounds, 1, 10) || !ok(a.partBytes, 0, 2 ** 30) ||
    !ok(a.partsAhead, 0, 1000)
  ) {
    console.error("--changes: 1 to 500; --rounds: 1 to 10; --part-bytes, --parts-ahead: >= 0");
    Deno.exit(2);
  }
  return a;
}

/** RSS and its peak, MiB. */
function memory(): { rss: number; peak: number } {
  const s = Deno.readTextFileSync("/proc/self/status");
  const kb = (k: string) => Number(s.match(new RegExp(`^${k}:\\s+(\\d+) kB`, "m"))?.[1] ?? 0);
  return { rss: kb("VmRSS") / 1024, peak: kb("VmHWM") / 1024 };
}

/** CPU seconds (user + system) this process has used. */
function cpuSeconds(): number {
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

/** Service `i` with its endpoint moved `generation` times, as the cluster benchmark does. */
function service(i: number, generation: number): ServiceSpec {
  return {
    name: `s-${i}`,
    namespace: "bench",
    ports: [{
      port: 80,
      name: "web",
      endpoints: [
        endpoint(`203.0.113.${(i + generation) % 250 + 1}`, 8080, { nodeName: "node-1" }),
        endpoint(`192.0.2.${i % 250 + 1}`, 8080, { nodeName: "node-2" }),
      ],
    }],
  };
}

/** One case, in this process: the leader, its agents, the changes. Prints one JSON line. */
async function leaderCase(
  services: number,
  nodes: number,
  changes: number,
  host: string,
  mode: "parts" | "whole",
  parts: { bytes: number; ahead: number },
) {
  const config = (version: number, changed: Map<number, number>, previous?: MeshConfig) => {
    const c = meshConfig(
      Array.from({ length: services }, (_, i) => service(i, changed.get(i) ?? 0)),
      { version },
    );
    c.services.sort(compareServices);
    // Unchanged services keep their objects, as the controller's compile does.
    if (previous) {
      const before = new Map(previous.services.map((s) => [s.name, s]));
      c.services = c.services.map((s) =>
        changed.get(Number(s.name.slice(2))) === version ? s : before.get(s.name) ?? s
      );
    }
    return c;
  };
  const changed = new Map<number, number>();
  let current = config(1, changed);
  const identity = await createLeaderIdentity("bench-leader");
  const server = new DistributionServer({
    logger: new Logger({ level: "error", write: (l) => console.error(l) }),
    identity,
    partBytes: mode === "whole" ? Number.MAX_SAFE_INTEGER : parts.bytes || undefined,
    partsAhead: parts.ahead || undefined,
  });
  const port = await server.listen(host, 0);
  server.publish(current, "bench");
  const leader = { address: `${host}:${port}`, certPem: identity.certPem };
  const sims: Child[] = [];
  const inSync = async (what: string) => {
    const t0 = performance.now();
    for (;;) {
      if (server.nodes().filter((n) => n.connected && n.inSync).length >= nodes) break;
      if (performance.now() - t0 > 900_000) throw new Error(`Timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 2));
    }
    return performance.now() - t0;
  };
  try {
    for (let left = nodes; left > 0;) {
      const count = Math.min(AGENTS_PER_PROCESS, left);
      left -= count;
      const settings = { prefix: `sim-${sims.length}`, count, leader, token: "" };
      // (Its stdout is not read, so it takes none of this process's heap; its stderr goes on
      // to the bench's.)
      const sim = new Child(settings.prefix, [
        "run",
        "--allow-all",
        `--config=${ROOT}deno.json`,
        SIM,
      ], {
        stdin: true,
        stdout: "null",
        onLine: (l) => console.error(l),
      });
      await sim.write(JSON.stringify(settings) + "\n");
      sims.push(sim);
    }
    const settleMs = await inSync("every node on version 1");
    const times: number[] = [];
    for (let k = 0; k < changes; k++) {
      const i = ((k + 1) * 7919) % services;
      changed.set(i, k + 2);
      current = config(k + 2, changed, current);
      const t0 = performance.now();
      server.publish(current, "bench");
      await inSync(`every node on version ${k + 2}`);
      times.push(performance.now() - t0);
    }
    // Idle a little, as the cluster benchmark does before it reads the RSS.
    await new Promise((r) => setTimeout(r, 3000));
    const mem = memory();
    const sorted = times.sort((a, b) => a - b);
    const result: CaseResult = {
      services,
      nodes,
      mode,
      configBytes: new TextEncoder().encode(JSON.stringify(current)).length,
      settleMs,
      p50Ms: quantile(sorted, 0.5),
      p99Ms: quantile(sorted, 0.99),
      rssMiB: mem.rss,
      peakRssMiB: mem.peak,
      heapUsedMiB: Deno.memoryUsage().heapUsed / 2 ** 20,
      cpuSeconds: cpuSeconds(),
    };
    console.log(JSON.stringify(result));
  } finally {
    for (const s of sims) await s.closeStdin();
    for (const s of sims) await s.exited();
    await server.stop();
  }
}

async function main(): Promise<void> {
  if (Deno.args[0] === "--case") {
    const [services, nodes, changes, bytes, ahead] = [1, 2, 3, 6, 7].map((i) =>
      Number(Deno.args[i])
    ) as [number, number, number, number, number];
    const mode = Deno.args[5] as "parts" | "whole";
    await leaderCase(services, nodes, changes, Deno.args[4]!, mode, { bytes, ahead });
    Deno.exit(0);
  }
  const args = parseArgs(Deno.args);
  const say = (s: string) => console.error(`[bench] ${s}`);
  const results: CaseResult[] = [];
  for (let round = 1; round <= args.rounds; round++) {
    for (const mode of ["parts", "whole"] as const) {
      for (const nodes of args.nodes) {
        say(`round ${round}: ${args.services} services, ${nodes} nodes, updates ${mode}`);
        const out = await new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "--allow-all",
            `--config=${ROOT}deno.json`,
            new URL(import.meta.url).pathname,
            "--case",
            String(args.services),
            String(nodes),
            String(args.changes),
            args.host,
            mode,
            String(args.partBytes),
            String(args.partsAhead),
          ],
          stdout: "piped",
          stderr: "inherit",
        }).output();
        const line = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "";
        if (!out.success || !line.startsWith("{")) {
          throw new Error(`The case with ${nodes} nodes failed (exit code ${out.code})`);
        }
        results.push({ ...JSON.parse(line), round });
      }
    }
  }
  const pad = (s: string, n: number) => s.padStart(n);
  console.log(
    "\nThe leader's memory against the node count (distribution alone; RSS after 3 s idle)",
  );
  console.log(
    [
      pad("services", 8),
      pad("nodes", 6),
      pad("updates", 8),
      pad("config B", 9),
      pad("RSS MiB", 8),
      pad("peak", 6),
      pad("ratio", 8),
      pad("heap", 5),
      pad("settle ms", 10),
      pad("CPU s", 6),
      pad("p50 ms", 7),
      pad("p99 ms", 7),
    ].join(" "),
  );
  for (const r of results) {
    const ref = results.find((x) =>
      x.round === r.round && x.mode === r.mode && x.nodes === args.nodes[0]
    );
    console.log(
      [
        pad(String(r.services), 8),
        pad(String(r.nodes), 6),
        pad(r.mode, 8),
        pad(String(r.configBytes), 9),
        pad(r.rssMiB.toFixed(0), 8),
        pad(r.peakRssMiB.toFixed(0), 6),
        pad(ref ? `${(r.rssMiB / ref.rssMiB).toFixed(2)}x` : "", 8),
        pad(r.heapUsedMiB.toFixed(0), 5),
        pad(r.settleMs.toFixed(0), 10),
        pad(r.cpuSeconds.toFixed(1), 6),
        pad(r.p50Ms.toFixed(1), 7),
        pad(r.p99Ms.toFixed(1), 7),
      ].join(" "),
    );
  }
  console.log(
    "updates: parts = large updates in 16 KiB parts, a few ahead of the node's " +
      "acknowledgements (meshd now); whole = each update written whole to each node (before). " +
      "ratio: RSS over the first node count's (--nodes), same updates and round. p50/p99: publish to " +
      "the last node's apply. CPU s: the leader's, over the whole case.",
  );
  await Deno.mkdir(args.out.slice(0, args.out.lastIndexOf("/")), { recursive: true });
  await Deno.writeTextFile(
    args.out,
    JSON.stringify({ date: new Date().toISOString(), results }, null, 2),
  );
  console.log(`wrote ${args.out}`);
}

if (import.meta.main) await main();
