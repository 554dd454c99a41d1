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
