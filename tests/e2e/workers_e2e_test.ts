/**
 * `meshd run --workers 2`: two proxy isolates on the same ports. HTTP, TCP and UDP are served;
 * a config change reaches every worker before the API reports its version (many new
 * connections, which the kernel spreads over both workers' sockets, all see the new route);
 * `/metrics` shows each series once, summed over the workers.
 */
import assert from "node:assert/strict";
import { Child, freePort, waitFor, waitForPort } from "../testenv/process.ts";
import { FILE_PERMISSIONS, spawnMeshd } from "../testenv/meshd.ts";
import { countSockets } from "../../src/node/successor.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const WHOAMI = `${ROOT}examples/quickstart/whoami.ts`;
const ECHO = `${ROOT}examples/quickstart/echo.ts`;
// This test's own addresses (127.0.63.0/24).
const V1_IP = "127.0.63.1";
const V2_IP = "127.0.63.2";
const ECHO_IP = "127.0.63.3";
const MESHD_IP = "127.0.63.10";

const enc = new TextEncoder();
const dec = new TextDecoder();

function mesh(webIp: string, ports: { web: number; echo: number }): string {
  return `apiVersion: v1
kind: Service
metadata: { name: web, namespace: wk }
spec: { ports: [{ name: web, port: 80 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, namespace: wk, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ name: web, port: ${ports.web}, protocol: TCP }]
endpoints: [{ addresses: ["${webIp}"], conditions: { ready: true } }]
---
apiVersion: v1
kind: Service
metadata: { name: echo, namespace: wk, annotations: { meshd.io/traffic-type: tcp } }
spec: { ports: [{ name: tcp, port: 7000 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: echo-1, namespace: wk, labels: { kubernetes.io/service-name: echo } }
addressType: IPv4
ports: [{ name: tcp, port: ${ports.echo}, protocol: TCP }]
endpoints: [{ addresses: ["${ECHO_IP}"], conditions: { ready: true } }]
---
apiVersion: v1
kind: Service
metadata: { name: echo-udp, namespace: wk, annotations: { meshd.io/traffic-type: udp } }
spec: { ports: [{ name: udp, port: 7001, protocol: UDP }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: echo-udp-1, namespace: wk, labels: { kubernetes.io/service-name: echo-udp } }
addressType: IPv4
ports: [{ name: udp, port: ${ports.echo}, protocol: UDP }]
endpoints: [{ addresses: ["${ECHO_IP}"], conditions: { ready: true } }]
`;
}

/** One `GET /` on a new connection; the whoami body's `name:` line, or `status N`. */
async function whoAnswers(port: number): Promise<string> {
  const c = await Deno.connect({ hostname: MESHD_IP, port });
  try {
    await c.write(enc.encode("GET / HTTP/1.1\r\nHost: web.wk.mesh\r\nConnection: close\r\n\r\n"));
    const text = dec.decode(await new Response(c.readable).arrayBuffer());
    const status = /^HTTP\/1\.1 (\d+)/.exec(text)?.[1];
    if (status !== "200") return `status ${status}`;
    return /^name: (\S+)/m.exec(text)?.[1] ?? "no name";
  } catch (e) {
    try {
      c.close();
    } catch { /* closed */ }
    return String(e);
  }
}

/** How many answers each name got, over `n` new connections, some at once. */
async function tally(port: number, n: number): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (let i = 0; i < n; i += 10) {
    const names = await Promise.all(Array.from({ length: 10 }, () => whoAnswers(port)));
    for (const name of names) out[name] = (out[name] ?? 0) + 1;
  }
  return out;
}

async function getJson(api: number, path: string): Promise<Record<string, unknown>> {
  const r = await fetch(`http://127.0.0.1:${api}${path}`);
  return await r.json();
}

/**
 * Serves HTTP, TCP and UDP through `workers` proxy workers (HTTP alone beside an L4 worker
 * with `l4`), a config change reaches every worker, and /metrics sums them.
 */
async function servesEverything(workers: number, l4: boolean): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-workers-" });
  const children: Child[] = [];
  try {
    const ports = { web: freePort(V1_IP), echo: freePort(ECHO_IP) };
    for (const [name, ip] of [["v1", V1_IP], ["v2", V2_IP]]) {
      children.push(
        new Child(name!, [
          "run",
          "--allow-net",
          WHOAMI,
          "--name",
          name!,
          "--listen",
          `${ip}:${ports.web}`,
        ]),
      );
    }
    children.push(
      new Child("echo", [
        "run",
        "--allow-net",
        ECHO,
        "--name",
        "e",
        "--listen",
        `${ECHO_IP}:${ports.echo}`,
        "--udp",
      ]),
    );
    await Deno.writeTextFile(`${dir}/mesh.yaml`, mesh(V1_IP, ports));
    await waitForPort(V1_IP, ports.web);
    await waitForPort(V2_IP, ports.web);
    await waitForPort(ECHO_IP, ports.echo);
    const http = freePort(MESHD_IP);
    const tcp = freePort(MESHD_IP);
    const udp = freePort(MESHD_IP);
    const api = freePort();
    const meshd = spawnMeshd([
      "--config-dir",
      dir,
      "--proxy-address",
      MESHD_IP,
      "--http-port",
      String(http),
      "--api-port",
      String(api),
      "--tcp-ports",
      `${tcp}-${tcp}`,
      "--udp-ports",
      `${udp}-${udp}`,
      "--workers",
      String(workers),
      ...(l4 ? ["--l4-worker"] : []),
      "--log-format",
      "json",
    ], { deno: ["--unstable-net", "--allow-all"] });
    children.push(meshd);
    await waitFor("meshd to be ready", async () => {
      const r = await fetch(`http://127.0.0.1:${api}/readyz`).catch(() => null);
      await r?.body?.cancel();
      return r?.status === 200 ? true : undefined;
    }, 30_000);

    // A listening socket on the HTTP port per HTTP worker; on the TCP port, one per worker, or
    // the L4 worker's alone.
    const sockets = countSockets(await Deno.readTextFile("/proc/net/tcp"), "tcp");
    assert.equal(
      sockets.get(http),
      workers,
      `sockets on the HTTP port:\n${meshd.lines.join("\n")}`,
    );
    assert.equal(sockets.get(tcp), l4 ? 1 : workers, "sockets on the TCP port");

    // HTTP, on many connections.
    assert.deepEqual(await tally(http, 60), { v1: 60 });

    // TCP.
    const c = await Deno.connect({ hostname: MESHD_IP, port: tcp });
    await c.write(enc.encode("ping\n"));
    await c.closeWrite();
    assert.equal(dec.decode(await new Response(c.readable).arrayBuffer()), "echo e\nping\n");

    // UDP.
    const u = Deno.listenDatagram({ transport: "udp", hostname: MESHD_IP, port: 0 });
    try {
      // The listener is bound (meshd is ready): on loopback the datagram is not lost.
      await u.send(enc.encode("hello"), { transport: "udp", hostname: MESHD_IP, port: udp });
      let timer: ReturnType<typeof setTimeout> | undefined;
      const answer = await Promise.race([
        u.receive().then(([d]) => dec.decode(d)),
        new Promise<string>((r) => timer = setTimeout(() => r("no answer within 10 s"), 10_000)),
      ]);
      clearTimeout(timer);
      assert.equal(answer, "e: hello");
    } finally {
      u.close();
    }

    // A config change: once the API reports its version, every worker routes by it.
    const before = (await getJson(api, "/api/status"))["version"] as number;
    await Deno.writeTextFile(`${dir}/mesh.yaml`, mesh(V2_IP, ports));
    await waitFor("the new config version in /api/status", async () => {
      const s = await getJson(api, "/api/status");
      return (s["version"] as number) > before && s["ready"] === true ? true : undefined;
    }, 15_000);
    assert.deepEqual(await tally(http, 60), { v2: 60 });

    // Metrics: one series per service port, the requests of both workers added up.
    const metrics = await (await fetch(`http://127.0.0.1:${api}/metrics`)).text();
    const series = metrics.split("\n").filter((l) =>
      l.startsWith('meshd_requests_total{service="wk/web",port="80",protocol="http"}')
    );
    assert.equal(series.length, 1, metrics);
    assert.equal(series[0]!.split(" ")[1], "120", series[0]!);
    const helps = metrics.split("\n").filter((l) => l.startsWith("# HELP "));
    assert.equal(new Set(helps).size, helps.length, "each family once");
    assert.match(metrics, /^meshd_request_duration_seconds_count\{service="wk\/web",.*\} 120$/m);
    for (const [service, protocol] of [["echo", "tcp"], ["echo-udp", "udp"]]) {
      const l4Series = metrics.split("\n").filter((l) =>
        l.startsWith(`meshd_requests_total{service="wk/${service}",`) &&
        l.includes(`protocol="${protocol}"`)
      );
      assert.equal(l4Series.length, 1, `${service}:\n${metrics}`);
      assert.equal(l4Series[0]!.split(" ")[1], "1", l4Series[0]!);
    }
    // One proxy serves HTTP in the main isolate (no worker); more are workers.
    const running = (workers > 1 ? workers : 0) + (l4 ? 1 : 0);
    assert.match(metrics, new RegExp(`^meshd_proxy_workers ${running}$`, "m"));
    assert.match(metrics, /^meshd_config_version \d+$/m);
    if (l4) {
      assert.ok(
        meshd.lines.some((l) =>
          l.includes('"proxy workers started"') && l.includes('"l4Worker":true')
        ),
        meshd.lines.join("\n"),
      );
    }
  } finally {
    for (const c of children.reverse()) await c.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("meshd run --workers 2 serves HTTP, TCP and UDP, applies each config to both workers and sums their metrics", async () => {
  await servesEverything(2, false);
});

Deno.test("meshd run --l4-worker serves TCP and UDP on its own loop in a worker, HTTP in the main isolate, and sums their metrics", async () => {
  await servesEverything(1, true);
});

Deno.test("meshd run --workers 2 --l4-worker serves HTTP in two workers and TCP and UDP in a third", async () => {
  await servesEverything(2, true);
});

Deno.test("meshd run --workers 2 with its HTTP port taken fails in one line, with no worker's stack trace", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-workers-" });
  // Bound without SO_REUSEPORT, so the workers' reusing sockets cannot join it.
  const taken = Deno.listen({ hostname: MESHD_IP, port: 0 });
  const tcp = freePort(MESHD_IP);
  try {
    const meshd = spawnMeshd([
      "--config-dir",
      dir,
      "--proxy-address",
      MESHD_IP,
      "--http-port",
      String(taken.addr.port),
      "--api-port",
      String(freePort()),
      "--tcp-ports",
      `${tcp}-${tcp}`,
      "--udp-ports",
      `${tcp}-${tcp}`,
      "--workers",
      "2",
    ]);
    const st = await meshd.wait();
    const out = meshd.stderr.join("\n");
    assert.equal(st.code, 1, out);
    assert.match(
      meshd.stderr.at(-1) ?? "",
      new RegExp(`^meshd run: error: cannot listen on ${MESHD_IP}:${taken.addr.port} `),
      out,
    );
    assert.doesNotMatch(out, /Uncaught|^\s+at /m, `a stack trace reached stderr:\n${out}`);
  } finally {
    taken.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("meshd run --l4-worker without FFI permission fails in one line that says so", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-workers-" });
  try {
    const meshd = spawnMeshd([
      "--config-dir",
      dir,
      "--proxy-address",
      MESHD_IP,
      "--http-port",
      String(freePort(MESHD_IP)),
      "--api-port",
      String(freePort()),
      "--l4-worker",
      "--datapath",
      "userspace",
    ], { deno: ["--allow-net", "--allow-read", "--allow-env"] });
    const st = await meshd.wait();
    const out = meshd.stderr.join("\n");
    assert.equal(st.code, 1, out);
    assert.match(
      meshd.stderr.at(-1) ?? "",
      /^meshd run: error: --l4-worker cannot start its event loop: .*--allow-ffi/,
      out,
    );
    assert.doesNotMatch(out, /Uncaught|^\s+at /m, `a stack trace reached stderr:\n${out}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// The --l4-worker=auto tests' own addresses (127.0.68.0/24).
const AUTO_ECHO_IP = "127.0.68.3";
const AUTO_MESHD_IP = "127.0.68.10";

/**
 * `meshd run --l4-worker=auto` with Deno's flags `deno`, a TCP and a UDP service to an echo
 * backend: waits for it to be ready, checks both service ports answer through it, and returns
 * its output lines (stdout and stderr) and stderr alone.
 */
async function autoServes(deno: readonly string[]): Promise<{ lines: string[]; stderr: string }> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-workers-" });
  const children: Child[] = [];
  try {
    const echoPort = freePort(AUTO_ECHO_IP);
    children.push(
      new Child("echo", [
        "run",
        "--allow-net",
        ECHO,
        "--name",
        "e",
        "--listen",
        `${AUTO_ECHO_IP}:${echoPort}`,
        "--udp",
      ]),
    );
    // The same objects as the other tests: only the TCP and UDP services matter here.
    await Deno.writeTextFile(
      `${dir}/mesh.yaml`,
      mesh(AUTO_ECHO_IP, { web: echoPort, echo: echoPort }).replaceAll(ECHO_IP, AUTO_ECHO_IP),
    );
    await waitForPort(AUTO_ECHO_IP, echoPort);
    const tcp = freePort(AUTO_MESHD_IP);
    const udp = freePort(AUTO_MESHD_IP);
    const api = freePort();
    const meshd = spawnMeshd([
      "--config-dir",
      dir,
      "--proxy-address",
      AUTO_MESHD_IP,
      "--http-port",
      String(freePort(AUTO_MESHD_IP)),
      "--api-port",
      String(api),
      "--tcp-ports",
      `${tcp}-${tcp}`,
      "--udp-ports",
      `${udp}-${udp}`,
      "--l4-worker=auto",
      "--datapath",
      "userspace",
      "--log-format",
      "json",
    ], { deno });
    children.push(meshd);
    let gone = false;
    meshd.status.then(() => gone = true);
    await waitFor("meshd to be ready", async () => {
      if (gone) throw new Error(`meshd exited:\n${meshd.lines.join("\n")}`);
      const r = await fetch(`http://127.0.0.1:${api}/readyz`).catch(() => null);
      await r?.body?.cancel();
      return r?.status === 200 ? true : undefined;
    }, 30_000);

    const c = await Deno.connect({ hostname: AUTO_MESHD_IP, port: tcp });
    await c.write(enc.encode("ping\n"));
    await c.closeWrite();
    assert.equal(dec.decode(await new Response(c.readable).arrayBuffer()), "echo e\nping\n");

    const u = Deno.listenDatagram({ transport: "udp", hostname: AUTO_MESHD_IP, port: 0 });
    try {
      // The listener is bound (meshd is ready): on loopback the datagram is not lost.
      await u.send(enc.encode("hello"), { transport: "udp", hostname: AUTO_MESHD_IP, port: udp });
      let timer: ReturnType<typeof setTimeout> | undefined;
      const answer = await Promise.race([
        u.receive().then(([d]) => dec.decode(d)),
        new Promise<string>((r) => timer = setTimeout(() => r("no answer within 10 s"), 10_000)),
      ]);
      clearTimeout(timer);
      assert.equal(answer, "e: hello");
    } finally {
      u.close();
    }
    return { lines: [...meshd.lines], stderr: meshd.stderr.join("\n") };
  } finally {
    for (const c of children.reverse()) await c.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

const L4_OFF = "L4 worker off: TCP and UDP stay on Deno's I/O";

Deno.test("meshd run --l4-worker=auto without FFI permission serves TCP and UDP on Deno's I/O, with one warning that says why", async () => {
  // spawnMeshd's default permissions: those of scripts/quickstart, without --allow-ffi.
  const { lines, stderr } = await autoServes(FILE_PERMISSIONS);
  const warned = lines.filter((l) => l.includes(L4_OFF));
  assert.equal(warned.length, 1, `one warning, in:\n${lines.join("\n")}`);
  const warning = JSON.parse(warned[0]!) as Record<string, unknown>;
  assert.equal(warning["level"], "warn");
  assert.match(String(warning["reason"]), /^FFI is not permitted .*--allow-ffi/);
  assert.ok(!lines.some((l) => l.includes('"l4Worker":true')), lines.join("\n"));
  assert.doesNotMatch(stderr, /Uncaught|^\s+at |"level":"error"/m, `stderr:\n${stderr}`);
});

Deno.test("meshd run --l4-worker=auto with FFI permission starts the L4 worker and warns of nothing", async () => {
  const { lines } = await autoServes(["--unstable-net", "--allow-all"]);
  assert.ok(
    lines.some((l) => l.includes('"proxy workers started"') && l.includes('"l4Worker":true')),
    lines.join("\n"),
  );
  assert.ok(!lines.some((l) => l.includes(L4_OFF)), lines.join("\n"));
});
