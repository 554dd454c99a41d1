/**
 * The data plane benchmark: the same bounded load, in one run, straight to the backend, through
 * meshd, and through HAProxy configured for the same job, then meshd's memory and apply time
 * for a small and a large config, against HAProxy with the same large config.
 *
 * Everything runs on loopback: backends and load generators are `tests/bench/loadtools` (Go),
 * wrk and h2load. Prints a table and writes JSON with the ratios. Run it with
 * `deno task bench` (scripts/bench installs the tools).
 *
 *   deno run --allow-all tests/bench/dataplane_bench.ts [--seconds N] [--out FILE]
 *
 * @module
 */
import { Child, freePort, runToEnd, waitFor, waitForPort } from "../testenv/process.ts";
import { FILE_PERMISSIONS, MESHD_ENV, MESHD_V8_FLAGS, spawnMeshd } from "../testenv/meshd.ts";
import { nginxUdpConf, processCpuUs } from "./local_servers.ts";
import { programParts } from "./program_pages.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
/** The loopback address everything binds and connects to (`--host`). */
let HOST = "127.0.0.1";

interface Args {
  seconds: number;
  out: string;
  loadtools: string;
  cases: Set<string> | null;
  /** V8 flags meshd gets besides its own (comma-separated), to measure one against the default. */
  v8Flags: string;
  /**
   * Variables added to meshd's environment (`--meshd-env NAME=VALUE,...`), such as glibc's; on
   * top of the one it ships with (`MESHD_ENV`).
   */
  meshdEnv: Record<string, string>;
  /** Each case's targets are measured this many times, interleaved; the table shows medians. */
  rounds: number;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    seconds: 5,
    out: `${ROOT}bench-results/dataplane.json`,
    loadtools: "",
    cases: null,
    v8Flags: "",
    meshdEnv: {},
    rounds: 1,
  };
  for (let i = 0; i < argv.length; i++) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (k === "--seconds" && v) a.seconds = Number(v), i++;
    else if (k === "--out" && v) a.out = v, i++;
    else if (k === "--loadtools" && v) a.loadtools = v, i++;
    else if (k === "--cases" && v) a.cases = new Set(v.split(",")), i++;
    else if (k === "--host" && v && v.startsWith("127.")) HOST = v, i++;
    else if (k === "--meshd-v8-flags" && v) a.v8Flags = v, i++;
    else if (
      k === "--meshd-env" && v && /^[A-Z_][A-Z0-9_]*=[^,]*(,[A-Z_][A-Z0-9_]*=[^,]*)*$/.test(v)
    ) {
      for (const kv of v.split(",")) {
        a.meshdEnv[kv.slice(0, kv.indexOf("="))] = kv.slice(kv.indexOf("=") + 1);
      }
      i++;
    } else if (k === "--rounds" && v) a.rounds = Number(v), i++;
    else {
      console.error(
        "usage: dataplane_bench.ts [--seconds N (per load, default 5)] [--out FILE] " +
          "[--loadtools BINARY] [--host 127.x.y.z] [--meshd-v8-flags FLAG,...] " +
          "[--meshd-env NAME=VALUE,...] [--rounds N] " +
          "[--cases http-keepalive,http-close,grpc-unary,tcp-rr,tcp-bulk,udp-rr,workers,memory]",
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

/** One measurement of one load against one target. */
interface Measure {
  case: string;
  /**
   * `ceiling`: the minimal Deno forwarder of `l4_forwarders.ts`, for the TCP and UDP cases;
   * `ffi`: the same job with libc's epoll and sockets through FFI (`ffi_forwarders.ts`);
   * `meshd-l4`: meshd with `--l4-worker`, its TCP and UDP ports on that loop in a worker.
   */
  target: "direct" | "meshd" | "meshd-l4" | "ceiling" | "ffi" | "haproxy" | "nginx";
  /** Requests (or datagrams) a second; for bulk, MiB a second. */
  rate: number;
  unit: "req/s" | "MiB/s";
  p50Ms: number | null;
  p99Ms: number | null;
  errors: number;
  /** The target process's CPU time (user and system) per request, or per MiB for bulk. */
  cpuUs?: number | null;
  note?: string;
  /** With `--rounds` over 1: each round's rate, in order (the row's figures are medians). */
  rounds?: number[];
}

const run = (cmd: string, args: string[], timeoutMs: number, cwd?: string) =>
  runToEnd(cmd, args, { cwd, timeoutMs });

// ---- load generators ----

function wrkMs(text: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(text.trim());
  if (!m) return NaN;
  const v = Number(m[1]);
  return m[2] === "us" ? v / 1000 : m[2] === "s" ? v * 1000 : v;
}

async function wrk(
  caseName: string,
  target: Measure["target"],
  port: number,
  seconds: number,
  extra: string[],
  conns: number,
  threads = 1,
): Promise<Measure> {
  const r = await run("wrk", [
    `-t${threads}`,
    `-c${conns}`,
    `-d${seconds}s`,
    "--latency",
    "-H",
    "Host: web.default.mesh",
    ...extra,
    `http://${HOST}:${port}/`,
  ], (seconds + 30) * 1000);
  const rate = Number(/Requests\/sec:\s+([\d.]+)/.exec(r.stdout)?.[1] ?? NaN);
  const p50 = wrkMs(/^\s+50%\s+(\S+)/m.exec(r.stdout)?.[1] ?? "");
  const p99 = wrkMs(/^\s+99%\s+(\S+)/m.exec(r.stdout)?.[1] ?? "");
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(r.stdout)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(
    r.stdout,
  );
  const sockErrors = sock ? sock.slice(1).reduce((n, x) => n + Number(x), 0) : 0;
  if (r.code !== 0 || Number.isNaN(rate)) {
    throw new Error(`wrk against ${target} failed (exit ${r.code}): ${r.stderr || r.stdout}`);
  }
  return {
    case: caseName,
    target,
    rate,
    unit: "req/s",
    p50Ms: p50,
    p99Ms: p99,
    errors: non2xx + sockErrors,
  };
}

async function h2load(
  target: Measure["target"],
  port: number,
  seconds: number,
  bodyFile: string,
  logFile: string,
): Promise<Measure> {
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
  // The log has one line per request: start time, status, duration in microseconds.
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
    case: "grpc-unary",
    target,
    rate: Number(m[3]),
    unit: "req/s",
    p50Ms: q(0.5),
    p99Ms: q(0.99),
    errors: Number(counts[2]) + Number(counts[3]) + non200,
  };
}

async function loadtool(
  bin: string,
  caseName: string,
  target: Measure["target"],
  args: string[],
  seconds: number,
): Promise<Measure> {
  const r = await run(bin, [...args, "-duration", `${seconds}s`], (seconds + 30) * 1000);
  let j: Record<string, number | string>;
  try {
    j = JSON.parse(r.stdout);
  } catch {
    throw new Error(`${caseName} against ${target} failed (exit ${r.code}): ${r.stderr}`);
  }
  const bulk = caseName === "tcp-bulk";
  return {
    case: caseName,
    target,
    rate: Number(bulk ? j.mibPerSecond : j.perSecond),
    unit: bulk ? "MiB/s" : "req/s",
    p50Ms: bulk ? null : Number(j.p50Ms),
    p99Ms: bulk ? null : Number(j.p99Ms),
    errors: Number(j.errors ?? 0),
    ...(j.firstError ? { note: String(j.firstError) } : {}),
  };
}

// ---- configs ----

export function meshYaml(ports: { http: number; tcp: number; udp: number }, pad: number): string {
  const docs: string[] = [];
  const svc = (name: string, port: number, protocol: string, annotations: string) =>
    `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: default${
      annotations ? `, annotations: { ${annotations} }` : ""
    } }
spec: { ports: [{ name: p, port: ${port}, protocol: ${protocol} }] }
`;
  const slice = (name: string, port: number, protocol: string, ips: string[]) =>
    `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: ${name}-a, namespace: default, labels: { kubernetes.io/service-name: ${name} } }
addressType: IPv4
ports: [{ name: p, port: ${port}, protocol: ${protocol} }]
endpoints:
${ips.map((ip) => `  - addresses: ["${ip}"]\n    conditions: { ready: true }`).join("\n")}
`;
  docs.push(svc("web", 80, "TCP", ""), slice("web", ports.http, "TCP", [HOST]));
  docs.push(
    svc("grpc", 80, "TCP", '"meshd.io/scheme": h2c'),
    slice("grpc", ports.http, "TCP", [HOST]),
  );
  docs.push(
    svc("echo", 7000, "TCP", '"meshd.io/traffic-type": tcp'),
    slice("echo", ports.tcp, "TCP", [HOST]),
  );
  docs.push(svc("uecho", 7001, "UDP", ""), slice("uecho", ports.udp, "UDP", [HOST]));
  // Filler services with ten endpoints each, on loopback addresses nothing listens on (no
  // traffic is sent to them; they only make the config big).
  for (let i = 0; i < pad; i++) {
    const ips = Array.from({ length: 10 }, (_, j) => `127.${10 + (i >> 8)}.${i & 255}.${j + 1}`);
    docs.push(svc(`svc-${i}`, 80, "TCP", ""), slice(`svc-${i}`, 8080, "TCP", ips));
  }
  return docs.join("---\n");
}

function haproxyCfg(
  p: { web: number; grpc: number; tcp: number },
  backends: { http: number; tcp: number },
  pad: number,
  threads = 1,
): string {
  let s = `global
  nbthread ${threads}
  maxconn 4096
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend web
  mode http
  bind ${HOST}:${p.web}
  use_backend %[req.hdr(host),lower,map(${"MAP"})] if { req.hdr(host),lower,map(${"MAP"}) -m found }
  default_backend web
backend web
  mode http
  http-reuse always
  server s1 ${HOST}:${backends.http}
frontend grpc
  mode http
  bind ${HOST}:${p.grpc} proto h2
  default_backend grpc
backend grpc
  mode http
  http-reuse always
  server s1 ${HOST}:${backends.http} proto h2
frontend tcp
  mode tcp
  bind ${HOST}:${p.tcp}
  default_backend tcp
backend tcp
  mode tcp
  server s1 ${HOST}:${backends.tcp}
`;
  for (let i = 0; i < pad; i++) {
    s += `backend svc-${i}\n  mode http\n`;
    for (let j = 0; j < 10; j++) {
      s += `  server e${j} 127.${10 + (i >> 8)}.${i & 255}.${j + 1}:8080\n`;
    }
  }
  return s;
}

function haproxyMap(pad: number): string {
  let s = "web.default.mesh web\n";
  for (let i = 0; i < pad; i++) s += `svc-${i}.default.mesh svc-${i}\n`;
  return s;
}

function rssMiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN);
  return kb / 1024;
}

/** Resident MiB of process `pid` by kind of mapping, from `/proc/PID/smaps`. */
export interface RssParts {
  /** Pages of the program's own file (`deno` or `haproxy`): code, read-only data, V8 snapshot. */
  program: number;
  /** Pages of shared libraries. */
  libraries: number;
  /** The brk heap: glibc's main malloc arena. */
  brk: number;
  /** Other anonymous memory: V8 heaps and code, other threads' malloc arenas, stacks. */
  anonymous: number;
}

/** Splits the RSS of `pid` into {@linkcode RssParts}; `program` names the executable's file. */
export function rssParts(pid: number, program: string): RssParts {
  const parts: RssParts = { program: 0, libraries: 0, brk: 0, anonymous: 0 };
  let kind: keyof RssParts = "anonymous";
  for (const line of Deno.readTextFileSync(`/proc/${pid}/smaps`).split("\n")) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      const name = head[1]!;
      kind = name === "[heap]"
        ? "brk"
        : name === program
        ? "program"
        : name.startsWith("/")
        ? "libraries"
        : "anonymous";
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) parts[kind] += Number(rss[1]) / 1024;
  }
  return parts;
}

async function metric(apiPort: number, name: string): Promise<number | undefined> {
  const text = await (await fetch(`http://${HOST}:${apiPort}/metrics`)).text();
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text);
  return m ? Number(m[1]) : undefined;
}

async function heapUsed(apiPort: number, kind = "heap_used"): Promise<number> {
  const text = await (await fetch(`http://${HOST}:${apiPort}/metrics`)).text();
  const m = new RegExp(`^meshd_process_memory_bytes\\{kind="${kind}"\\} (\\S+)$`, "m").exec(text);
  return Number(m?.[1] ?? NaN);
}

/** {@linkcode rssParts} of `pid` into `memory`, as `<prefix>Program` and so on. */
function recordParts(
  memory: Record<string, number>,
  prefix: string,
  pid: number,
  program: string,
): void {
  for (const [k, v] of Object.entries(rssParts(pid, program))) {
    memory[`${prefix}${k[0]!.toUpperCase()}${k.slice(1)}`] = v;
  }
}

// ---- the run ----

/**
 * What meshd's environment gets here besides `MESHD_ENV`: no update check by the `deno` CLI,
 * as `scripts/bench` (scripts/_lib.sh), the test image's wrapper and the compiled binary have
 * it. Run straight (`deno run ... dataplane_bench.ts`), every `deno run` of meshd otherwise
 * looks up Deno's download server (a DNS query off the machine) and holds 1-1.5 MiB more of
 * the `deno` file's pages (issue 21).
 */
const BENCH_MESHD_ENV: Readonly<Record<string, string>> = { DENO_NO_UPDATE_CHECK: "1" };

async function startMeshd(configDir: string, args: Args, workers = 1, extra: string[] = []) {
  const { v8Flags } = args;
  const meshdEnv = { ...BENCH_MESHD_ENV, ...args.meshdEnv };
  const mesh = { http: freePort(), api: freePort(), tcp: freePort(), udp: freePort() };
  // FFI as the shipped binary has it (the malloc trim after a large apply); the userspace data
  // path, which does the job HAProxy does (and no eBPF program on the host's cgroup).
  const deno = [
    ...FILE_PERMISSIONS.map((a) => a === MESHD_V8_FLAGS && v8Flags ? `${a},${v8Flags}` : a),
    "--allow-ffi",
  ];
  const meshd = spawnMeshd([
    "--config-dir",
    configDir,
    "--proxy-address",
    HOST,
    "--api-address",
    HOST,
    "--http-port",
    String(mesh.http),
    "--api-port",
    String(mesh.api),
    "--tcp-ports",
    `${mesh.tcp}-${mesh.tcp}`,
    "--udp-ports",
    `${mesh.udp}-${mesh.udp}`,
    "--workers",
    String(workers),
    "--datapath",
    "userspace",
    "--log-format",
    "json",
    ...extra,
  ], { deno, env: meshdEnv });
  try {
    await waitFor("meshd ready", async () => {
      const r = await fetch(`http://${HOST}:${mesh.api}/readyz`).catch(() => null);
      await r?.body?.cancel();
      return r?.ok ? true : undefined;
    }, 30_000);
  } catch (e) {
    await meshd.stop();
    throw new Error(`${(e as Error).message}\n${meshd.lines.slice(-10).join("\n")}`);
  }
  return { meshd, mesh };
}

async function main(): Promise<void> {
  const args = parseArgs(Deno.args);
  const want = (c: string) => !args.cases || args.cases.has(c);
  const secs = args.seconds;
  const work = await Deno.makeTempDir({ prefix: "meshd-bench-" });
  const children: Child[] = [];
  const start = (c: Child) => (children.push(c), c);
  const results: Measure[] = [];
  const memory: Record<string, number> = {};
  try {
    const loadtools = args.loadtools || `${work}/loadtools`;
    if (!args.loadtools) {
      const b = await run(
        "go",
        ["build", "-o", loadtools, "."],
        300_000,
        `${ROOT}tests/bench/loadtools`,
      ).catch((e) => ({
        code: -1,
        stdout: "",
        stderr: String(e),
      }));
      if (b.code !== 0) throw new Error(`building loadtools failed: ${b.stderr}`);
    }
    const ports = { http: freePort(), tcp: freePort(), udp: freePort() };
    start(
      new Child(
        "http-backend",
        ["http-backend", "-listen", `${HOST}:${ports.http}`, "-name", "b"],
        {
          command: loadtools,
        },
      ),
    );
    start(
      new Child("tcp-echo", ["tcp-echo", "-listen", `${HOST}:${ports.tcp}`], {
        command: loadtools,
      }),
    );
    start(
      new Child("udp-echo", ["udp-echo", "-listen", `${HOST}:${ports.udp}`], {
        command: loadtools,
      }),
    );
    await waitForPort(HOST, ports.http);
    await waitForPort(HOST, ports.tcp);

    // meshd with 10 services: the four under load and six fillers.
    const configDir = `${work}/mesh`;
    await Deno.mkdir(configDir);
    await Deno.writeTextFile(`${configDir}/mesh.yaml`, meshYaml(ports, 6));
    let { meshd, mesh } = await startMeshd(configDir, args);
    start(meshd);

    const hap = { web: freePort(), grpc: freePort(), tcp: freePort() };
    await Deno.writeTextFile(`${work}/hosts.map`, haproxyMap(0));
    await Deno.writeTextFile(
      `${work}/haproxy.cfg`,
      haproxyCfg(hap, ports, 0).replaceAll("MAP", `${work}/hosts.map`),
    );
    const haproxy = start(
      new Child("haproxy", ["-db", "-f", `${work}/haproxy.cfg`], { command: "haproxy" }),
    );
    await waitForPort(HOST, hap.web);

    // The ceilings: minimal Deno forwarders, so a TCP or UDP case shows meshd, what Deno itself
    // reaches, and the reference, measured in the same run.
    const ceil = { tcp: freePort(), udp: freePort() };
    // And the same forwarders with libc's I/O through FFI: how far Deno's I/O layer is the limit.
    const ffi = { tcp: freePort(), udp: freePort() };
    const ceilings: Partial<Record<"tcp" | "udp", Child>> = {};
    let pidsL4: number | undefined;
    const ffiForwarders: Partial<Record<"tcp" | "udp", Child>> = {};
    if (want("tcp-rr") || want("tcp-bulk")) {
      ceilings.tcp = start(ceilingForwarder("tcp", ceil.tcp, ports.tcp));
      ffiForwarders.tcp = start(ceilingForwarder("tcp", ffi.tcp, ports.tcp, "ffi"));
      await waitForPort(HOST, ceil.tcp);
      await waitForPort(HOST, ffi.tcp);
    }
    if (want("udp-rr")) {
      ceilings.udp = start(ceilingForwarder("udp", ceil.udp, ports.udp));
      ffiForwarders.udp = start(ceilingForwarder("udp", ffi.udp, ports.udp, "ffi"));
      await waitFor("the UDP ceiling answers", () => udpAnswers(ceil.udp));
      await waitFor("the FFI UDP forwarder answers", () => udpAnswers(ffi.udp));
    }

    // meshd with --l4-worker: its TCP and UDP ports on meshd's own loop, in a worker.
    let l4: { tcp: number; udp: number } | null = null;
    if (want("tcp-rr") || want("tcp-bulk") || want("udp-rr")) {
      const m = await startMeshd(configDir, args, 1, ["--l4-worker"]);
      start(m.meshd);
      pidsL4 = m.meshd.pid;
      l4 = m.mesh;
      await waitForPort(HOST, l4.tcp);
      await waitFor("meshd --l4-worker answers UDP", () => udpAnswers(l4!.udp));
    }

    const targets = (
      direct: number,
      meshd: number,
      ref: number,
      refName: Measure["target"] = "haproxy",
      ceiling?: number,
      ffiPort?: number,
      l4Port?: number,
    ) => {
      const one = [
        ["direct", direct],
        ["meshd", meshd],
        ...(l4Port ? [["meshd-l4", l4Port]] : []),
        ...(ceiling ? [["ceiling", ceiling]] : []),
        ...(ffiPort ? [["ffi", ffiPort]] : []),
        [refName, ref],
      ] as [Measure["target"], number][];
      // Rounds interleave the targets, so each round's ratios share the machine's load then.
      return Array.from({ length: args.rounds }, () => one).flat();
    };
    // CPU time per request from /proc/PID/stat (utime + stime): what each request costs the
    // process, which a shared machine's load moves less than the rate.
    const pids: Partial<Record<Measure["target"], number>> = {
      meshd: meshd.pid,
      "meshd-l4": pidsL4,
      haproxy: haproxy.pid,
    };
    const ceilingPid = (kind: "tcp" | "udp") => {
      pids.ceiling = ceilings[kind]?.pid;
      pids.ffi = ffiForwarders[kind]?.pid;
    };
    const step = async (t: Measure["target"], load: () => Promise<Measure>) => {
      const pid = pids[t];
      const before = pid ? processCpuUs(pid) : null;
      const m = await load();
      if (pid && before !== null) {
        const units = m.rate * secs;
        m.cpuUs = units > 0 ? (processCpuUs(pid) - before) / units : null;
      }
      results.push(m);
      console.error(
        `  ${m.case.padEnd(15)} ${m.target.padEnd(8)} ${m.rate.toFixed(1).padStart(10)} ${m.unit}` +
          `${m.p99Ms !== null ? `  p99 ${m.p99Ms.toFixed(2)} ms` : ""}  errors ${m.errors}`,
      );
    };

    if (want("http-keepalive")) {
      for (const [t, port] of targets(ports.http, mesh.http, hap.web)) {
        await step(t, () => wrk("http-keepalive", t, port, secs, [], 32));
      }
    }
    if (want("http-close")) {
      for (const [t, port] of targets(ports.http, mesh.http, hap.web)) {
        await step(t, () => wrk("http-close", t, port, secs, ["-H", "Connection: close"], 16));
      }
    }
    if (want("grpc-unary")) {
      // One gRPC message: a 5-byte prefix and 16 bytes of payload.
      const body = new Uint8Array(21);
      body[4] = 16;
      await Deno.writeFile(`${work}/grpc.bin`, body);
      for (const [t, port] of targets(ports.http, mesh.http, hap.grpc)) {
        await step(t, () => h2load(t, port, secs, `${work}/grpc.bin`, `${work}/h2load.log`));
      }
    }
    if (want("tcp-rr")) {
      ceilingPid("tcp");
      for (
        const [t, port] of targets(
          ports.tcp,
          mesh.tcp,
          hap.tcp,
          "haproxy",
          ceil.tcp,
          ffi.tcp,
          l4?.tcp,
        )
      ) {
        await step(t, () =>
          loadtool(loadtools, "tcp-rr", t, [
            "tcp-rr",
            "-target",
            `${HOST}:${port}`,
            "-conns",
            "16",
            "-size",
            "64",
          ], secs));
      }
    }
    if (want("tcp-bulk")) {
      ceilingPid("tcp");
      for (
        const [t, port] of targets(
          ports.tcp,
          mesh.tcp,
          hap.tcp,
          "haproxy",
          ceil.tcp,
          ffi.tcp,
          l4?.tcp,
        )
      ) {
        await step(t, () =>
          loadtool(loadtools, "tcp-bulk", t, [
            "tcp-bulk",
            "-target",
            `${HOST}:${port}`,
            "-conns",
            "1",
          ], secs));
      }
    }
    if (want("udp-rr")) {
      // HAProxy has no UDP proxy: nginx's stream module is the reference here.
      const ng = freePort();
      await Deno.writeTextFile(
        `${work}/nginx.conf`,
        nginxUdpConf(work, `${HOST}:${ng}`, `${HOST}:${ports.udp}`),
      );
      pids.nginx = start(
        new Child("nginx", ["-e", `${work}/nginx.err`, "-p", work, "-c", `${work}/nginx.conf`], {
          command: "nginx",
        }),
      ).pid;
      await waitFor("nginx started", async () => {
        const err = await Deno.readTextFile(`${work}/nginx.err`).catch(() => "");
        if (/\[emerg\]/.test(err)) throw new Error(`nginx failed: ${err}`);
        return await Deno.stat(`${work}/nginx.pid`).then(() => true, () => undefined);
      });
      ceilingPid("udp");
      for (
        const [t, port] of targets(ports.udp, mesh.udp, ng, "nginx", ceil.udp, ffi.udp, l4?.udp)
      ) {
        await step(t, () =>
          loadtool(loadtools, "udp-rr", t, [
            "udp-rr",
            "-target",
            `${HOST}:${port}`,
            "-clients",
            "16",
            "-size",
            "64",
          ], secs));
      }
    }

    if (want("workers")) {
      // meshd with 1 and 2 proxy workers against HAProxy with nbthread 1 and 2, on the same
      // loads: HTTP keep-alive (wrk with two threads, so the load generator is not the limit
      // of the two-worker figure) and TCP request/response. Each pair runs in its own case, so
      // "vs ref" compares 1 worker with 1 thread, and 2 with 2.
      for (const n of [1, 2]) {
        const m = n === 1 ? { meshd, mesh } : await startMeshd(configDir, args, n);
        if (n !== 1) start(m.meshd);
        const h = { web: freePort(), grpc: freePort(), tcp: freePort() };
        await Deno.writeTextFile(
          `${work}/haproxy-${n}t.cfg`,
          haproxyCfg(h, ports, 0, n).replaceAll("MAP", `${work}/hosts.map`),
        );
        const hp = start(
          new Child(`haproxy-${n}t`, ["-db", "-f", `${work}/haproxy-${n}t.cfg`], {
            command: "haproxy",
          }),
        );
        await waitForPort(HOST, h.web);
        const saved = { ...pids };
        pids.meshd = m.meshd.pid;
        pids.haproxy = hp.pid;
        for (const [t, port] of [["meshd", m.mesh.http], ["haproxy", h.web]] as const) {
          await step(t, () => wrk(`http-keepalive-${n}w`, t, port, secs, [], 64, 2));
        }
        for (const [t, port] of [["meshd", m.mesh.tcp], ["haproxy", h.tcp]] as const) {
          await step(t, () =>
            loadtool(loadtools, `tcp-rr-${n}w`, t, [
              "tcp-rr",
              "-target",
              `${HOST}:${port}`,
              "-conns",
              "32",
              "-size",
              "64",
            ], secs));
        }
        Object.assign(pids, saved);
        await hp.stop();
        if (n !== 1) await m.meshd.stop();
      }
    }
    if (want("memory")) {
      // A fresh meshd, so the figures are the config's and not the loads' buffers.
      await haproxy.stop();
      await meshd.stop();
      await Deno.writeTextFile(`${configDir}/mesh.yaml`, meshYaml(ports, 6));
      ({ meshd, mesh } = await startMeshd(configDir, args));
      start(meshd);
      await new Promise((r) => setTimeout(r, 1000));
      memory.meshdRssMiB10 = rssMiB(meshd.pid);
      memory.meshdHeapUsedMiB10 = (await heapUsed(mesh.api)) / 2 ** 20;
      // The large config: 1,000 services with 10 endpoints each (plus the 4 under load).
      const before = await metric(mesh.api, "meshd_config_version") ?? 0;
      const big = meshYaml(ports, 996);
      const t0 = performance.now();
      await Deno.writeTextFile(`${configDir}/mesh.yaml.tmp`, big);
      await Deno.rename(`${configDir}/mesh.yaml.tmp`, `${configDir}/mesh.yaml`);
      await waitFor("the large config applied", async () => {
        const v = await metric(mesh.api, "meshd_config_version");
        return v !== undefined && v > before ? true : undefined;
      }, 120_000);
      memory.meshdFileToLiveMs = performance.now() - t0;
      const applied = meshd.lines.map((l) => {
        try {
          return JSON.parse(l);
        } catch {
          return null;
        }
      }).filter((j) => j?.msg === "config applied");
      memory.meshdCompileApplyMs = Number(applied.at(-1)?.ms ?? NaN);
      memory.meshdServices = Number(applied.at(-1)?.services ?? NaN);
      await new Promise((r) => setTimeout(r, 1000));
      memory.meshdRssMiB1000 = rssMiB(meshd.pid);
      memory.meshdHeapUsedMiB1000 = (await heapUsed(mesh.api)) / 2 ** 20;
      memory.meshdHeapTotalMiB1000 = (await heapUsed(mesh.api, "heap_total")) / 2 ** 20;
      recordParts(memory, "meshdMiB1000", meshd.pid, Deno.realPathSync(Deno.execPath()));
      const program = programParts(meshd.pid, Deno.realPathSync(Deno.execPath()));
      for (const [k, v] of Object.entries(program)) {
        memory[`meshdProgramMiB1000${k[0]!.toUpperCase()}${k.slice(1)}`] = v;
      }

      // HAProxy with the same 1,000 backends and 10,000 servers, and a Host map to them.
      await Deno.writeTextFile(`${work}/hosts.map`, haproxyMap(1000));
      const bigHap = { web: freePort(), grpc: freePort(), tcp: freePort() };
      await Deno.writeTextFile(
        `${work}/haproxy-big.cfg`,
        haproxyCfg(bigHap, ports, 1000).replaceAll("MAP", `${work}/hosts.map`),
      );
      const h0 = performance.now();
      const bigHaproxy = start(
        new Child("haproxy-big", ["-db", "-f", `${work}/haproxy-big.cfg`], { command: "haproxy" }),
      );
      await waitForPort(HOST, bigHap.web, 120_000);
      memory.haproxyStartMs1000 = performance.now() - h0;
      await new Promise((r) => setTimeout(r, 1000));
      memory.haproxyRssMiB1000 = rssMiB(bigHaproxy.pid);
      recordParts(
        memory,
        "haproxyMiB1000",
        bigHaproxy.pid,
        Deno.readLinkSync(`/proc/${bigHaproxy.pid}/exe`),
      );
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
  report(results, memory, args);
}

/**
 * The minimal Deno forwarder of `kind` on `port`, to the echo backend on `backend`; with
 * `ffi`, the one whose I/O is libc's through FFI.
 */
function ceilingForwarder(
  kind: "tcp" | "udp",
  port: number,
  backend: number,
  io: "deno" | "ffi" = "deno",
): Child {
  return new Child(`${io === "ffi" ? "ffi" : "ceiling"}-${kind}`, [
    "run",
    io === "ffi" ? "--allow-ffi" : "--allow-net",
    `${ROOT}tests/bench/${io === "ffi" ? "ffi" : "l4"}_forwarders.ts`,
    kind,
    "--listen",
    `${HOST}:${port}`,
    "--backend",
    `${HOST}:${backend}`,
  ]);
}

/** Whether a datagram to `port` comes back within 200 ms (undefined if not, for waitFor). */
async function udpAnswers(port: number): Promise<true | undefined> {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: HOST, port: 0 });
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await sock.send(new Uint8Array([1]), { transport: "udp", hostname: HOST, port });
    const got = await Promise.race([
      sock.receive().then(() => true as const),
      new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), 200)),
    ]);
    return got;
  } finally {
    clearTimeout(timer);
    sock.close();
  }
}

function ratio(a: number | undefined | null, b: number | undefined | null): number | null {
  if (a === undefined || a === null || b === undefined || b === null || !(b > 0)) return null;
  return Math.round((a / b) * 1000) / 1000;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** The measures of one case and target, merged into one row of medians when there are rounds. */
function mergeRounds(ms: Measure[]): Measure {
  if (ms.length === 1) return ms[0]!;
  const med = (f: (m: Measure) => number | null | undefined) => {
    const xs = ms.map(f).filter((x): x is number => typeof x === "number" && !Number.isNaN(x));
    return xs.length > 0 ? median(xs) : null;
  };
  return {
    ...ms[0]!,
    rate: med((m) => m.rate) ?? NaN,
    p50Ms: med((m) => m.p50Ms),
    p99Ms: med((m) => m.p99Ms),
    errors: ms.reduce((n, m) => n + m.errors, 0),
    cpuUs: med((m) => m.cpuUs),
    rounds: ms.map((m) => m.rate),
  };
}

/** A ratio over rounds: its median and range. */
interface Spread {
  median: number;
  min: number;
  max: number;
}

/**
 * Per case, each round's ratio of `a`'s figure to `b`'s (both measured in that round): median
 * and range, or null without rounds (or without the figure).
 */
function roundRatios(
  all: Measure[],
  c: string,
  [a, b]: readonly [Measure["target"], Measure["target"]],
  figure: (m: Measure) => number | null | undefined,
): Spread | null {
  const of = (t: string) => all.filter((r) => r.case === c && r.target === t).map(figure);
  const [xs, ys] = [of(a), of(b)];
  if (xs.length < 2 || xs.length !== ys.length) return null;
  const rs = xs.map((x, i) => (x ?? NaN) / (ys[i] ?? NaN));
  if (rs.some((r) => !Number.isFinite(r))) return null;
  return { median: median(rs), min: Math.min(...rs), max: Math.max(...rs) };
}

function report(all: Measure[], memory: Record<string, number>, args: Args): void {
  const cases = [...new Set(all.map((r) => r.case))];
  const results = cases.flatMap((c) =>
    [...new Set(all.filter((r) => r.case === c).map((r) => r.target))].map((t) =>
      mergeRounds(all.filter((r) => r.case === c && r.target === t))
    )
  );
  const perRound: string[] = [];
  const perRoundJson: Record<string, unknown> = {};
  for (const c of cases) {
    const ref = results.some((r) => r.case === c && r.target === "nginx") ? "nginx" : "haproxy";
    const pairs = [
      ["meshd", ref],
      ["meshd-l4", ref],
      ["meshd", "ceiling"],
      ["ceiling", ref],
      ["ffi", ref],
    ] as const;
    const fmtSpread = (q: Spread | null) =>
      q ? `${q.median.toFixed(3)} (${q.min.toFixed(3)}–${q.max.toFixed(3)})` : "-";
    for (const pair of pairs) {
      const rate = roundRatios(all, c, pair, (m) => m.rate);
      if (!rate) continue;
      const cpu = roundRatios(all, c, pair, (m) => m.cpuUs);
      perRoundJson[`${c} ${pair[0]}/${pair[1]}`] = { rate, cpuPerUnit: cpu };
      perRound.push(
        `${c.padEnd(15)} ${`${pair[0]} / ${pair[1]}`.padEnd(18)} rate ${
          fmtSpread(rate).padEnd(22)
        }  CPU per unit ${fmtSpread(cpu)}`,
      );
    }
  }
  const rows: Record<string, unknown>[] = [];
  const fmt = (n: number | null | undefined, d = 2) =>
    n === null || n === undefined || Number.isNaN(n) ? "-" : n.toFixed(d);
  const lines = [
    `meshd data plane benchmark: ${args.seconds}s per load, loopback, ${navigator.hardwareConcurrency} CPUs`,
    "",
    `${
      args.rounds > 1 ? `medians of ${args.rounds} interleaved rounds\n\n` : ""
    }case            target         rate        unit    p50 ms   p99 ms  errors    vs ref  vs direct` +
    "   CPU µs/unit  CPU vs ref",
  ];
  for (const c of cases) {
    const of = (t: string) => results.find((r) => r.case === c && r.target === t);
    const direct = of("direct");
    const ref = of("haproxy") ?? of("nginx");
    for (const r of results.filter((x) => x.case === c)) {
      const vsReference = ratio(r.rate, ref?.rate);
      const vsDirect = ratio(r.rate, direct?.rate);
      const cpuVsReference = ratio(r.cpuUs, ref?.cpuUs);
      const vsCeiling = ratio(r.rate, of("ceiling")?.rate);
      rows.push({
        ...r,
        reference: ref?.target ?? null,
        vsReference,
        vsDirect,
        cpuVsReference,
        ...(vsCeiling === null ? {} : { vsCeiling }),
      });
      lines.push(
        `${c.padEnd(15)} ${r.target.padEnd(8)} ${fmt(r.rate, 1).padStart(10)}  ${
          r.unit.padEnd(6)
        }` +
          ` ${fmt(r.p50Ms).padStart(8)} ${fmt(r.p99Ms).padStart(8)} ${
            String(r.errors).padStart(7)
          }` +
          `  ${fmt(vsReference, 3).padStart(8)} ${fmt(vsDirect, 3).padStart(10)}` +
          ` ${fmt(r.cpuUs, 1).padStart(13)} ${fmt(cpuVsReference, 3).padStart(11)}`,
      );
    }
  }
  if (perRound.length > 0) {
    lines.push(
      "",
      `each round's ratios, median (min–max) of ${args.rounds} rounds:`,
      ...perRound,
    );
  }
  const mem = {
    ...memory,
    rssGrowthRatio: ratio(memory.meshdRssMiB1000, memory.meshdRssMiB10),
    rssVsHaproxy1000: ratio(memory.meshdRssMiB1000, memory.haproxyRssMiB1000),
  };
  if (memory.meshdRssMiB10 !== undefined) {
    lines.push(
      "",
      "config size                       meshd RSS MiB  (JS heap used)  HAProxy RSS MiB  meshd/HAProxy",
      `10 services                        ${fmt(memory.meshdRssMiB10, 1).padStart(12)}  ${
        `(${fmt(memory.meshdHeapUsedMiB10, 1)})`.padStart(14)
      }`,
      `1,000 services, 10,000 endpoints   ${fmt(memory.meshdRssMiB1000, 1).padStart(12)}  ${
        `(${fmt(memory.meshdHeapUsedMiB1000, 1)})`.padStart(14)
      }  ${fmt(memory.haproxyRssMiB1000, 1).padStart(15)}  ${
        fmt(mem.rssVsHaproxy1000, 3).padStart(13)
      }`,
      "",
      "RSS at 1,000 services by mapping, MiB   program file  shared libs  brk (malloc)  " +
        "other anonymous",
      ...(["meshd", "haproxy"] as const).map((t) =>
        `${t.padEnd(39)} ${fmt(memory[`${t}MiB1000Program`], 1).padStart(12)}  ${
          fmt(memory[`${t}MiB1000Libraries`], 1).padStart(11)
        }  ${fmt(memory[`${t}MiB1000Brk`], 1).padStart(12)}  ${
          fmt(memory[`${t}MiB1000Anonymous`], 1).padStart(15)
        }`
      ),
      `meshd's other anonymous holds its V8 heap (${
        fmt(memory.meshdHeapTotalMiB1000, 1)
      } MiB committed), V8 code, other threads' malloc arenas and stacks`,
      `meshd's program file pages by section (tests/bench/program_pages.ts), MiB: code ${
        fmt(memory.meshdProgramMiB1000Code, 1)
      }, V8 snapshots ${fmt(memory.meshdProgramMiB1000Snapshots, 1)}, ICU data ${
        fmt(memory.meshdProgramMiB1000Icu, 1)
      }, relocations ${fmt(memory.meshdProgramMiB1000Relocations, 1)}, other read-only ${
        fmt(memory.meshdProgramMiB1000OtherReadOnly, 1)
      }`,
      "",
      `apply 1,000 services: ${fmt(memory.meshdCompileApplyMs, 1)} ms compile+switch in meshd, ` +
        `${fmt(memory.meshdFileToLiveMs, 0)} ms from file write to live routes ` +
        `(incl. read, YAML parse, 100 ms debounce); HAProxy start with the same config ` +
        `${fmt(memory.haproxyStartMs1000, 0)} ms`,
    );
  }
  lines.push(
    "",
    "vs ref: meshd's rate over HAProxy's (nginx's for UDP, which HAProxy cannot proxy); " +
      "HAProxy and nginx run one thread, as meshd's proxy does, except in the -Nw cases: " +
      "meshd --workers N against HAProxy nbthread N (wrk -t2 -c64, tcp-rr 32 connections). " +
      "CPU µs/unit: the proxy " +
      "process's user and system time per request (per MiB for bulk), from /proc/PID/stat; " +
      "CPU vs ref: meshd's over the reference's (lower is better). ceiling: a minimal Deno " +
      "forwarder (tests/bench/l4_forwarders.ts) with none of meshd's work, the floor of a " +
      "Deno proxy; meshd's rate over its is in the JSON as vsCeiling. ffi: the same forwarder " +
      "with libc's epoll and sockets through FFI and no promise on the path " +
      "(tests/bench/ffi_forwarders.ts), what the same job costs outside Deno's I/O layer. " +
      "meshd-l4: meshd with --l4-worker, its TCP and UDP ports served on that loop in a " +
      "worker of their own.",
  );
  console.log(lines.join("\n"));
  Deno.mkdirSync(args.out.replace(/\/[^/]+$/, ""), { recursive: true });
  Deno.writeTextFileSync(
    args.out,
    JSON.stringify(
      {
        date: new Date().toISOString(),
        secondsPerLoad: args.seconds,
        ...(args.rounds > 1 ? { rounds: args.rounds, roundRatios: perRoundJson } : {}),
        ...(args.v8Flags ? { meshdV8Flags: args.v8Flags } : {}),
        meshdEnv: { ...MESHD_ENV, ...BENCH_MESHD_ENV, ...args.meshdEnv },
        cpus: navigator.hardwareConcurrency,
        results: rows,
        memory: mem,
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
