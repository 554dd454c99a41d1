/**
 * Where the ceiling of HTTP/1.1 forwarding lies in Deno: the same wrk loads as
 * `dataplane_bench.ts`'s http-keepalive (32 connections) and http-close (16, `Connection:
 * close`) cases, in interleaved rounds, through HAProxy (nbthread 1), through the minimal
 * forwarder of `h1_forwarder.ts` and through meshd. Prints each one's req/s, p99 and CPU µs per
 * request (the process's utime + stime from /proc/PID/stat) with the ratios to HAProxy's in
 * the same round. The forwarder opens a backend connection per client connection, so it is
 * the ceiling of the keep-alive case only; for the close case, `h1_close_forwarders.ts` pools
 * backend connections as meshd and HAProxy do, on Deno's I/O (`deno-pool`) and on meshd's own
 * event loop (`ffi-pool`).
 *
 *   deno run --allow-all tests/bench/h1_ceiling_bench.ts [--seconds N] [--rounds R] [--loadtools BINARY] [--close-only]
 *
 * Needs haproxy, wrk, and Go 1.24 or later for the backend (tests/bench/loadtools) unless
 * `--loadtools` names one built already. `MESHD_BENCH_HOST` moves it to another loopback address.
 *
 * @module
 */
import { Child, freePort, waitFor, waitForPort } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const HOST = Deno.env.get("MESHD_BENCH_HOST") ?? "127.0.61.1";

const args = { seconds: 4, rounds: 3, loadtools: "", closeOnly: false };
for (let i = 0; i < Deno.args.length; i += 2) {
  const [k, v] = [Deno.args[i], Deno.args[i + 1]];
  if (k === "--close-only") args.closeOnly = true, i--;
  else if (k === "--seconds" && Number(v) >= 1 && Number(v) <= 60) args.seconds = Number(v);
  else if (k === "--rounds" && Number(v) >= 1 && Number(v) <= 20) args.rounds = Number(v);
  else if (k === "--loadtools" && v) args.loadtools = v;
  else {
    console.error(
      "usage: h1_ceiling_bench.ts [--seconds N (1-60, default 4)] [--rounds R (1-20, default 3)] " +
        "[--loadtools BINARY] [--close-only]",
    );
    Deno.exit(2);
  }
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

async function output(command: string, argv: string[], cwd?: string): Promise<string> {
  const r = await new Deno.Command(command, { args: argv, cwd, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(r.stdout);
  if (!r.success) {
    throw new Error(`${command} failed: ${new TextDecoder().decode(r.stderr).slice(0, 500)}`);
  }
  return text;
}

/** wrk's rate, p99 in ms and request count for one load. */
async function wrk(
  port: number,
  close: boolean,
): Promise<{ rate: number; p99: number; n: number }> {
  const out = await output("wrk", [
    "-t1",
    `-c${close ? 16 : 32}`,
    `-d${args.seconds}s`,
    "--latency",
    "-H",
    "Host: web.default.mesh",
    ...(close ? ["-H", "Connection: close"] : []),
    `http://${HOST}:${port}/`,
  ]);
  const ms = (s: string) =>
    s.endsWith("us")
      ? parseFloat(s) / 1000
      : s.endsWith("ms")
      ? parseFloat(s)
      : parseFloat(s) * 1000;
  return {
    rate: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]),
    p99: ms(/^\s+99%\s+(\S+)/m.exec(out)?.[1] ?? "NaN"),
    n: Number(/(\d+) requests in/.exec(out)?.[1]),
  };
}

const work = await Deno.makeTempDir({ prefix: "meshd-h1-ceiling-" });
const children: Child[] = [];
try {
  let loadtools = args.loadtools;
  if (!loadtools) {
    loadtools = `${work}/loadtools`;
    await output("go", ["build", "-o", loadtools, "."], `${ROOT}tests/bench/loadtools`);
  }
  const ports = {
    backend: freePort(),
    haproxy: freePort(),
    forwarder: freePort(),
    denoPool: freePort(),
    ffiPool: freePort(),
    ffiPromisePool: freePort(),
  };
  const mesh = { http: freePort(), api: freePort(), tcp: freePort() };
  const backend = new Child("http-backend", [
    "http-backend",
    "-listen",
    `${HOST}:${ports.backend}`,
    "-name",
    "b",
  ], { command: loadtools });
  children.push(backend);
  await waitForPort(HOST, ports.backend);
  await Deno.writeTextFile(
    `${work}/haproxy.cfg`,
    `global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 5s\n` +
      `  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n` +
      `frontend f\n  bind ${HOST}:${ports.haproxy}\n  default_backend b\n` +
      `backend b\n  http-reuse always\n  server s1 ${HOST}:${ports.backend}\n`,
  );
  await Deno.mkdir(`${work}/mesh`);
  await Deno.writeTextFile(
    `${work}/mesh/mesh.yaml`,
    `apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: default }\n` +
      `spec: { ports: [{ name: p, port: 80, protocol: TCP }] }\n---\n` +
      `apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n` +
      `metadata: { name: web-a, namespace: default, labels: { kubernetes.io/service-name: web } }\n` +
      `addressType: IPv4\nports: [{ name: p, port: ${ports.backend}, protocol: TCP }]\n` +
      `endpoints:\n  - addresses: ["${HOST}"]\n    conditions: { ready: true }\n`,
  );
  const closeForwarder = (mode: "deno" | "ffi" | "ffi-promise", port: number) =>
    new Child(`${mode}-pool`, [
      "run",
      "--allow-net",
      "--allow-ffi",
      `${ROOT}tests/bench/h1_close_forwarders.ts`,
      mode,
      HOST,
      String(port),
      HOST,
      String(ports.backend),
    ]);
  const targets = {
    haproxy: new Child("haproxy", ["-db", "-f", `${work}/haproxy.cfg`], { command: "haproxy" }),
    forwarder: new Child("forwarder", [
      "run",
      "--allow-net",
      `${ROOT}tests/bench/h1_forwarder.ts`,
      HOST,
      String(ports.forwarder),
      HOST,
      String(ports.backend),
    ]),
    "deno-pool": closeForwarder("deno", ports.denoPool),
    "ffi-pool": closeForwarder("ffi", ports.ffiPool),
    "ffi-promise-pool": closeForwarder("ffi-promise", ports.ffiPromisePool),
    meshd: spawnMeshd([
      "--config-dir",
      `${work}/mesh`,
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
      `${mesh.tcp}-${mesh.tcp}`,
    ]),
  };
  children.push(...Object.values(targets));
  const portOf = {
    haproxy: ports.haproxy,
    forwarder: ports.forwarder,
    "deno-pool": ports.denoPool,
    "ffi-pool": ports.ffiPool,
    "ffi-promise-pool": ports.ffiPromisePool,
    meshd: mesh.http,
  };
  for (const port of Object.values(ports)) {
    await waitForPort(HOST, port);
  }
  await waitFor("meshd ready", async () => {
    const r = await fetch(`http://${HOST}:${mesh.api}/readyz`).catch(() => null);
    await r?.body?.cancel();
    return r?.ok ? true : undefined;
  }, 30_000);
  console.log(
    "case       round  target          req/s   p99 ms  CPU µs/req   rate vs HAProxy  CPU vs HAProxy",
  );
  for (let round = 1; round <= args.rounds; round++) {
    for (const close of args.closeOnly ? [true] : [false, true]) {
      let ref: { rate: number; cpu: number } | null = null;
      for (const [name, child] of Object.entries(targets)) {
        // The pooled forwarders close every client connection: the close case only; the
        // forwarder that connects per client connection is no ceiling for that case.
        if (close ? name === "forwarder" : name.endsWith("-pool")) continue;
        const before = cpuTicks(child.pid);
        const m = await wrk(portOf[name as keyof typeof portOf], close);
        const cpu = (cpuTicks(child.pid) - before) / CLK_TCK * 1e6 / m.n;
        ref ??= { rate: m.rate, cpu };
        console.log(
          `${(close ? "http-close" : "keep-alive").padEnd(11)}${String(round).padStart(5)}  ` +
            `${name.padEnd(10)}${m.rate.toFixed(0).padStart(11)}${m.p99.toFixed(2).padStart(9)}` +
            `${cpu.toFixed(1).padStart(12)}${(m.rate / ref.rate).toFixed(2).padStart(18)}` +
            `${(cpu / ref.cpu).toFixed(2).padStart(16)}`,
        );
      }
    }
  }
} finally {
  await Promise.all(children.map((c) => c.stop()));
  await Deno.remove(work, { recursive: true });
}
