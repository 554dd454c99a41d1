/**
 * The data plane end to end: meshd and its backends as real processes on loopback, clients
 * that bind a Pod's address as their source (as a Pod would in a cluster), and assertions on
 * what the clients and the backends see.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { Child, freePort, waitFor, waitForPort } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const WHOAMI = `${ROOT}examples/quickstart/whoami.ts`;
const ECHO = `${ROOT}examples/quickstart/echo.ts`;

// Pod addresses of this file's own, apart from the other tests' ranges.
const WEB_POD = "127.0.7.1"; // ServiceAccount dp/web: the client that is let in
const INTRUDER_POD = "127.0.7.2"; // ServiceAccount dp/intruder: no TrafficTarget names it
const API_V1 = "127.0.8.1";
const API_V2 = "127.0.8.2";
const DB = "127.0.8.10";
const DNS = "127.0.8.20";

interface Mesh {
  dir: string;
  meshd: Child;
  http: number;
  api: number;
  tcpPort: number;
  udpPort: number;
  echo: Child;
  backendPorts: Record<string, number>;
}

function pod(name: string, ip: string, sa: string): string {
  return `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: dp }
spec: { serviceAccountName: ${sa}, nodeName: local }
status: { phase: Running, podIP: ${ip} }
`;
}

function service(name: string, port: number, extra = "", protocol = "TCP"): string {
  return `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: dp${extra ? `, annotations: { ${extra} }` : ""} }
spec: { ports: [{ name: p, port: ${port}, protocol: ${protocol} }] }
`;
}

function slice(
  svc: string,
  name: string,
  endpoints: [ip: string, pod: string][],
  port: number,
  protocol = "TCP",
): string {
  return `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: ${name}, namespace: dp, labels: { kubernetes.io/service-name: ${svc} } }
addressType: IPv4
ports: [{ name: p, port: ${port}, protocol: ${protocol} }]
endpoints:
${
    endpoints.map(([ip, p]) =>
      `  - addresses: ["${ip}"]\n    conditions: { ready: true }\n    targetRef: { kind: Pod, name: ${p} }`
    ).join("\n")
  }
`;
}

function split(v1: number, v2: number): string {
  return `apiVersion: split.smi-spec.io/v1alpha3
kind: TrafficSplit
metadata: { name: api-canary, namespace: dp }
spec:
  service: api
  backends:
    - { service: api-v1, weight: ${v1} }
    - { service: api-v2, weight: ${v2} }
`;
}

const ACCESS = `apiVersion: specs.smi-spec.io/v1alpha3
kind: HTTPRouteGroup
metadata: { name: reads, namespace: dp }
spec:
  matches:
    - { name: get, methods: [GET], pathRegex: "/.*" }
---
apiVersion: specs.smi-spec.io/v1alpha3
kind: TCPRoute
metadata: { name: any, namespace: dp }
spec: {}
---
apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata: { name: web-reads-api, namespace: dp }
spec:
  destination: { kind: ServiceAccount, name: api, namespace: dp }
  rules: [{ kind: HTTPRouteGroup, name: reads, matches: [get] }]
  sources: [{ kind: ServiceAccount, name: web, namespace: dp }]
---
apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata: { name: web-to-db-and-dns, namespace: dp }
spec:
  destination: { kind: ServiceAccount, name: store, namespace: dp }
  rules: [{ kind: TCPRoute, name: any }]
  sources: [{ kind: ServiceAccount, name: web, namespace: dp }]
`;

async function startMesh(opts: { acl: boolean; v2Account?: string }): Promise<{
  mesh: Mesh;
  stop: () => Promise<void>;
}> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-dataplane-" });
  const children: Child[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(dir, { recursive: true });
  };
  try {
    const ports: Record<string, number> = {
      v1: freePort(API_V1),
      v2: freePort(API_V2),
      db: freePort(DB),
      dns: freePort(DNS),
    };
    const whoami = (name: string, ip: string, port: number) =>
      new Child(name, ["run", "--allow-net", WHOAMI, "--name", name, "--listen", `${ip}:${port}`]);
    children.push(whoami("api-v1", API_V1, ports.v1!), whoami("api-v2", API_V2, ports.v2!));
    const echoDb = new Child("db", [
      "run",
      "--allow-net",
      ECHO,
      "--name",
      "db",
      "--listen",
      `${DB}:${ports.db}`,
    ]);
    const echoDns = new Child("dns", [
      "run",
      "--allow-net",
      ECHO,
      "--name",
      "dns",
      "--listen",
      `${DNS}:${ports.dns}`,
      "--udp",
    ]);
    children.push(echoDb, echoDns);

    const docs = [
      pod("web-0", WEB_POD, "web"),
      pod("intruder-0", INTRUDER_POD, "intruder"),
      pod("api-v1-0", API_V1, "api"),
      pod("api-v2-0", API_V2, opts.v2Account ?? "api"),
      pod("db-0", DB, "store"),
      pod("dns-0", DNS, "store"),
      service("api", 80),
      service("api-v1", 80),
      service("api-v2", 80),
      slice("api", "api-a", [[API_V1, "api-v1-0"]], ports.v1!),
      slice("api", "api-b", [[API_V2, "api-v2-0"]], ports.v2!),
      slice("api-v1", "api-v1-a", [[API_V1, "api-v1-0"]], ports.v1!),
      slice("api-v2", "api-v2-a", [[API_V2, "api-v2-0"]], ports.v2!),
      service("db", 5432, '"meshd.io/traffic-type": tcp'),
      slice("db", "db-a", [[DB, "db-0"]], ports.db!),
      service("dns", 53, "", "UDP"),
      slice("dns", "dns-a", [[DNS, "dns-0"]], ports.dns!, "UDP"),
    ];
    await Deno.writeTextFile(`${dir}/mesh.yaml`, docs.join("---\n"));
    await Deno.writeTextFile(`${dir}/access.yaml`, ACCESS);
    await Deno.writeTextFile(`${dir}/split.yaml`, split(75, 25));

    const http = freePort();
    const api = freePort();
    const tcpPort = freePort();
    const udpPort = freePort();
    const meshd = spawnMeshd([
      "--config-dir",
      dir,
      "--http-port",
      String(http),
      "--api-port",
      String(api),
      "--tcp-ports",
      `${tcpPort}-${tcpPort}`,
      "--udp-ports",
      `${udpPort}-${udpPort}`,
      `--acl=${opts.acl}`,
      "--log-format",
      "json",
    ]);
    children.push(meshd);
    await Promise.all([
      waitForPort(API_V1, ports.v1!),
      waitForPort(API_V2, ports.v2!),
      waitForPort(DB, ports.db!),
      waitForPort(DNS, ports.dns!),
    ]);
    await waitFor("meshd to be ready", async () => {
      const r = await fetch(`http://127.0.0.1:${api}/readyz`);
      await r.body?.cancel();
      return r.status === 200 ? true : undefined;
    }, 30_000);
    return {
      mesh: { dir, meshd, http, api, tcpPort, udpPort, echo: echoDb, backendPorts: ports },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** One HTTP request from `source` (bound as the client's address), read to the close. */
function httpFrom(
  source: string,
  port: number,
  head: string,
): Promise<{ status: number; body: string; raw: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress: source });
    const chunks: Uint8Array[] = [];
    socket.on("data", (c: Uint8Array) => chunks.push(c));
    socket.on("error", reject);
    socket.on("end", () => {
      const raw = new TextDecoder().decode(concat(chunks));
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0);
      resolve({ status, body: raw.slice(raw.indexOf("\r\n\r\n") + 4), raw });
      socket.destroy();
    });
    socket.write(head);
  });
}

/** Opens a TCP connection from `source`, sends `data`, half-closes, and reads to the end. */
function tcpFrom(source: string, port: number, data: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress: source }, () => {
      socket.end(data);
    });
    const chunks: Uint8Array[] = [];
    socket.on("data", (c: Uint8Array) => chunks.push(c));
    socket.on("error", reject);
    socket.on("close", () => resolve(new TextDecoder().decode(concat(chunks))));
  });
}

/** Sends one datagram from `source` and returns the reply, or `null` after `waitMs`. */
async function udpFrom(
  source: string,
  port: number,
  data: string,
  waitMs = 2000,
): Promise<string | null> {
  const socket = Deno.listenDatagram({ transport: "udp", hostname: source, port: 0 });
  try {
    await socket.send(new TextEncoder().encode(data), {
      transport: "udp",
      hostname: "127.0.0.1",
      port,
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const reply = await Promise.race([
      socket.receive().then(([d]) => new TextDecoder().decode(d)),
      new Promise<null>((r) => timer = setTimeout(() => r(null), waitMs)),
    ]);
    clearTimeout(timer);
    return reply;
  } finally {
    socket.close();
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

const get = (path: string, extra = "") =>
  `GET ${path} HTTP/1.1\r\nHost: api.dp.mesh\r\nConnection: close\r\n${extra}\r\n`;

function nameOf(body: string): string {
  return /^name: (.*)$/m.exec(body)?.[1] ?? `?${body.slice(0, 80)}`;
}

async function metricValue(mesh: Mesh, pattern: RegExp): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${mesh.api}/metrics`)).text();
  const line = text.split("\n").find((l) => pattern.test(l));
  return line ? Number(line.split(" ").pop()) : 0;
}

async function configVersion(mesh: Mesh): Promise<number> {
  return (await (await fetch(`http://127.0.0.1:${mesh.api}/api/config`)).json()).version;
}

Deno.test({
  name: "TrafficSplit sends 75/25 of 1,000 requests to the backends' endpoints in one hop",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const { mesh, stop } = await startMesh({ acl: false });
  try {
    const counts: Record<string, number> = {};
    const batch = 20;
    for (let i = 0; i < 1000; i += batch) {
      const replies = await Promise.all(
        Array.from({ length: batch }, () => httpFrom("127.0.0.1", mesh.http, get("/"))),
      );
      for (const r of replies) {
        assert.equal(r.status, 200, r.raw);
        counts[nameOf(r.body)] = (counts[nameOf(r.body)] ?? 0) + 1;
        // One hop: the backend saw the client's address and nothing added by a second proxy.
        assert.match(r.body, /^x-forwarded-for: 127\.0\.0\.1$/m);
        assert.match(r.body, /^host: api\.dp\.mesh$/m);
      }
    }
    const v1 = counts["api-v1"] ?? 0;
    assert.equal(v1 + (counts["api-v2"] ?? 0), 1000, JSON.stringify(counts));
    assert.ok(v1 >= 700 && v1 <= 800, `api-v1 got ${v1} of 1000: ${JSON.stringify(counts)}`);
  } finally {
    await stop();
  }
});

Deno.test({
  name: "a split change applies while a load loop runs, and no request fails",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const { mesh, stop } = await startMesh({ acl: false });
  try {
    const before = await configVersion(mesh);
    let failures: string[] = [];
    let sent = 0;
    let running = true;
    const seen: string[] = [];
    // Bounded: four clients, at most 3,000 requests or 10 s, whichever comes first.
    const deadline = Date.now() + 10_000;
    const loop = async () => {
      while (running && sent < 3000 && Date.now() < deadline) {
        sent++;
        const r = await httpFrom("127.0.0.1", mesh.http, get("/")).catch((e) => ({
          status: 0,
          body: String(e),
          raw: String(e),
        }));
        if (r.status !== 200) failures.push(r.raw.slice(0, 200));
        else seen.push(nameOf(r.body));
      }
    };
    const loops = [loop(), loop(), loop(), loop()];
    await waitFor("some requests", () => sent > 100 ? true : undefined);
    await Deno.writeTextFile(`${mesh.dir}/split.yaml`, split(0, 100));
    await waitFor("the new split", async () => (await configVersion(mesh)) > before || undefined);
    const mark = seen.length;
    await waitFor("requests after the change", () => seen.length > mark + 200 || undefined);
    running = false;
    await Promise.all(loops);
    assert.deepEqual(failures, []);
    // Requests that started after the new version was in force went to api-v2 only.
    const after = seen.slice(mark + 20);
    assert.ok(after.length > 100);
    assert.deepEqual([...new Set(after)], ["api-v2"]);
    failures = [];
  } finally {
    await stop();
  }
});

Deno.test({
  name: "ACL lets in only what a TrafficTarget allows, by source address, on HTTP, TCP and UDP",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const { mesh, stop } = await startMesh({ acl: true });
  try {
    await Deno.writeTextFile(`${mesh.dir}/split.yaml`, "");
    await waitFor("the split to go", async () => {
      const c = await (await fetch(`http://127.0.0.1:${mesh.api}/api/config`)).json();
      return c.services.some((s: { ports: { split: unknown }[] }) => s.ports[0]?.split)
        ? undefined
        : true;
    });
    // HTTP: the allowed source and method.
    const ok = await httpFrom(WEB_POD, mesh.http, get("/orders"));
    assert.equal(ok.status, 200, ok.raw);
    // A method the route group does not match: 403 naming what is missing.
    const post = await httpFrom(
      WEB_POD,
      mesh.http,
      "POST /orders HTTP/1.1\r\nHost: api.dp.mesh\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    assert.equal(post.status, 403);
    assert.match(
      post.body,
      /TrafficTarget "dp\/[a-z-]+" names ServiceAccount "dp\/web" as a source, but none of its rules matches POST \/orders to HTTP port 80 of service "dp\/api"/,
    );
    // Another Pod claiming to be the allowed one in X-Forwarded-For gains nothing.
    const spoof = await httpFrom(
      INTRUDER_POD,
      mesh.http,
      get("/orders", `X-Forwarded-For: ${WEB_POD}\r\nForwarded: for=${WEB_POD}\r\n`),
    );
    assert.equal(spoof.status, 403);
    assert.match(spoof.body, /ServiceAccount "dp\/intruder"/);
    // An address that is no Pod at all.
    const stranger = await httpFrom("127.0.0.1", mesh.http, get("/orders"));
    assert.equal(stranger.status, 403);
    assert.match(stranger.body, /source 127\.0\.0\.1 is not a known Pod/);

    // TCP: allowed through; denied is closed at once and never reaches the backend.
    // The backend logs each connection a moment after serving it, so the count is read only
    // once an allowed connection after the denied one has been logged: the log is in order.
    const seen = () => mesh.echo.lines.filter((l) => l.includes("connection from")).length;
    const logged = (n: number) =>
      waitFor(`${n} logged connections`, () => seen() >= n || undefined);
    const before = seen();
    assert.equal(await tcpFrom(WEB_POD, mesh.tcpPort, "ping"), "echo db\nping");
    await logged(before + 1);
    assert.equal(await tcpFrom(INTRUDER_POD, mesh.tcpPort, "ping"), "");
    assert.equal(await tcpFrom(WEB_POD, mesh.tcpPort, "pong"), "echo db\npong");
    await logged(before + 2);
    assert.equal(seen(), before + 2, "the denied connection never reached the backend");

    // UDP: the reply comes back to the allowed client; the other's datagram is dropped and
    // counted.
    assert.equal(await udpFrom(WEB_POD, mesh.udpPort, "query"), "dns: query");
    assert.equal(await udpFrom(INTRUDER_POD, mesh.udpPort, "query", 500), null);
    const denied = await metricValue(
      mesh,
      /^meshd_denied_total\{service="dp\/dns",port="53",protocol="udp",reason="acl"\}/,
    );
    assert.equal(denied, 1);
    const tcpDenied = await metricValue(
      mesh,
      /^meshd_denied_total\{service="dp\/db",port="5432",protocol="tcp",reason="acl"\}/,
    );
    assert.equal(tcpDenied, 1);
  } finally {
    await stop();
  }
});

Deno.test({
  name: "through a split, the source needs access to the backend chosen",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  // api-v2 runs as a ServiceAccount no TrafficTarget names: its share of the split is refused.
  const { mesh, stop } = await startMesh({ acl: true, v2Account: "api-canary" });
  try {
    const statuses: Record<string, number> = {};
    for (let i = 0; i < 40; i++) {
      const r = await httpFrom(WEB_POD, mesh.http, get("/"));
      const key = r.status === 200 ? nameOf(r.body) : String(r.status);
      statuses[key] = (statuses[key] ?? 0) + 1;
      if (r.status === 403) {
        assert.match(r.body, /send GET \/ to HTTP port 80 of service "dp\/api-v2"/, r.body);
      }
    }
    // Smooth weighted round robin: exactly 30 of 40 to api-v1, 10 refused.
    assert.deepEqual(statuses, { "api-v1": 30, "403": 10 });
  } finally {
    await stop();
  }
});
