/**
 * End to end: `meshd run --provider file` on a temporary directory, real backend processes on
 * loopback addresses, and assertions on what a client sees.
 */
import assert from "node:assert/strict";
import { Child, freePort, waitFor, waitForPort } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";
import { rawGet } from "../testenv/backends.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const WHOAMI = `${ROOT}examples/quickstart/whoami.ts`;
const ECHO = `${ROOT}examples/quickstart/echo.ts`;
// Addresses of our own, apart from the quickstart's 127.0.1.x and 127.0.2.x.
const WHOAMI_IPS = ["127.0.3.1", "127.0.3.2", "127.0.3.3"];
const HELLO_IP = "127.0.3.9";
const ECHO_IP = "127.0.4.1";

function slice(
  service: string,
  name: string,
  ip: string,
  port: number,
  portName: string,
  ready = true,
): string {
  return `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ${name}
  namespace: e2e
  labels: { kubernetes.io/service-name: ${service} }
addressType: IPv4
ports: [{ name: ${portName}, port: ${port}, protocol: TCP }]
endpoints:
  - addresses: ["${ip}"]
    conditions: { ready: ${ready} }
`;
}

function service(name: string, port: number, portName: string, annotations = ""): string {
  return `apiVersion: v1
kind: Service
metadata:
  name: ${name}
  namespace: e2e
  annotations: {${annotations}}
spec:
  ports: [{ name: ${portName}, port: ${port} }]
`;
}

interface Mesh {
  dir: string;
  meshd: Child;
  http: number;
  api: number;
  backends: Map<string, number>;
}

async function api<T>(mesh: Mesh, path: string): Promise<T> {
  const res = await fetch(`http://127.0.0.1:${mesh.api}${path}`);
  return await res.json() as T;
}

async function startMesh(): Promise<{ mesh: Mesh; stop: () => Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-e2e-" });
  const children: Child[] = [];
  const backends = new Map<string, number>();
  const stop = async (): Promise<void> => {
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(dir, { recursive: true });
  };
  try {
    for (const [i, ip] of WHOAMI_IPS.entries()) {
      const port = freePort(ip);
      backends.set(`whoami-${i + 1}`, port);
      children.push(
        new Child(`whoami-${i + 1}`, [
          "run",
          "--allow-net",
          WHOAMI,
          "--name",
          `whoami-${i + 1}`,
          "--listen",
          `${ip}:${port}`,
        ]),
      );
    }
    const helloPort = freePort(HELLO_IP);
    backends.set("hello", helloPort);
    children.push(
      new Child("hello", [
        "run",
        "--allow-net",
        WHOAMI,
        "--name",
        "hello",
        "--listen",
        `${HELLO_IP}:${helloPort}`,
      ]),
    );
    const echoPort = freePort(ECHO_IP);
    backends.set("echo", echoPort);
    children.push(
      new Child("echo", [
        "run",
        "--allow-net",
        ECHO,
        "--name",
        "echo-a",
        "--listen",
        `${ECHO_IP}:${echoPort}`,
      ]),
    );

    const whoamiYaml = [
      service("whoami", 80, "web"),
      ...WHOAMI_IPS.map((ip, i) =>
        slice("whoami", `whoami-${i + 1}`, ip, backends.get(`whoami-${i + 1}`)!, "web")
      ),
    ].join("---\n");
    await Deno.writeTextFile(`${dir}/whoami.yaml`, whoamiYaml);
    await Deno.writeTextFile(
      `${dir}/hello.yaml`,
      [service("hello", 8080, "http"), slice("hello", "hello-1", HELLO_IP, helloPort, "http")].join(
        "---\n",
      ),
    );
    await Deno.writeTextFile(
      `${dir}/echo.yaml`,
      [
        service("echo", 7000, "tcp", '"meshd.io/traffic-type": tcp'),
        slice("echo", "echo-1", ECHO_IP, echoPort, "tcp"),
      ]
        .join("---\n"),
    );

    const http = freePort();
    const apiPort = freePort();
    const tcpFirst = freePort();
    const meshd = spawnMeshd([
      "--provider=file",
      "--config-dir",
      dir,
      "--http-port",
      String(http),
      "--api-port",
      String(apiPort),
      "--tcp-ports",
      `${tcpFirst}-${tcpFirst}`,
      "--log-format",
      "json",
    ]);
    children.push(meshd);
    for (const [name, port] of backends) {
      const ip = name === "hello"
        ? HELLO_IP
        : name === "echo"
        ? ECHO_IP
        : WHOAMI_IPS[Number(name.slice(-1)) - 1]!;
      await waitForPort(ip, port);
    }
    const mesh = { dir, meshd, http, api: apiPort, backends };
    await waitFor("meshd to be ready", async () => {
      const r = await fetch(`http://127.0.0.1:${apiPort}/readyz`);
      await r.body?.cancel();
      return r.status === 200 ? true : undefined;
    }, 30_000);
    return { mesh, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

function backendName(body: string): string {
  return /^name: (.*)$/m.exec(body)?.[1] ?? `(no name in ${JSON.stringify(body.slice(0, 80))})`;
}

function logEvents(meshd: Child): Record<string, unknown>[] {
  return meshd.lines.flatMap((l) => {
    try {
      return [JSON.parse(l) as Record<string, unknown>];
    } catch {
      return [];
    }
  });
}

Deno.test("meshd run --provider file routes real traffic and follows the directory", async (t) => {
  const { mesh, stop } = await startMesh();
  try {
    await t.step("each Host reaches its own service", async () => {
      const w = await rawGet(mesh.http, "whoami.e2e.mesh");
      assert.equal(w.status, 200);
      assert.match(backendName(w.body), /^whoami-[123]$/);
      const h = await rawGet(mesh.http, "hello.e2e.mesh:8080");
      assert.equal(h.status, 200);
      assert.equal(backendName(h.body), "hello");
      // The Host the backend sees is the mesh name the client used.
      assert.match(h.body, /^host: hello\.e2e\.mesh:8080$/m);
      const unknown = await rawGet(mesh.http, "nobody.e2e.mesh");
      assert.equal(unknown.status, 404);
      assert.match(unknown.body, /nobody\.e2e\.mesh/);
    });

    await t.step("300 requests spread 100 ± 15 over three endpoints", async () => {
      const counts: Record<string, number> = {};
      for (let i = 0; i < 300; i++) {
        const r = await rawGet(mesh.http, "whoami.e2e.mesh");
        assert.equal(r.status, 200, r.body);
        const n = backendName(r.body);
        counts[n] = (counts[n] ?? 0) + 1;
      }
      assert.deepEqual(Object.keys(counts).sort(), ["whoami-1", "whoami-2", "whoami-3"]);
      for (const [name, n] of Object.entries(counts)) {
        assert.ok(
          n >= 85 && n <= 115,
          `${name} got ${n} of 300 requests, expected 100 ± 15: ${JSON.stringify(counts)}`,
        );
      }
    });

    await t.step(
      "TCP goes through the service's listener, both ways, with half-close",
      async () => {
        const services = await api<{ service: string; protocol: string; address: string }[]>(
          mesh,
          "/api/services",
        );
        const echo = services.find((s) => s.service === "echo");
        assert.ok(echo, `echo missing from /api/services: ${JSON.stringify(services)}`);
        assert.equal(echo.protocol, "tcp");
        const [host, port] = echo.address.split(":");
        const conn = await Deno.connect({ hostname: host!, port: Number(port) });
        await conn.write(new TextEncoder().encode("ping through the mesh\n"));
        await conn.closeWrite();
        const reply = await new Response(conn.readable).text();
        assert.equal(reply, "echo echo-a\nping through the mesh\n");
      },
    );

    // How fast is for a benchmark, not this test: under load an edit can take over a second.
    await t.step("a file edit takes effect without a restart", async () => {
      const before = await api<{ version: number }>(mesh, "/api/config");
      // Take whoami-3 out: its endpoint is no longer ready.
      const yaml = [
        service("whoami", 80, "web"),
        ...WHOAMI_IPS.map((ip, i) =>
          slice(
            "whoami",
            `whoami-${i + 1}`,
            ip,
            mesh.backends.get(`whoami-${i + 1}`)!,
            "web",
            i !== 2,
          )
        ),
      ].join("---\n");
      const t0 = performance.now();
      await Deno.writeTextFile(`${mesh.dir}/whoami.yaml`, yaml);
      await waitFor("the new config version", async () => {
        const c = await api<{ version: number }>(mesh, "/api/config");
        return c.version > before.version ? c.version : undefined;
      });
      const elapsed = performance.now() - t0;
      console.log(`the edit was applied ${elapsed.toFixed(0)} ms after the write`);
      const seen = new Set<string>();
      for (let i = 0; i < 30; i++) {
        seen.add(backendName((await rawGet(mesh.http, "whoami.e2e.mesh")).body));
      }
      assert.deepEqual(
        [...seen].sort(),
        ["whoami-1", "whoami-2"],
        `whoami-3 still served after ${elapsed.toFixed(0)} ms`,
      );
    });

    await t.step(
      "a broken file keeps the old routes serving and logs the file and field",
      async () => {
        const before = await api<{ version: number }>(mesh, "/api/config");
        const broken = service("hello", 8080, "http").replace("port: 8080", 'port: "eighty"') +
          "---\n" +
          slice("hello", "hello-1", HELLO_IP, mesh.backends.get("hello")!, "http");
        await Deno.writeTextFile(`${mesh.dir}/hello.yaml`, broken);
        const event = await waitFor(
          "an error log naming hello.yaml",
          () =>
            logEvents(mesh.meshd).find((e) => e["level"] === "error" && e["file"] === "hello.yaml"),
          5000,
        );
        assert.equal(event["document"], 1);
        assert.equal(event["field"], "spec.ports[0].port");
        assert.match(String(event["error"]), /hello\.yaml/);
        const h = await rawGet(mesh.http, "hello.e2e.mesh:8080");
        assert.equal(h.status, 200, "the last good hello Service must keep serving");
        assert.equal(backendName(h.body), "hello");
        const status = await api<{ errors: { file: string; field: string }[] }>(
          mesh,
          "/api/status",
        );
        assert.deepEqual(status.errors.map((e) => [e.file, e.field]), [[
          "hello.yaml",
          "spec.ports[0].port",
        ]]);
        const after = await api<{ version: number }>(mesh, "/api/config");
        assert.equal(
          after.version,
          before.version,
          "nothing changed, so the version must not move",
        );

        // Now a YAML syntax error in another file: the file's last good objects stay.
        await Deno.writeTextFile(
          `${mesh.dir}/echo.yaml`,
          "apiVersion: v1\nkind: Service\nmetadata: [oops\n",
        );
        const syntax = await waitFor(
          "an error log naming echo.yaml",
          () =>
            logEvents(mesh.meshd).find((e) => e["level"] === "error" && e["file"] === "echo.yaml"),
          5000,
        );
        assert.match(String(syntax["error"]), /echo\.yaml.*document 1.*line/);
        const services = await api<{ service: string }[]>(mesh, "/api/services");
        assert.ok(
          services.some((s) => s.service === "echo"),
          "echo must stay in the config",
        );
        assert.equal(logEvents(mesh.meshd).filter((e) => e["msg"] === "meshd stopping").length, 0);
      },
    );
  } finally {
    await stop();
  }
  const exit = await mesh.meshd.exited();
  assert.equal(
    exit.code,
    0,
    `meshd exited with ${exit.code}:\n${mesh.meshd.lines.slice(-20).join("\n")}`,
  );
});
