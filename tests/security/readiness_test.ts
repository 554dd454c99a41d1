/**
 * Readiness that tells the truth (issue 18, item 13): a service port meshd cannot bind is an
 * error in the apply log, in `/api/status` and in `/readyz`, and meshd binds it once it is
 * free; the HTTP entrypoint answers no request before the first config is applied. meshd and
 * its backends run as real processes on this test's own loopback addresses.
 */
import assert from "node:assert/strict";
import { Child, freePort, waitFor, waitForPort } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const ECHO = `${ROOT}examples/quickstart/echo.ts`;
const WHOAMI = `${ROOT}examples/quickstart/whoami.ts`;

const PROXY = "127.0.71.1"; // meshd's proxy and API address
const BACKEND = "127.0.70.1"; // the backends'

const service = (name: string, port: number, type: string, protocol = "TCP") => `
apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: sec, annotations: { meshd.io/traffic-type: ${type} } }
spec: { ports: [{ name: p, port: ${port}, protocol: ${protocol} }] }
`;
const slice = (svc: string, ip: string, port: number, protocol = "TCP") => `
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: ${svc}-a, namespace: sec, labels: { kubernetes.io/service-name: ${svc} } }
addressType: IPv4
ports: [{ name: p, port: ${port}, protocol: ${protocol} }]
endpoints:
  - { addresses: ["${ip}"], conditions: { ready: true } }
`;

function meshd(dir: string, http: number, api: number, extra: string[] = []): Child {
  return spawnMeshd([
    `--config-dir=${dir}`,
    `--proxy-address=${PROXY}`,
    `--http-port=${http}`,
    `--api-address=${PROXY}`,
    `--api-port=${api}`,
    "--log-format=json",
    "--datapath=userspace",
    ...extra,
  ]);
}

const logs = (c: Child) =>
  c.lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>);

async function get(url: string): Promise<{ status: number; body: string }> {
  const r = await fetch(url);
  return { status: r.status, body: await r.text() };
}

/** A UDP port free on `hostname` now. */
function freeUdpPort(hostname: string): number {
  const s = Deno.listenDatagram({ hostname, port: 0, transport: "udp" });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}

/** Sends `text` from a socket of its own and returns the answer, or null after 2 s. */
async function udpAsk(port: number, text: string): Promise<string | null> {
  const s = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
  const timer = setTimeout(() => s.close(), 2_000);
  try {
    await s.send(new TextEncoder().encode(text), { transport: "udp", hostname: PROXY, port });
    const [data] = await s.receive();
    return new TextDecoder().decode(data);
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
    try {
      s.close();
    } catch { /* closed by the timer */ }
  }
}

/** Connects, sends `text`, half-closes and reads to the end. */
async function tcpAsk(port: number, text: string): Promise<string> {
  const c = await Deno.connect({ hostname: PROXY, port });
  try {
    await c.write(new TextEncoder().encode(text));
    await c.closeWrite();
    let got = "";
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await c.read(buf);
      if (n === null) return got;
      got += new TextDecoder().decode(buf.subarray(0, n));
    }
  } finally {
    c.close();
  }
}

Deno.test("meshd run reports TCP and UDP service ports it cannot bind, binds them once free, and is ready only then", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-sec-ready-" });
  const children: Child[] = [];
  let tcpBlocker: Deno.TcpListener | null = null;
  let udpBlocker: Deno.DatagramConn | null = null;
  try {
    const echoPort = freePort(BACKEND);
    children.push(
      new Child("echo", [
        "run",
        "--allow-net",
        ECHO,
        "--name",
        "db",
        "--listen",
        `${BACKEND}:${echoPort}`,
        "--udp",
      ]),
    );
    await waitForPort(BACKEND, echoPort);
    await Deno.writeTextFile(
      `${dir}/mesh.yaml`,
      [
        service("db", 5432, "tcp"),
        slice("db", BACKEND, echoPort),
        service("dns", 53, "udp", "UDP"),
        slice("dns", BACKEND, echoPort, "UDP"),
      ].join("---\n"),
    );
    // The service ports meshd will want, taken by this test before meshd starts.
    const tcpPort = freePort(PROXY);
    const udpPort = freeUdpPort(PROXY);
    tcpBlocker = Deno.listen({ hostname: PROXY, port: tcpPort });
    udpBlocker = Deno.listenDatagram({ hostname: PROXY, port: udpPort, transport: "udp" });
    const api = freePort(PROXY);
    const m = meshd(dir, freePort(PROXY), api, [
      `--tcp-ports=${tcpPort}-${tcpPort}`,
      `--udp-ports=${udpPort}-${udpPort}`,
    ]);
    children.push(m);
    const applied = await waitFor(
      "the first config applied",
      () => logs(m).find((l) => l["msg"] === "config applied"),
      30_000,
    );
    assert.ok(
      Number(applied["errors"]) >= 2,
      `the apply log line reports the two unbound ports: ${JSON.stringify(applied)}`,
    );

    const ready = await get(`http://${PROXY}:${api}/readyz`);
    assert.equal(ready.status, 503, `/readyz while ports are unbound: ${ready.body}`);
    assert.match(ready.body, new RegExp(`${PROXY}:${tcpPort}`));
    const status = JSON.parse((await get(`http://${PROXY}:${api}/api/status`)).body);
    assert.equal(status.ready, false);
    const errors = JSON.stringify(status.errors);
    for (const [proto, port] of [["tcp", tcpPort], ["udp", udpPort]] as const) {
      const e = (status.errors as Record<string, string>[]).find((e) =>
        e["listener"] === `${proto} ${PROXY}:${port}`
      );
      assert.ok(e, `/api/status names the ${proto} port ${port}: ${errors}`);
      assert.match(e["message"]!, /in use/i, errors);
    }

    tcpBlocker.close();
    tcpBlocker = null;
    udpBlocker.close();
    udpBlocker = null;
    await waitFor(
      "/readyz to turn 200 once the ports are free",
      async () => {
        const r = await get(`http://${PROXY}:${api}/readyz`);
        return r.status === 200 ? true : undefined;
      },
      30_000,
      100,
    );
    const after = JSON.parse((await get(`http://${PROXY}:${api}/api/status`)).body);
    assert.equal(after.ready, true);
    assert.deepEqual(after.errors, [], "the bind errors are cleared");
    assert.match(await tcpAsk(tcpPort, "ping"), /^echo db\nping$/);
    assert.equal(await udpAsk(udpPort, "pong"), "db: pong");
  } finally {
    tcpBlocker?.close();
    udpBlocker?.close();
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("meshd run answers no 404 for a configured host while its first config is not yet applied", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-sec-first-" });
  const children: Child[] = [];
  try {
    const web = freePort(BACKEND);
    children.push(
      new Child("whoami", [
        "run",
        "--allow-net",
        WHOAMI,
        "--name",
        "web-1",
        "--listen",
        `${BACKEND}:${web}`,
      ]),
    );
    await waitForPort(BACKEND, web);
    await Deno.writeTextFile(
      `${dir}/mesh.yaml`,
      [service("web", 80, "http"), slice("web", BACKEND, web)].join("---\n"),
    );
    // Files enough that reading the first config takes a while (a few hundred ms here), as in
    // a large mesh: the window in which the entrypoint answered 404 on main.
    for (let i = 0; i < 1000; i++) {
      await Deno.writeTextFile(`${dir}/filler-${i}.yaml`, service(`filler-${i}`, 80, "http"));
    }
    // Three starts, each hammered from the moment the entrypoint accepts connections.
    for (let round = 0; round < 3; round++) {
      const http = freePort(PROXY);
      const m = meshd(dir, http, freePort(PROXY));
      children.push(m);
      const seen: number[] = [];
      const deadline = performance.now() + 30_000;
      while (seen.filter((s) => s === 200).length < 5 && performance.now() < deadline) {
        let c: Deno.TcpConn;
        try {
          c = await Deno.connect({ hostname: PROXY, port: http });
        } catch {
          continue; // not listening yet: try again at once, so the first moment is caught
        }
        try {
          await c.write(
            new TextEncoder().encode(
              "GET / HTTP/1.1\r\nHost: web.sec.mesh\r\nConnection: close\r\n\r\n",
            ),
          );
          let got = "";
          const buf = new Uint8Array(4096);
          for (;;) {
            const n = await c.read(buf);
            if (n === null) break;
            got += new TextDecoder().decode(buf.subarray(0, n));
          }
          seen.push(Number(/^HTTP\/1\.1 (\d{3})/.exec(got)?.[1] ?? 0));
        } catch {
          seen.push(0);
        } finally {
          c.close();
        }
      }
      assert.ok(seen.filter((s) => s === 200).length >= 5, `answers seen: ${seen.join(",")}`);
      const other = seen.filter((s) => s !== 200);
      assert.equal(
        other.length,
        0,
        `round ${round}: ${other.length} of ${seen.length} answers for a configured host were ` +
          `not 200: ${[...new Set(other)].join(", ")}`,
      );
      await m.stop();
    }
  } finally {
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(dir, { recursive: true });
  }
});
