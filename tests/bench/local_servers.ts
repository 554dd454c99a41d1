/**
 * What the eBPF benchmarks share: their flags, the mesh they load, an nginx backend and meshd
 * started in the run's namespace and waited for, `hey` runs read back as numbers, the median
 * of the rounds, and where the result goes.
 *
 * @module
 */
import type { EbpfEnv } from "../testenv/ebpf_env.ts";
import { type Child, waitFor } from "../testenv/process.ts";
import { spawnMeshd as spawnTheMeshd } from "../testenv/meshd.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const SOCK = `${ROOT}tests/ebpf/sock_tool.ts`;

/** A progress line on stderr. */
export const say = (s: string): void => console.error(`[bench] ${s}`);

/** One `hey` run, read from its summary. */
export interface HeyResult {
  /** Requests per second. */
  rps: number;
  /** 99th percentile latency, ms. */
  p99: number;
  /** Requests that did not get a 200. */
  errors: number;
}

/**
 * Runs `hey -n n -c c [extra...] url` in the env's namespace, inside its scratch cgroup.
 * `extra` takes hey's own flags, such as `-disable-keepalive` or `-host NAME`.
 */
export async function hey(
  env: EbpfEnv,
  url: string,
  n: number,
  c: number,
  extra: string[] = [],
): Promise<HeyResult> {
  const p = env.spawn("hey", ["-n", String(n), "-c", String(c), ...extra, url], {
    inCgroup: true,
  });
  await p.closeStdin();
  const st = await p.wait(120_000);
  const out = p.stdout.join("\n");
  if (!st.success) throw new Error(`hey ${url}: ${p.stderr.join("\n")}`);
  const rps = Number(out.match(/Requests\/sec:\s+([\d.]+)/)?.[1]);
  const p99 = Number(out.match(/99%+ in ([\d.]+) secs/)?.[1]) * 1000;
  const ok = Number(out.match(/\[200\]\s+(\d+) responses/)?.[1] ?? 0);
  if (!rps || !Number.isFinite(p99)) throw new Error(`cannot read hey's summary:\n${out}`);
  // hey gives each of its c workers n/c requests, rounded down.
  return { rps, p99, errors: Math.floor(n / c) * c - ok };
}

/** The middle value (the upper one of an even count). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/**
 * Writes an nginx config under `<env.dir>/nginx` that listens on `listen` and answers `/`
 * with `ok`, and any file under `<env.dir>/nginx/www` by its name; starts it in the
 * namespace (in the scratch cgroup when `inCgroup`).
 */
export async function startNginx(
  env: EbpfEnv,
  listen: string,
  o: { inCgroup?: boolean } = {},
): Promise<Child> {
  const dir = `${env.dir}/nginx`;
  await Deno.mkdir(`${dir}/www`, { recursive: true });
  await Deno.writeTextFile(
    `${dir}/nginx.conf`,
    `user root;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile off;
  keepalive_requests 1000000;
  client_body_temp_path ${dir};
  proxy_temp_path ${dir};
  fastcgi_temp_path ${dir};
  uwsgi_temp_path ${dir};
  scgi_temp_path ${dir};
  server {
    listen ${listen};
    root ${dir}/www;
    location = / { return 200 "ok\\n"; }
  }
}
`,
  );
  return env.spawn("nginx", ["-c", `${dir}/nginx.conf`, "-g", "daemon off;"], o);
}

/** The flags of the eBPF benchmarks. */
export interface BenchArgs {
  requests: number;
  concurrency: number;
  rounds: number;
  out: string;
}

/** Reads `--requests N --concurrency C --rounds R --out FILE`; exits 2 with a usage line. */
export function parseBenchArgs(
  argv: string[],
  script: string,
  defaults: { requests: number; what: string },
): BenchArgs {
  const a = { requests: defaults.requests, concurrency: 8, rounds: 3, out: "" };
  for (let i = 0; i < argv.length; i++) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (k === "--requests" && v) a.requests = Number(v), i++;
    else if (k === "--concurrency" && v) a.concurrency = Number(v), i++;
    else if (k === "--rounds" && v) a.rounds = Number(v), i++;
    else if (k === "--out" && v) a.out = v, i++;
    else {
      console.error(
        `usage: ${script} [--requests N (${defaults.what}, default ${defaults.requests})] ` +
          "[--concurrency C (default 8)] [--rounds R (default 3)] [--out FILE]",
      );
      Deno.exit(2);
    }
  }
  // hey prints no p99 for fewer than 100 answers; the 256 KiB cases take half of N.
  if (!(a.requests >= 1000 && a.requests <= 200_000)) throw new Error("--requests: 1000 to 200000");
  if (!(a.concurrency >= 1 && a.concurrency <= 64)) throw new Error("--concurrency: 1 to 64");
  if (!(a.rounds >= 1 && a.rounds <= 10)) throw new Error("--rounds: 1 to 10");
  return a;
}

/**
 * A Service of the file provider with one ready endpoint: `type` is its
 * `meshd.io/traffic-type`, `port` its port and `target` the endpoint's port.
 */
export function serviceYaml(
  name: string,
  o: { clusterIP: string; type: "tcp" | "http"; port: number; endpoint: string; target: number },
): string {
  return `
apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: default, annotations: { meshd.io/traffic-type: ${o.type} } }
spec:
  clusterIP: ${o.clusterIP}
  ports: [{ name: web, port: ${o.port}, targetPort: ${o.target} }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: ${name}-1, namespace: default, labels: { kubernetes.io/service-name: ${name} } }
addressType: IPv4
ports: [{ name: web, port: ${o.target}, protocol: TCP }]
endpoints:
  - { addresses: ["${o.endpoint}"], conditions: { ready: true } }
`;
}

/** The plain TCP service both benchmarks load: 10.96.0.10:8080, backed by nginx. */
export const WEB_SERVICE = serviceYaml("web", {
  clusterIP: "10.96.0.10",
  type: "tcp",
  port: 8080,
  endpoint: "127.0.1.1",
  target: 8080,
});

/**
 * Starts `meshd run` from this checkout in the env's namespace, on the file provider reading
 * `configDir`, its proxy on 127.0.0.1, with `flags` added.
 */
export function spawnMeshd(
  env: EbpfEnv,
  configDir: string,
  flags: string[],
  o: { inCgroup?: boolean } = {},
): Child {
  return spawnTheMeshd([
    `--config-dir=${configDir}`,
    "--proxy-address=127.0.0.1",
    "--log-level=warn",
    ...flags,
  ], { deno: ["--allow-all"], via: env, inCgroup: o.inCgroup });
}

/** Waits (30 s at most) until `GET /` to host:port with that Host header answers 200. */
export async function waitAnswering(
  env: EbpfEnv,
  what: string,
  host: string,
  port: number,
  hostHeader = "x",
): Promise<void> {
  await waitFor(
    what,
    async () => {
      const r = await env.deno<{ status: number }>(SOCK, ["http", host, String(port), hostHeader])
        .catch(() => undefined);
      return r?.status === 200 ? true : undefined;
    },
    30_000,
    200,
  );
}

/** Writes the result as JSON to `out`, or to `bench-results/<name>`; says where. */
export async function writeResult(out: string, name: string, result: unknown): Promise<void> {
  const file = out || `${ROOT}bench-results/${name}`;
  await Deno.mkdir(new URL(".", `file://${file}`).pathname, { recursive: true });
  await Deno.writeTextFile(file, JSON.stringify(result, null, 2) + "\n");
  console.log(`wrote ${file}`);
}

/** Clock ticks a second, the unit of /proc/PID/stat's times (USER_HZ; 100 on Linux). */
export const CLK_TCK: number = Number(
  new TextDecoder().decode(new Deno.Command("getconf", { args: ["CLK_TCK"] }).outputSync().stdout)
    .trim(),
) || 100;

/** User plus system CPU time of process `pid` so far, in µs (clock-tick resolution). */
export function processCpuUs(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  // The fields after the command name, which is in parentheses and may hold spaces.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / CLK_TCK * 1e6;
}

/**
 * CPU time of every process that has run in cgroup v2 directory `cgroup` so far, in µs: its
 * `cpu.stat` `usage_usec`, which the cgroup core keeps whether or not the cpu controller is on.
 */
export function cgroupCpuUs(cgroup: string): number {
  const text = Deno.readTextFileSync(`${cgroup}/cpu.stat`);
  const m = /^usage_usec (\d+)$/m.exec(text);
  if (!m) throw new Error(`Cannot read usage_usec from "${cgroup}/cpu.stat"`);
  return Number(m[1]);
}

/**
 * Builds the Go load tools (`tests/bench/loadtools`) into `out` with the `go` in PATH; throws
 * with Go's output when that fails.
 */
export async function buildLoadtools(out: string): Promise<string> {
  let r: Deno.CommandOutput;
  try {
    r = await new Deno.Command("go", {
      args: ["build", "-o", out, "."],
      cwd: `${ROOT}tests/bench/loadtools`,
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    throw new Error("Cannot build tests/bench/loadtools: no go in PATH, expected Go 1.24 or later");
  }
  if (!r.success) {
    throw new Error(`Cannot build tests/bench/loadtools: ${new TextDecoder().decode(r.stderr)}`);
  }
  return out;
}

/** One run of a request/response load of `tests/bench/loadtools`, from its JSON line. */
export interface RrResult {
  /** Exchanges answered. */
  requests: number;
  /** Exchanges a second. */
  rate: number;
  p50Ms: number;
  p99Ms: number;
  /** Failed dials, writes and reads, UDP answers not back within 200 ms, and (udp-unconnected)
   * answers from another address than the one sent to. */
  errors: number;
  firstError?: string;
}

/** The request/response loads of `tests/bench/loadtools` that {@linkcode rrLoad} runs. */
export type RrKind = "tcp-rr" | "udp-rr" | "tcp-conn" | "udp-unconnected";

/**
 * Runs a request/response load of `tests/bench/loadtools` with 64-byte requests against
 * `target` for `ms` milliseconds, in the env's namespace and inside its scratch cgroup, where
 * the hooks see its sockets: `tcp-rr` (`conns` connections) or `udp-rr` (`conns` connected
 * sockets), the loads of `dataplane_bench.ts`'s cases of the same names; `tcp-conn` (`conns`
 * workers, each opening a new connection per exchange); `udp-unconnected` (`conns` unconnected
 * sockets, sendto and recvfrom, a reply from another address than `target` an error). Bounded:
 * the tool stops itself, and is killed 30 s past its duration.
 */
export async function rrLoad(
  env: EbpfEnv,
  o: {
    bin: string;
    kind: RrKind;
    target: string;
    conns: number;
    ms: number;
  },
): Promise<RrResult> {
  const tcp = o.kind === "tcp-rr" || o.kind === "tcp-conn";
  const p = env.spawn(o.bin, [
    o.kind === "udp-unconnected" ? "udp-rr" : o.kind,
    "-target",
    o.target,
    tcp ? "-conns" : "-clients",
    String(o.conns),
    "-size",
    "64",
    "-duration",
    `${o.ms}ms`,
    ...(o.kind === "udp-unconnected" ? ["-unconnected"] : []),
  ], { inCgroup: true });
  await p.closeStdin();
  const st = await p.wait(o.ms + 30_000);
  if (!st.success) throw new Error(`${o.kind} ${o.target}: ${p.stderr.join(" ")}`);
  const j = p.last<Record<string, number | string | undefined>>();
  return {
    requests: Number(j.requests ?? 0),
    rate: Number(j.perSecond ?? 0),
    p50Ms: Number(j.p50Ms ?? NaN),
    p99Ms: Number(j.p99Ms ?? NaN),
    errors: Number(j.errors ?? 0),
    ...(j.firstError ? { firstError: String(j.firstError) } : {}),
  };
}

/**
 * The config of nginx's stream module as a one-process UDP proxy (no master, one worker) from
 * `listen` to `backend`, with its pid and error files in `dir`.
 */
export function nginxUdpConf(dir: string, listen: string, backend: string): string {
  return `load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/nginx.err warn;
events { worker_connections 4096; }
stream {
  server {
    listen ${listen} udp;
    proxy_pass ${backend};
    proxy_timeout 60s;
  }
}
`;
}

/**
 * Starts nginx's stream module as a one-process UDP proxy (no master, one worker, as
 * `dataplane_bench.ts` runs it) from `listen` to `backend`, in the env's namespace, under
 * `<env.dir>/nginx-udp`; resolves once its pid file is written, throws on an `[emerg]`.
 */
export async function startNginxUdp(
  env: EbpfEnv,
  listen: string,
  backend: string,
): Promise<Child> {
  const dir = `${env.dir}/nginx-udp`;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/nginx.conf`, nginxUdpConf(dir, listen, backend));
  const p = env.spawn("nginx", ["-e", `${dir}/nginx.err`, "-p", dir, "-c", `${dir}/nginx.conf`]);
  await waitFor("nginx (UDP) started", async () => {
    const err = await Deno.readTextFile(`${dir}/nginx.err`).catch(() => "");
    if (/\[emerg\]/.test(err)) throw new Error(`nginx failed: ${err}`);
    return await Deno.stat(`${dir}/nginx.pid`).then(() => true, () => undefined);
  }, 15_000);
  return p;
}
