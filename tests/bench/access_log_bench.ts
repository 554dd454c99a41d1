/**
 * What the access log costs `meshd run` (file provider, one proxy isolate): HTTP/1.1 requests
 * per second through meshd with `--access-log off` (the reference), `json` with stdout on
 * /dev/null, and `json` with a stdout pipe nobody reads (lines are dropped and counted). The
 * cases take turns in each round, so a busy machine slows them alike. Not a test: it prints
 * each case's median req/s, its spread over the rounds, and the ratio to `off`.
 *
 *   deno run --allow-all tests/bench/access_log_bench.ts [--rounds 3] [--seconds 5] [--host 127.x.y.z]
 *
 * Needs `wrk` (Debian's package).
 *
 * @module
 */
import { meshdArgv } from "../testenv/meshd.ts";
import { endpointSlice, pod, service, yamlDocs } from "../testenv/objects.ts";
import { freePort, waitFor } from "../testenv/process.ts";

function arg(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i >= 0 && Deno.args[i + 1] ? Deno.args[i + 1]! : fallback;
}

const rounds = Number(arg("--rounds", "3"));
const seconds = Number(arg("--seconds", "5"));
const host = arg("--host", "127.0.67.30");
if (!host.startsWith("127.")) {
  console.error("--host must be a loopback address");
  Deno.exit(2);
}

interface Case {
  name: string;
  args: string[];
  stdout: "null" | "piped";
}

const CASES: Case[] = [
  { name: "off", args: ["--access-log", "off"], stdout: "null" },
  { name: "json, stdout /dev/null", args: ["--access-log", "json"], stdout: "null" },
  { name: "json, stdout unread pipe", args: ["--access-log", "json"], stdout: "piped" },
];

/** One load of `seconds` through a fresh meshd; its req/s and the lines it dropped. */
async function measure(c: Case, dir: string): Promise<{ rps: number; dropped: number }> {
  const ports = { http: freePort(), api: freePort(), tcp: freePort(), udp: freePort() };
  const proc = new Deno.Command(Deno.execPath(), {
    args: meshdArgv([
      "--config-dir",
      dir,
      "--http-port",
      String(ports.http),
      "--api-port",
      String(ports.api),
      "--tcp-ports",
      `${ports.tcp}-${ports.tcp}`,
      "--udp-ports",
      `${ports.udp}-${ports.udp}`,
      "--log-level",
      "warn",
      ...c.args,
    ]),
    stdin: "null",
    stdout: c.stdout,
    stderr: "null",
  }).spawn();
  try {
    await waitFor("meshd to be ready", async () => {
      const r = await fetch(`http://127.0.0.1:${ports.api}/readyz`).catch(() => null);
      await r?.body?.cancel();
      return r?.status === 200 ? true : undefined;
    }, 30_000);
    const wrk = await new Deno.Command("wrk", {
      args: [
        "-t1",
        "-c16",
        `-d${seconds}s`,
        "-H",
        "Host: web.bench.mesh",
        `http://127.0.0.1:${ports.http}/some/path`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(wrk.stdout);
    const rps = Number(/^Requests\/sec:\s+([\d.]+)/m.exec(out)?.[1] ?? NaN);
    if (!(rps > 0) || /Non-2xx/.test(out)) throw new Error(`wrk failed:\n${out}`);
    const m = await (await fetch(`http://127.0.0.1:${ports.api}/metrics`)).text();
    const dropped = Number(/^meshd_access_log_dropped_total (\d+)$/m.exec(m)?.[1] ?? NaN);
    return { rps, dropped };
  } finally {
    proc.kill("SIGTERM");
    if (c.stdout === "piped") await proc.stdout.cancel();
    await proc.status;
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const dir = await Deno.makeTempDir({ prefix: "meshd-accesslog-bench-" });
const bport = freePort(host);
const backend = Deno.serve(
  { hostname: host, port: bport, onListen: () => {} },
  () => new Response("ok\n"),
);
try {
  await Deno.writeTextFile(
    `${dir}/mesh.yaml`,
    yamlDocs(
      pod("bench", "web-0", host, "web"),
      service("bench", "web"),
      endpointSlice("bench", "web", "web-a", bport, [{ ip: host, pod: "web-0" }]),
    ),
  );
  const results = new Map<string, { rps: number[]; dropped: number[] }>(
    CASES.map((c) => [c.name, { rps: [], dropped: [] }]),
  );
  for (let r = 0; r < rounds; r++) {
    for (const c of CASES) {
      const got = await measure(c, dir);
      results.get(c.name)!.rps.push(got.rps);
      results.get(c.name)!.dropped.push(got.dropped);
    }
  }
  const ref = median(results.get("off")!.rps);
  console.log(`${rounds} rounds of ${seconds} s, wrk -t1 -c16, one proxy isolate`);
  console.log("case                         median req/s  min..max           vs off  dropped");
  for (const [name, r] of results) {
    const m = median(r.rps);
    console.log(
      `${name.padEnd(28)} ${m.toFixed(0).padStart(12)}  ${
        `${Math.min(...r.rps).toFixed(0)}..${Math.max(...r.rps).toFixed(0)}`.padEnd(17)
      } ${(m / ref).toFixed(2).padStart(6)}  ${median(r.dropped)}`,
    );
  }
} finally {
  await backend.shutdown();
  await Deno.remove(dir, { recursive: true });
}
