/**
 * Where the ceiling of gRPC unary over h2c lies in Deno: the same h2load load as
 * `dataplane_bench.ts`'s grpc-unary case, in one run, straight to the backend, through HAProxy
 * (nbthread 1), through the minimal forwarders of `h2_forwarders.ts` (node:http2, Deno.serve with
 * fetch, an own frame relay over Deno.listen/Deno.connect without and with HPACK) and through
 * meshd, in interleaved
 * rounds. Prints each one's req/s, p99 and CPU µs per request (the process's utime + stime from
 * /proc/PID/stat) with its ratios to HAProxy's in the same round, and whether the backend's
 * `grpc-status` trailer reaches the client through it.
 *
 *   deno run --allow-all tests/bench/h2_ceiling_bench.ts [--seconds N] [--rounds R] [--out FILE]
 *
 * `scripts/bench-h2` installs the tools and runs it.
 *
 * @module
 */
import http2 from "node:http2";
import { Child, freePort, runToEnd, waitFor, waitForPort } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
// MESHD_BENCH_HOST moves the run to another loopback address (one per concurrent session).
const HOST = Deno.env.get("MESHD_BENCH_HOST") ?? "127.0.65.1";
const FORWARDERS = `${ROOT}tests/bench/h2_forwarders.ts`;

const TARGETS = [
  "direct",
  "haproxy",
  "node-http2",
  "deno-serve",
  "frame-relay",
  "frame-hpack",
  "meshd",
] as const;
type Target = typeof TARGETS[number];

interface Args {
  seconds: number;
  rounds: number;
  out: string;
  loadtools: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    seconds: 4,
    rounds: 3,
    out: `${ROOT}bench-results/h2_ceiling.json`,
    loadtools: "",
  };
  for (let i = 0; i < argv.length; i++) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (k === "--seconds" && v) a.seconds = Number(v), i++;
    else if (k === "--rounds" && v) a.rounds = Number(v), i++;
    else if (k === "--out" && v) a.out = v, i++;
    else if (k === "--loadtools" && v) a.loadtools = v, i++;
    else {
      console.error(
        "usage: h2_ceiling_bench.ts [--seconds N (per load, default 4)] [--rounds R (default 3)] " +
          "[--out FILE] [--loadtools BINARY]",
      );
      Deno.exit(2);
    }
  }
  if (!(a.seconds >= 1 && a.seconds <= 60)) {
    console.error("--seconds must be between 1 and 60");
    Deno.exit(2);
  }
  if (!(Number.isInteger(a.rounds) && a.rounds >= 1 && a.rounds <= 20)) {
    console.error("--rounds must be an integer between 1 and 20");
    Deno.exit(2);
  }
  return a;
}

interface Measure {
  target: Target;
  round: number;
  rate: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  cpuUs: number | null;
}

const run = (cmd: string, args: string[], timeoutMs: number, cwd?: string) =>
  runToEnd(cmd, args, { cwd, timeoutMs });

/** The same h2load load as dataplane_bench's grpc-unary case: 4 connections, 32 streams each. */
async function h2load(
  target: Target,
  port: number,
  seconds: number,
  bodyFile: string,
  logFile: string,
): Promise<Omit<Measure, "round" | "cpuUs">> {
  await Deno.remove(logFile).catch(() => {});
  const r = await run("h2load", [
    "-c4",
    "-m32",
    "-D",
    String(seconds),
    `--connect-to=${HOST}:${port}`,
    "-H",
    "content-type: application/grpc",
    "-H",
    "te: trailers",
    "-d",
    bodyFile,
    `--log-file=${logFile}`,
    "http://grpc.default.mesh/bench.Echo/Unary",
  ], (seconds + 30) * 1000);
  const m = /finished in ([\d.]+)(ms|s), ([\d.]+) req\/s/.exec(r.stdout);
  const counts =
    /requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored/
      .exec(r.stdout);
  if (r.code !== 0 || !m || !counts) {
    throw new Error(`h2load against ${target} failed (exit ${r.code}): ${r.stdout}${r.stderr}`);
  }
  const durations: number[] = [];
  let non200 = 0;
  for (const line of (await Deno.readTextFile(logFile)).split("\n")) {
    const f = line.split("\t");
    if (f.length < 3) continue;
    if (f[1] !== "200") non200++;
    durations.push(Number(f[2]) / 1000);
  }
  durations.sort((a, b) => a - b);
  const q = (x: number) => durations[Math.floor(x * (durations.length - 1))] ?? NaN;
  return {
    target,
    rate: Number(m[3]),
    p50Ms: q(0.5),
    p99Ms: q(0.99),
    errors: Number(counts[2]) + Number(counts[3]) + non200,
  };
}

/** One gRPC unary call through `port`: the grpc-status trailer the client received, if any. */
function grpcStatus(port: number, body: Uint8Array): Promise<string | null> {
  return new Promise((resolve) => {
    const s = http2.connect(`http://${HOST}:${port}`);
    const done = (v: string | null) => {
      clearTimeout(timer);
      s.close();
      resolve(v);
    };
    const timer = setTimeout(() => done(null), 5000);
    s.on("error", () => done(null));
    const req = s.request({
      ":method": "POST",
      ":path": "/bench.Echo/Unary",
      ":authority": "grpc.default.mesh",
      "content-type": "application/grpc",
      te: "trailers",
    });
    let status: string | null = null;
    req.on("trailers", (t) => status = String(t["grpc-status"] ?? "") || null);
    req.on("data", () => {});
    req.on("end", () => done(status));
    req.on("error", () => done(null));
    req.end(body);
  });
}

const CLK_TCK = Number(
  new TextDecoder().decode(new Deno.Command("getconf", { args: ["CLK_TCK"] }).outputSync().stdout)
    .trim(),
) || 100;

function cpuTicks(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]);
}

function meshYaml(backendPort: number): string {
  return `apiVersion: v1
kind: Service
metadata: { name: grpc, namespace: default, annotations: { "meshd.io/scheme": h2c } }
spec: { ports: [{ name: p, port: 80, protocol: TCP }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: grpc-a, namespace: default, labels: { kubernetes.io/service-name: grpc } }
addressType: IPv4
ports: [{ name: p, port: ${backendPort}, protocol: TCP }]
endpoints:
  - addresses: ["${HOST}"]
    conditions: { ready: true }
`;
}

function haproxyCfg(port: number, backendPort: number): string {
  return `global
  nbthread 1
  maxconn 4096
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend grpc
  mode http
  bind ${HOST}:${port} proto h2
  default_backend grpc
backend grpc
  mode http
  http-reuse always
  server s1 ${HOST}:${backendPort} proto h2
`;
}

async function main(): Promise<void> {
  const args = parseArgs(Deno.args);
  const work = await Deno.makeTempDir({ prefix: "meshd-h2-bench-" });
  const children: Child[] = [];
  const start = (c: Child) => (children.push(c), c);
  const results: Measure[] = [];
  const trailers: Partial<Record<Target, string | null>> = {};
  try {
    const loadtools = args.loadtools || `${work}/loadtools`;
    if (!args.loadtools) {
      const b = await run(
        "go",
        ["build", "-o", loadtools, "."],
        300_000,
        `${ROOT}tests/bench/loadtools`,
      )
        .catch((e) => ({ code: -1, stdout: "", stderr: String(e) }));
      if (b.code !== 0) throw new Error(`building loadtools failed: ${b.stderr}`);
    }
    const backendPort = freePort(HOST);
    start(
      new Child(
        "http-backend",
        ["http-backend", "-listen", `${HOST}:${backendPort}`, "-name", "b"],
        {
          command: loadtools,
        },
      ),
    );
    await waitForPort(HOST, backendPort);

    const ports: Record<Target, number> = {
      direct: backendPort,
      haproxy: freePort(HOST),
      "node-http2": freePort(HOST),
      "deno-serve": freePort(HOST),
      "frame-relay": freePort(HOST),
      "frame-hpack": freePort(HOST),
      meshd: freePort(HOST),
    };
    const pids: Partial<Record<Target, number>> = {};

    await Deno.writeTextFile(`${work}/haproxy.cfg`, haproxyCfg(ports.haproxy, backendPort));
    pids.haproxy = start(
      new Child("haproxy", ["-db", "-f", `${work}/haproxy.cfg`], { command: "haproxy" }),
    ).pid;

    for (const mode of ["node-http2", "deno-serve", "frame-relay", "frame-hpack"] as const) {
      pids[mode] = start(
        new Child(mode, [
          "run",
          "--allow-net",
          FORWARDERS,
          mode,
          "--listen",
          `${HOST}:${ports[mode]}`,
          "--backend",
          `${HOST}:${backendPort}`,
        ]),
      ).pid;
    }

    const configDir = `${work}/mesh`;
    await Deno.mkdir(configDir);
    await Deno.writeTextFile(`${configDir}/mesh.yaml`, meshYaml(backendPort));
    const [api, tcp, udp] = [freePort(HOST), freePort(HOST), freePort(HOST)];
    const meshd = start(
      spawnMeshd([
        "--config-dir",
        configDir,
        "--proxy-address",
        HOST,
        "--http-port",
        String(ports.meshd),
        "--api-address",
        HOST,
        "--api-port",
        String(api),
        "--tcp-ports",
        `${tcp}-${tcp}`,
        "--udp-ports",
        `${udp}-${udp}`,
        "--log-format",
        "json",
      ]),
    );
    pids.meshd = meshd.pid;
    await waitFor("meshd ready", async () => {
      const r = await fetch(`http://${HOST}:${api}/readyz`).catch(() => null);
      await r?.body?.cancel();
      return r?.ok ? true : undefined;
    }, 30_000);
    for (const t of TARGETS) await waitForPort(HOST, ports[t]);

    // One gRPC message: a 5-byte prefix and 16 bytes of payload.
    const body = new Uint8Array(21);
    body[4] = 16;
    await Deno.writeFile(`${work}/grpc.bin`, body);
    for (const t of TARGETS) trailers[t] = await grpcStatus(ports[t], body);

    for (let round = 1; round <= args.rounds; round++) {
      for (const t of TARGETS) {
        const pid = pids[t];
        const before = pid ? cpuTicks(pid) : null;
        const m = await h2load(t, ports[t], args.seconds, `${work}/grpc.bin`, `${work}/h2load.log`);
        const units = m.rate * args.seconds;
        const cpuUs = pid && before !== null && units > 0
          ? ((cpuTicks(pid) - before) / CLK_TCK) * 1e6 / units
          : null;
        results.push({ ...m, round, cpuUs });
        console.error(
          `  round ${round} ${t.padEnd(12)} ${m.rate.toFixed(0).padStart(7)} req/s  p99 ${
            m.p99Ms.toFixed(2)
          } ms  CPU ${cpuUs === null ? "-" : cpuUs.toFixed(1)} µs/req  errors ${m.errors}`,
        );
      }
    }
  } catch (e) {
    for (const c of children) {
      if (c.lines.length > 0) console.error(`--- ${c.name}:\n${c.lines.slice(-15).join("\n")}`);
    }
    throw e;
  } finally {
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
  report(results, trailers, args);
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0
    ? NaN
    : s.length % 2
    ? s[(s.length - 1) / 2]!
    : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

function report(
  results: Measure[],
  trailers: Partial<Record<Target, string | null>>,
  args: Args,
): void {
  const fmt = (n: number | null | undefined, d = 2) =>
    n === null || n === undefined || Number.isNaN(n) ? "-" : n.toFixed(d);
  const range = (xs: number[], d: number) =>
    xs.length === 0
      ? "-"
      : `${fmt(median(xs), d)} (${fmt(Math.min(...xs), d)}-${fmt(Math.max(...xs), d)})`;
  const rows: Record<string, unknown>[] = [];
  const lines = [
    `h2c gRPC unary ceiling: h2load -c4 -m32, ${args.seconds}s per load, ${args.rounds} interleaved ` +
    `rounds, loopback, ${navigator.hardwareConcurrency} CPUs; median (min-max) over the rounds`,
    "",
    `${"target".padEnd(12)} ${"req/s".padStart(22)} ${"vs HAProxy".padStart(20)} ${
      "p99 ms".padStart(20)
    } ${"CPU µs/req".padStart(22)} ${"CPU vs HAProxy".padStart(20)}  errors  grpc-status`,
  ];
  for (const t of TARGETS) {
    const mine = results.filter((r) => r.target === t);
    const vsRate: number[] = [];
    const vsCpu: number[] = [];
    for (const r of mine) {
      const ref = results.find((x) => x.target === "haproxy" && x.round === r.round);
      if (ref && ref.rate > 0) vsRate.push(r.rate / ref.rate);
      if (ref?.cpuUs && r.cpuUs !== null) vsCpu.push(r.cpuUs / ref.cpuUs);
    }
    const cpu = mine.flatMap((r) => r.cpuUs === null ? [] : [r.cpuUs]);
    const errors = mine.reduce((n, r) => n + r.errors, 0);
    const status = trailers[t];
    rows.push({
      target: t,
      rounds: mine,
      rateMedian: median(mine.map((r) => r.rate)),
      vsHaproxy: vsRate,
      cpuUsMedian: median(cpu),
      cpuVsHaproxy: vsCpu,
      grpcStatusTrailer: status ?? null,
    });
    lines.push(
      `${t.padEnd(12)} ${range(mine.map((r) => r.rate), 0).padStart(22)} ${
        range(vsRate, 2).padStart(20)
      } ${range(mine.map((r) => r.p99Ms), 1).padStart(20)} ${range(cpu, 1).padStart(22)} ${
        range(vsCpu, 2).padStart(20)
      }  ${String(errors).padStart(6)}  ${
        status === null || status === undefined ? "MISSING" : status
      }`,
    );
  }
  lines.push(
    "",
    "vs HAProxy: the target's over HAProxy's (nbthread 1) in the same round. CPU µs/req: the " +
      "target process's user and system time per request, from /proc/PID/stat (direct: none). " +
      "grpc-status: the trailer one gRPC call through the target received (MISSING: dropped, " +
      "so that path cannot carry gRPC; h2load counts only the :status).",
  );
  console.log(lines.join("\n"));
  Deno.mkdirSync(args.out.replace(/\/[^/]+$/, ""), { recursive: true });
  Deno.writeTextFileSync(
    args.out,
    JSON.stringify(
      {
        date: new Date().toISOString(),
        secondsPerLoad: args.seconds,
        rounds: args.rounds,
        cpus: navigator.hardwareConcurrency,
        results: rows,
      },
      null,
      2,
    ) + "\n",
  );
  console.log(`\nwrote ${args.out}`);
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`bench failed: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
