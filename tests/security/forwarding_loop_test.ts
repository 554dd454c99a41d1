/**
 * Forwarding loops (issue 18, item 6): an EndpointSlice that points at meshd's own listener
 * (HTTP entrypoint, TCP listener, UDP listener), and two meshds that point at each other. Each
 * request used to go around until the process ran out of file descriptors; now the HTTP
 * request gets 508, the TCP connection is closed, the datagram is dropped, and each is counted
 * as `meshd_dropped_total{reason="loop"}`. meshd runs with a low open-file limit so that a
 * loop which is not caught fails fast.
 */
import assert from "node:assert/strict";
import { freePort, waitFor } from "../testenv/process.ts";
import {
  alive,
  BYSTANDER,
  CountingBackend,
  drops,
  httpStatus,
  type Meshd,
  procStats,
  service,
  slice,
  startMeshd,
  stopMeshd,
  tcpExchange,
  UdpClient,
} from "./_load_env.ts";

const MESHD = "127.0.50.3";
const MESHD_A = "127.0.50.4";
const MESHD_B = "127.0.50.5";
const WEB = "127.0.50.51";

function figures(
  name: string,
  before: ReturnType<typeof procStats>,
  during: ReturnType<typeof procStats>,
  after: ReturnType<typeof procStats>,
  answered: string,
  extra: string,
): void {
  console.log(
    `figures: ${name}: fds ${before.fds}/${during.fds}/${after.fds}, RSS MiB ` +
      `${before.rssMiB}/${during.rssMiB}/${after.rssMiB} (before/during/after); ` +
      `answered to other clients during the attack: ${answered}; ${extra}`,
  );
}

Deno.test("meshd refuses endpoints that are its own listeners: 508, closed, dropped", async () => {
  const web = new CountingBackend(WEB);
  let m: Meshd | undefined;
  const udp = new UdpClient(BYSTANDER);
  try {
    m = await startMeshd({
      address: MESHD,
      nofile: 512,
      services: 4,
      config: ({ http, tcp, udp }) => [
        service("web", 80),
        slice("web", WEB, web.port),
        service("loop", 80),
        slice("loop", MESHD, http),
        service("tloop", 9000, { annotations: { "meshd.io/traffic-type": "tcp" } }),
        slice("tloop", MESHD, tcp),
        service("uloop", 53, { protocol: "UDP" }),
        slice("uloop", MESHD, udp, "UDP"),
      ],
    });
    const mesh = m;
    const before = procStats(mesh);
    // Three loops at once killed meshd before: send three, and ask for web meanwhile.
    const [loops, others] = await Promise.all([
      Promise.all([1, 2, 3].map(() => httpStatus(mesh, "loop.hl.mesh", { timeoutMs: 15_000 }))),
      Promise.all([1, 2, 3].map(() => httpStatus(mesh, "web.hl.mesh"))),
    ]);
    const during = procStats(mesh);
    assert.deepEqual(loops, [508, 508, 508], "a request to a service whose endpoint is meshd");
    const answered = others.filter((s) => s === 200).length;
    assert.equal(answered, 3, "other clients went unanswered during the loop");
    assert.ok(alive(mesh));
    const afterHttp = (await drops(mesh))["loop"] ?? 0;
    assert.ok(afterHttp >= 3, `HTTP loops not counted: ${afterHttp}`);

    // TCP: the connection is closed without reaching anything.
    assert.equal(
      await tcpExchange(mesh, mesh.tcp, BYSTANDER, "ping"),
      "",
      "a TCP connection to a looping service got data",
    );
    await waitFor(
      "the TCP loop to be counted",
      async () => ((await drops(mesh))["loop"] ?? 0) > afterHttp ? true : undefined,
    );
    const afterTcp = (await drops(mesh))["loop"] ?? 0;

    // UDP: the datagram is dropped and counted.
    assert.equal(await udp.echoes(MESHD, mesh.udp, 500), false);
    await waitFor(
      "the UDP loop to be counted",
      async () => ((await drops(mesh))["loop"] ?? 0) > afterTcp ? true : undefined,
    );
    assert.ok(alive(mesh));
    assert.equal(await httpStatus(mesh, "web.hl.mesh"), 200);
    const after = procStats(mesh);
    assert.ok(after.fds < before.fds + 20, `fds grew from ${before.fds} to ${after.fds}`);
    figures(
      "EndpointSlices at meshd's own HTTP, TCP and UDP listeners, 3 HTTP loops at once",
      before,
      during,
      after,
      `${answered}/3`,
      `dropped ${JSON.stringify(await drops(mesh))}`,
    );
  } finally {
    if (m) await stopMeshd(m);
    await udp.close();
    await web.close();
  }
});

Deno.test("two meshds whose endpoints are each other answer 508 by the Via they add", async () => {
  const httpA = freePort(MESHD_A);
  const httpB = freePort(MESHD_B);
  let a: Meshd | undefined;
  let b: Meshd | undefined;
  try {
    [a, b] = await Promise.all([
      startMeshd({
        address: MESHD_A,
        http: httpA,
        nofile: 512,
        services: 1,
        config: () => [service("ping", 80), slice("ping", MESHD_B, httpB)],
      }),
      startMeshd({
        address: MESHD_B,
        http: httpB,
        nofile: 512,
        services: 1,
        config: () => [service("ping", 80), slice("ping", MESHD_A, httpA)],
      }),
    ]);
    const before = procStats(a);
    const status = await httpStatus(a, "ping.hl.mesh", { timeoutMs: 15_000 });
    const during = procStats(a);
    assert.equal(status, 508, "a request that went A, B, A");
    assert.ok(alive(a) && alive(b));
    const dropped = (await drops(a))["loop"] ?? 0;
    assert.ok(dropped >= 1, `the loop was not counted at A: ${dropped}`);
    figures(
      "two meshds pointing at each other",
      before,
      during,
      procStats(a),
      "n/a",
      `dropped at A ${JSON.stringify(await drops(a))}`,
    );
  } finally {
    await Promise.all([a && stopMeshd(a), b && stopMeshd(b)]);
  }
});

const MESHD_C = "127.0.100.3";
const MESHD_D = "127.0.100.4";
const MESHD_E = "127.0.100.5";

/** An EndpointSlice of addressType IPv6 with one ready endpoint per address. */
function slice6(svc: string, ips: string[], port: number): string {
  return `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: ${svc}-a, namespace: hl, labels: { kubernetes.io/service-name: ${svc} } }
addressType: IPv6
ports: [{ name: p, port: ${port}, protocol: TCP }]
endpoints:
${ips.map((ip) => `  - { addresses: ["${ip}"], conditions: { ready: true } }\n`).join("")}`;
}

Deno.test("meshd knows its own listener by an IPv4-mapped IPv6 spelling of its address", async () => {
  let m: Meshd | undefined;
  try {
    // ::ffff:7f00:6403 and 0:0:0:0:0:FFFF:127.0.100.3 are both 127.0.100.3 (RFC 4291
    // §2.5.5.2): a connection to either reaches meshd's own listener.
    m = await startMeshd({
      address: MESHD_C,
      nofile: 512,
      services: 1,
      config: ({ tcp }) => [
        service("tloop", 9000, { annotations: { "meshd.io/traffic-type": "tcp" } }),
        slice6("tloop", ["::ffff:7f00:6403", "0:0:0:0:0:FFFF:127.0.100.3"], tcp),
      ],
    });
    const mesh = m;
    const before = procStats(mesh);
    assert.equal(
      await tcpExchange(mesh, mesh.tcp, BYSTANDER, "ping"),
      "",
      "a TCP connection to a looping service got data",
    );
    const during = procStats(mesh);
    await waitFor(
      "the TCP loop to be counted as a loop",
      async () => ((await drops(mesh))["loop"] ?? 0) >= 1 ? true : undefined,
      10_000,
    );
    const d = await drops(mesh);
    assert.equal(d["connection_limit"] ?? 0, 0, `the loop ran into the cap: ${JSON.stringify(d)}`);
    assert.ok(alive(mesh));
    figures(
      "an endpoint at meshd's own TCP listener spelled ::ffff:7f00:6403",
      before,
      during,
      procStats(mesh),
      "n/a",
      `dropped ${JSON.stringify(d)}`,
    );
  } finally {
    if (m) await stopMeshd(m);
  }
});

Deno.test("two meshds whose h2c endpoints are each other answer 508 by the Via they add", async () => {
  const httpD = freePort(MESHD_D);
  const httpE = freePort(MESHD_E);
  let d: Meshd | undefined;
  let e: Meshd | undefined;
  const h2c = { annotations: { "meshd.io/scheme": "h2c" } };
  try {
    [d, e] = await Promise.all([
      startMeshd({
        address: MESHD_D,
        http: httpD,
        nofile: 512,
        services: 1,
        config: () => [service("ping", 80, h2c), slice("ping", MESHD_E, httpE)],
      }),
      startMeshd({
        address: MESHD_E,
        http: httpE,
        nofile: 512,
        services: 1,
        config: () => [service("ping", 80, h2c), slice("ping", MESHD_D, httpD)],
      }),
    ]);
    const before = procStats(d);
    // HTTP/1 in at D, then HTTP/2 D to E to D: the request must come back to D marked. Without
    // the mark it went round until a 502, with D's RSS at 235 MiB.
    const status = await httpStatus(d, "ping.hl.mesh", { timeoutMs: 15_000 });
    const during = procStats(d);
    assert.equal(status, 508, "a request that went D, E, D over h2c");
    assert.ok(alive(d) && alive(e));
    const dropped = ((await drops(d))["loop"] ?? 0) + ((await drops(e))["loop"] ?? 0);
    assert.ok(dropped >= 1, `the loop was not counted: ${dropped}`);
    figures(
      "two meshds pointing at each other over h2c",
      before,
      during,
      procStats(d),
      "n/a",
      `dropped at D ${JSON.stringify(await drops(d))}, at E ${JSON.stringify(await drops(e))}`,
    );
  } finally {
    await Promise.all([d && stopMeshd(d), e && stopMeshd(e)]);
  }
});
