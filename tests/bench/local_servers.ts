/**
 * What the eBPF benchmarks share: an nginx backend written into a run's directory, `hey`
 * runs read back as numbers, and the median of the rounds.
 *
 * @module
 */
import type { EbpfEnv, EnvProcess } from "../testenv/ebpf_env.ts";

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
  const out = p.lines.join("\n");
  if (!st.success) throw new Error(`hey ${url}: ${p.errLines.join("\n")}`);
  const rps = Number(out.match(/Requests\/sec:\s+([\d.]+)/)?.[1]);
  const p99 = Number(out.match(/99%+ in ([\d.]+) secs/)?.[1]) * 1000;
  const ok = Number(out.match(/\[200\]\s+(\d+) responses/)?.[1] ?? 0);
  if (!rps || !p99) throw new Error(`cannot read hey's summary:\n${out}`);
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
): Promise<EnvProcess> {
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
