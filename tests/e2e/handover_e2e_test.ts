/**
 * A meshd handing a node over to its successor (a DaemonSet rollout with `maxSurge: 1` and
 * `hostNetwork`): two meshd processes with `--reuse-port` on the same ports, the first one
 * told to stop with `--drain-timeout`, under a bounded load of new HTTP connections, HTTP
 * keep-alive requests and TCP connections. Nothing may fail.
 */
import assert from "node:assert/strict";
import { Child, freePort, waitFor, waitForPort } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const WHOAMI = `${ROOT}examples/quickstart/whoami.ts`;
const ECHO = `${ROOT}examples/quickstart/echo.ts`;
// Addresses of this test's own.
const WEB_IP = "127.0.9.1";
const ECHO_IP = "127.0.9.2";
const UDP_IP = "127.0.9.3";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** One HTTP/1.1 response off `conn`: status, and whether the server closes after it. */
async function readResponse(conn: Deno.Conn): Promise<{ status: number; close: boolean }> {
  let text = "";
  const buf = new Uint8Array(16 * 1024);
  for (;;) {
    const end = text.indexOf("\r\n\r\n");
    if (end >= 0) {
      const head = text.slice(0, end).toLowerCase();
      const length = Number(/\r\ncontent-length: *(\d+)/.exec(head)?.[1] ?? "0");
      if (text.length - end - 4 >= length) {
        return {
          status: Number(/^http\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0),
          close: /\r\nconnection: *close/.test(head),
        };
      }
    }
    const n = await conn.read(buf);
    if (n === null) throw new Error(`connection closed after ${text.length} bytes of response`);
    text += dec.decode(buf.subarray(0, n));
  }
}

/** Resolves once the meshd whose API is on `api` says it is ready. */
function ready(api: number): Promise<true> {
  return waitFor(`meshd on API port ${api} to be ready`, async () => {
    const r = await fetch(`http://127.0.0.1:${api}/readyz`);
    await r.body?.cancel();
    return r.status === 200 ? true as const : undefined;
  }, 30_000);
}

interface Load {
  sent: number;
  failed: string[];
}

/** A TCP connection through meshd that failed: the client's port, and when (ms) it tried. */
interface TcpTry {
  /** Null when connect() itself failed. */
  port: number | null;
  what: string;
  from: number;
  to: number;
}

/**
 * meshd's JSON log lines (Deno may print a warning box before them, on the first run of a
 * fresh checkout).
 */
function logLines(c: Child): Record<string, unknown>[] {
  return c.lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
}

/**
 * How a client sees a reset before any byte came back: on its read, or on a write or the
 * half-close that the reset beat (EPIPE, ENOTCONN).
 */
function isReset(e: unknown): boolean {
  return e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe ||
    e instanceof Deno.errors.NotConnected;
}

/**
 * Deno's flags, as the compiled binary has them: Deno lets only --allow-all read /proc/net,
 * where a successor's sockets show.
 */
const DENO_FLAGS = ["--unstable-net", "--allow-all"];

/** meshd's flags for one of the pair. */
function meshdArgs(
  dir: string,
  ports: { http: number; api: number; tcp: number },
  drain: string | null = "30s",
  workers = 1,
  l4 = false,
): string[] {
  return [
    "--provider=file",
    "--config-dir",
    dir,
    "--http-port",
    String(ports.http),
    "--api-port",
    String(ports.api),
    "--tcp-ports",
    `${ports.tcp}-${ports.tcp}`,
    "--reuse-port",
    ...(drain ? [`--drain-timeout=${drain}`] : []),
    ...(workers > 1 ? ["--workers", String(workers)] : []),
    ...(l4 ? ["--l4-worker"] : []),
    "--log-format",
    "json",
  ];
}

Deno.test(
  "meshd run --reuse-port --drain-timeout hands its ports over with no failed request",
  () => handover(1),
);

Deno.test(
  "meshd run --reuse-port --drain-timeout --workers 2 hands its ports over with no failed request",
  () => handover(2),
);

Deno.test(
  "meshd run --reuse-port --drain-timeout --l4-worker hands its ports over with no failed request",
  () => handover(1, true),
);

/** The handover under load, both meshd processes with `workers` proxy workers. */
async function handover(workers: number, l4 = false): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-handover-" });
  const children: Child[] = [];
  let stopLoad = false;
  const loops: Promise<void>[] = [];
  try {
    const webPort = freePort(WEB_IP);
    const echoPort = freePort(ECHO_IP);
    children.push(
      new Child("web", [
        "run",
        "--allow-net",
        WHOAMI,
        "--name",
        "web",
        "--listen",
        `${WEB_IP}:${webPort}`,
      ]),
      new Child("echo", [
        "run",
        "--allow-net",
        ECHO,
        "--name",
        "echo",
        "--listen",
        `${ECHO_IP}:${echoPort}`,
      ]),
    );
    await Deno.writeTextFile(
      `${dir}/mesh.yaml`,
      `apiVersion: v1
kind: Service
metadata: { name: web, namespace: ho }
spec: { ports: [{ name: web, port: 80 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, namespace: ho, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ name: web, port: ${webPort}, protocol: TCP }]
endpoints: [{ addresses: ["${WEB_IP}"], conditions: { ready: true } }]
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: ho
  # Each meshd logs each connection it accepted (by source port) on stdout.
  annotations: { meshd.io/traffic-type: tcp, meshd.io/access-log: "true" }
spec: { ports: [{ name: tcp, port: 7000 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: echo-1, namespace: ho, labels: { kubernetes.io/service-name: echo } }
addressType: IPv4
ports: [{ name: tcp, port: ${echoPort}, protocol: TCP }]
endpoints: [{ addresses: ["${ECHO_IP}"], conditions: { ready: true } }]
`,
    );
    await waitForPort(WEB_IP, webPort);
    await waitForPort(ECHO_IP, echoPort);
    const http = freePort();
    const tcp = freePort();
    const apiA = freePort();
    const apiB = freePort();
    const a = spawnMeshd(meshdArgs(dir, { http, api: apiA, tcp }, "30s", workers, l4), {
      name: "meshd-a",
      deno: DENO_FLAGS,
    });
    children.push(a);
    await ready(apiA);

    // The load: new HTTP connections, one keep-alive HTTP connection at a time (a new one
    // when the server says it closes), and TCP connections through the echo service.
    const newConns: Load = { sent: 0, failed: [] };
    const keepAlive: Load = { sent: 0, failed: [] };
    const tcpConns: Load = { sent: 0, failed: [] };
    // TCP connections reset before any byte came back, by the client's port and when (ms) it
    // connected and saw the reset: the accept-queue resets below, unless a meshd accepted them.
    const tcpResets: TcpTry[] = [];
    // The other failed ones, each named below with the meshd that logged it, if one did.
    const tcpFailed: TcpTry[] = [];
    const request = (close: boolean) =>
      enc.encode(
        `GET / HTTP/1.1\r\nHost: web.ho.mesh\r\n${close ? "Connection: close\r\n" : ""}\r\n`,
      );
    loops.push((async () => {
      while (!stopLoad) {
        newConns.sent++;
        try {
          const c = await Deno.connect({ hostname: "127.0.0.1", port: http });
          try {
            await c.write(request(true));
            const r = await readResponse(c);
            if (r.status !== 200) newConns.failed.push(`status ${r.status}`);
          } finally {
            c.close();
          }
        } catch (e) {
          newConns.failed.push(String(e));
        }
      }
    })());
    loops.push((async () => {
      let c: Deno.Conn | null = null;
      let answered = 0; // responses on the connection in use
      while (!stopLoad) {
        keepAlive.sent++;
        try {
          if (!c) {
            c = await Deno.connect({ hostname: "127.0.0.1", port: http });
            answered = 0;
          }
          await c.write(request(false));
          const r = await readResponse(c);
          answered++;
          if (r.status !== 200) keepAlive.failed.push(`status ${r.status}`);
          if (r.close) {
            c.close();
            c = null;
          }
        } catch (e) {
          // A reset of the first request on a connection just opened is the accept-queue reset
          // below (a new connection); on a connection that has had answers it is meshd's.
          keepAlive.failed.push(
            answered === 0 ? `new connection: ${e}` : `${e} (after ${answered} answers on it)`,
          );
          c?.close();
          c = null;
        }
      }
      c?.close();
    })());
    loops.push((async () => {
      const buf = new Uint8Array(1024);
      while (!stopLoad) {
        tcpConns.sent++;
        let c: Deno.TcpConn | null = null;
        let got = "";
        const from = Date.now();
        try {
          c = await Deno.connect({ hostname: "127.0.0.1", port: tcp });
          await c.write(enc.encode("ping\n"));
          await c.closeWrite();
          for (let n; (n = await c.read(buf)) !== null;) got += dec.decode(buf.subarray(0, n));
          if (!got.endsWith("ping\n")) {
            const what = `echoed ${JSON.stringify(got)}`;
            tcpFailed.push({ port: c.localAddr.port, what, from, to: Date.now() });
          }
        } catch (e) {
          // The echo answers each connection with a line first: bytes before the reset mean a
          // meshd had relayed it. A reset before connect() returned (the socket's error, read
          // once the handshake completed) has no port to look up, and no meshd sent it: meshd
          // closing a connection sends a FIN (Deno's close does, even with the client's bytes
          // unread): the client reads the end (so in every case made to happen here).
          const port = c?.localAddr.port ?? null;
          if (got === "" && isReset(e)) {
            tcpResets.push({ port, what: String(e), from, to: Date.now() });
          } else {
            tcpFailed.push({
              port,
              what: `${e} after ${JSON.stringify(got)}`,
              from,
              to: Date.now(),
            });
          }
        } finally {
          try {
            c?.close();
          } catch { /* closed */ }
        }
      }
    })());
    await waitFor(
      "load to flow through meshd A",
      () => newConns.sent > 20 && keepAlive.sent > 20 && tcpConns.sent > 20 ? true : undefined,
    );

    // The successor binds the same ports, then the first one is told to stop.
    const b = spawnMeshd(meshdArgs(dir, { http, api: apiB, tcp }, null, workers, l4), {
      name: "meshd-b",
      deno: DENO_FLAGS,
    });
    children.push(b);
    await ready(apiB);
    const before = { n: newConns.sent, k: keepAlive.sent, t: tcpConns.sent };
    const status = await a.stop();
    assert.equal(status.code, 0, a.lines.join("\n"));
    const drained = logLines(a).find((l) => l.msg === "drained") as
      | { successor: boolean; open: number; ms: number }
      | undefined;
    assert.ok(drained, `meshd A logged its drain:\n${a.lines.join("\n")}`);
    assert.equal(drained.successor, true);
    assert.equal(
      drained.open,
      0,
      a.lines.filter((l) => !l.includes('"debug"')).slice(-40).join("\n"),
    );
    // B alone serves from now on.
    await waitFor(
      "load to flow through meshd B alone",
      () =>
        newConns.sent > before.n + 20 && keepAlive.sent > before.k + 20 &&
          tcpConns.sent > before.t + 20
          ? true
          : undefined,
    );
    stopLoad = true;
    await Promise.all(loops);
    // B's access log lines are all out once it has stopped.
    assert.equal((await b.stop()).code, 0, b.lines.slice(-20).join("\n"));
    // Without net.ipv4.tcp_migrate_req (the DaemonSet's init container sets it in the node's
    // network namespace; a test may not change the host's), the kernel resets a connection
    // still in the closing listener's accept queue: at most a few, at the switch, and nothing
    // else may fail.
    const migrates = (() => {
      try {
        return Deno.readTextFileSync("/proc/sys/net/ipv4/tcp_migrate_req").trim() === "1";
      } catch {
        return false;
      }
    })();
    // The keep-alive loop's first request on a connection it has just opened counts the same.
    let queuedResets = 0;
    for (const [l, prefix] of [[newConns, ""], [keepAlive, "new connection: "]] as const) {
      if (migrates) continue;
      const queued = (f: string) => f.startsWith(`${prefix}ConnectionReset`);
      queuedResets += l.failed.filter(queued).length;
      l.failed = l.failed.filter((f) => !queued(f));
    }
    // The same holds for the TCP service's listener (a new connection each time too), and
    // there it can be told apart: a connection either meshd accepted is in its access log, by
    // the client's port and the time, and one it accepted and then reset is its own failure.
    // (A port comes back for a later connection, but only a second or more after the last one
    // on it ended: tcp_tw_reuse.)
    let tcpQueued = 0;
    const accepted: { port: number; start: number; end: number; by: string }[] = [];
    for (const [who, m] of [["meshd A", a], ["meshd B", b]] as const) {
      for (const l of logLines(m)) {
        if (l.protocol !== "tcp" || typeof l.source !== "string") continue;
        const start = Date.parse(String(l.time));
        accepted.push({
          port: Number(l.source.split(":").at(-1)),
          start,
          end: start + Number(l.duration_ms),
          by: `${who} (reason ${l.reason})`,
        });
      }
    }
    assert.ok(accepted.length > 0, "no access log line of a TCP connection");
    const SLACK_MS = 100; // times logged to the ms, and taken after a wait on a busy machine
    const loggedBy = (t: TcpTry) =>
      t.port === null
        ? undefined
        : accepted.find((x) =>
          x.port === t.port && x.start <= t.to + SLACK_MS && x.end >= t.from - SLACK_MS
        )?.by;
    for (const f of tcpFailed) {
      const by = loggedBy(f);
      tcpConns.failed.push(
        `${f.what} (port ${f.port}; ${by ? `accepted by ${by}` : "in no meshd's access log"})`,
      );
    }
    for (const r of tcpResets) {
      const by = loggedBy(r);
      if (by !== undefined) {
        tcpConns.failed.push(`${r.what} (port ${r.port}) on a connection ${by} had accepted`);
      } else if (migrates) {
        tcpConns.failed.push(`${r.what} (port ${r.port}) with tcp_migrate_req on`);
      } else {
        queuedResets++;
        tcpQueued++;
      }
    }
    assert.ok(queuedResets <= 3, `${queuedResets} new connections reset at the switch`);
    const figures = { newConns, keepAlive, tcpConns };
    // meshd A's lifecycle lines (not its access log or debug lines) say how its drain went.
    const aLog = () =>
      logLines(a).filter((l) => l.level !== undefined && l.level !== "debug")
        .slice(-25).map((l) => JSON.stringify(l)).join("\n");
    for (const [name, l] of Object.entries(figures)) {
      if (l.failed.length === 0) continue;
      assert.deepEqual(
        l.failed,
        [],
        `${name}: ${l.failed.length} of ${l.sent} failed; meshd A's last lines:\n${aLog()}`,
      );
    }
    console.log(
      `handover: ${newConns.sent} new HTTP connections, ${keepAlive.sent} keep-alive requests, ` +
        `${tcpConns.sent} TCP connections, 0 failed` +
        (migrates ? "" : ` (${queuedResets} new connections reset in the old accept queue, ` +
          `${tcpQueued} of them TCP with no meshd's access log line; tcp_migrate_req off)`) +
        `; drain took ${drained.ms} ms`,
    );
  } finally {
    stopLoad = true;
    await Promise.allSettled(loops);
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test(
  "a draining meshd stays until the answer to a UDP datagram it forwarded has gone back",
  () => udpHandover(1),
);

Deno.test(
  "a draining meshd with --l4-worker stays until the answer to a UDP datagram its L4 worker forwarded has gone back",
  () => udpHandover(1, true),
);

Deno.test(
  "a draining meshd with --workers 2 stays until the answer to a UDP datagram it forwarded has gone back",
  () => udpHandover(2),
);

/**
 * Writes a UDP service `dns` whose one endpoint is `UDP_IP:backendPort`; its ports, and the
 * flags of a meshd serving it (with its API port and drain timeout).
 */
async function udpMesh(dir: string, backendPort: number, workers: number, l4: boolean) {
  await Deno.writeTextFile(
    `${dir}/mesh.yaml`,
    `apiVersion: v1
kind: Service
metadata: { name: dns, namespace: ho }
spec: { ports: [{ name: dns, port: 53, protocol: UDP }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: dns-1, namespace: ho, labels: { kubernetes.io/service-name: dns } }
addressType: IPv4
ports: [{ name: dns, port: ${backendPort}, protocol: UDP }]
endpoints: [{ addresses: ["${UDP_IP}"], conditions: { ready: true } }]
`,
  );
  const ports = { http: freePort(), tcp: freePort(), udp: freePort() };
  const args = (api: number, drain: string | null) => [
    ...meshdArgs(dir, { http: ports.http, api, tcp: ports.tcp }, drain, workers, l4),
    "--udp-ports",
    `${ports.udp}-${ports.udp}`,
  ];
  return { ports, args };
}

/** The UDP part of a handover, both meshd processes with `workers` proxy workers. */
async function udpHandover(workers: number, l4 = false): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-handover-udp-" });
  const children: Child[] = [];
  // The endpoint holds its answer until the test lets it go.
  const backendPort = freePort(UDP_IP);
  const backend = Deno.listenDatagram({ hostname: UDP_IP, port: backendPort, transport: "udp" });
  let release: () => void = () => {};
  const released = new Promise<void>((r) => release = r);
  const serving = (async () => {
    for (;;) {
      const [data, from] = await backend.receive();
      void released.then(() =>
        backend.send(enc.encode(`answer to ${dec.decode(data)}`), from).catch(() => {})
      );
    }
  })().catch(() => {});
  const client = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
  try {
    const { ports, args } = await udpMesh(dir, backendPort, workers, l4);
    const apiA = freePort();
    const a = spawnMeshd(args(apiA, "30s"), { name: "meshd-a", deno: DENO_FLAGS });
    children.push(a);
    await ready(apiA);
    // The request reaches A (the only one bound), A forwards it, and the answer is held.
    await client.send(enc.encode("query 1"), {
      transport: "udp",
      hostname: "127.0.0.1",
      port: ports.udp,
    });
    const apiB = freePort();
    const b = spawnMeshd(args(apiB, null), { name: "meshd-b", deno: DENO_FLAGS });
    children.push(b);
    await ready(apiB);
    let exited = false;
    const stopped = a.stop().finally(() => exited = true);
    // A past its successor check: either waiting for the answer, or (without that wait) gone.
    await waitFor(
      "meshd A to wait for the UDP answer, or to leave",
      () => exited || a.lines.some((l) => l.includes("waiting for answers")) ? true : undefined,
      10_000,
    );
    release();
    const answer = await Promise.race([
      client.receive().then(([d]) => dec.decode(d)),
      new Promise<string>((r) => setTimeout(() => r("no answer within 10 s"), 10_000)),
    ]);
    assert.equal(answer, "answer to query 1", a.lines.slice(-10).join("\n"));
    const status = await stopped;
    assert.equal(status.code, 0, a.lines.join("\n"));
    const drained = logLines(a).find((l) => l.msg === "drained");
    assert.equal(drained?.open, 0, a.lines.join("\n"));
  } finally {
    client.close();
    backend.close();
    await serving;
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test(
  "a UDP handover under load loses no datagram: each exchange on a new client socket",
  () => udpHandoverUnderLoad(false),
);

Deno.test(
  "a UDP handover under load with --l4-worker loses no datagram: each exchange on a new client socket",
  () => udpHandoverUnderLoad(true),
);

/**
 * Exchanges each from a new client socket, as DNS resolvers send them, through the stop of the
 * first meshd and after it: every one must be answered. meshd binds UDP ports with
 * SO_REUSEADDR, so the successor, bound last, takes every new datagram once it binds; the
 * first answers those it took before, then leaves.
 */
async function udpHandoverUnderLoad(l4: boolean): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-handover-udp-load-" });
  const children: Child[] = [];
  const backendPort = freePort(UDP_IP);
  const backend = Deno.listenDatagram({ hostname: UDP_IP, port: backendPort, transport: "udp" });
  const serving = (async () => {
    for (;;) {
      const [data, from] = await backend.receive();
      await backend.send(data, from);
    }
  })().catch(() => {});
  let stopLoad = false;
  const loops: Promise<void>[] = [];
  const load = { sent: 0, lost: [] as string[] };
  try {
    const { ports, args } = await udpMesh(dir, backendPort, 1, l4);
    const apiA = freePort();
    const a = spawnMeshd(args(apiA, "30s"), { name: "meshd-a", deno: DENO_FLAGS });
    children.push(a);
    await ready(apiA);
    for (let i = 0; i < 4; i++) {
      loops.push((async () => {
        for (let seq = 0; !stopLoad; seq++) {
          const msg = `loop ${i} exchange ${seq}`;
          const c = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
          load.sent++;
          try {
            await c.send(enc.encode(msg), {
              transport: "udp",
              hostname: "127.0.0.1",
              port: ports.udp,
            });
            const answer = await Promise.race([
              c.receive().then(([d]) => dec.decode(d)),
              new Promise<string>((r) => setTimeout(() => r("no answer within 3 s"), 3_000)),
            ]);
            if (answer !== msg) load.lost.push(`${msg}: ${answer} (${new Date().toISOString()})`);
          } finally {
            c.close();
          }
        }
      })());
    }
    const atLeast = (n: number) =>
      waitFor(`${n} UDP exchanges`, () => load.sent >= n ? true : undefined, 30_000);
    await atLeast(200);
    const apiB = freePort();
    const b = spawnMeshd(args(apiB, null), { name: "meshd-b", deno: DENO_FLAGS });
    children.push(b);
    await ready(apiB);
    const status = await a.stop();
    assert.equal(status.code, 0, a.lines.join("\n"));
    await atLeast(load.sent + 200);
    stopLoad = true;
    await Promise.all(loops);
    assert.deepEqual(
      load.lost,
      [],
      `${load.lost.length} of ${load.sent} lost\n${a.lines.slice(-15).join("\n")}`,
    );
  } finally {
    stopLoad = true;
    await Promise.allSettled(loops);
    backend.close();
    await serving;
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(dir, { recursive: true });
  }
}
