/**
 * Traefik Mesh parity end to end (issue 19): objects shaped as Traefik Mesh's own ACL
 * integration tests write them (namespace `test`, a `tool-authorized` and a `tool-forbidden`
 * client, `server-http*` services on port 8080 to whoami on 80, ServiceAccount documents, a
 * rule-less TrafficTarget, a path filter, a header filter in the list form of their CRD, and a
 * 50/50 TrafficSplit whose target is rule-less) go to meshd's file provider with `--acl`, and
 * clients call the names Traefik Mesh's clients call (`<svc>.test.traefik.mesh:8080`). What
 * the clients see must be what Traefik Mesh's tests expect. The objects are written here; the
 * shapes follow their `integration/testdata/acl_enabled`.
 *
 * Pods are loopback addresses of this file's own: clients in 127.0.90.0/24, servers in
 * 127.0.91.0/24. A client binds its Pod's address, which is how meshd tells who it is.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { Child, freePort, waitFor, waitForPort } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const WHOAMI = `${ROOT}examples/quickstart/whoami.ts`;

const TOOL_AUTHORIZED = "127.0.90.1";
const TOOL_FORBIDDEN = "127.0.90.2";
const SERVERS = {
  "server-http": { ip: "127.0.91.1", sa: "server" },
  "server-http-api": { ip: "127.0.91.2", sa: "server-api" },
  "server-http-header": { ip: "127.0.91.3", sa: "server-header" },
  "server-http-split-v1": { ip: "127.0.91.4", sa: "server-split" },
  "server-http-split-v2": { ip: "127.0.91.5", sa: "server-split" },
} as const;
type ServerName = keyof typeof SERVERS;

function serviceAccount(name: string): string {
  return `apiVersion: v1
kind: ServiceAccount
metadata:
  name: ${name}
  namespace: test
`;
}

/** A Pod as Traefik Mesh's testdata has it, plus the status a kubelet would have written. */
function pod(name: string, ip: string, sa: string): string {
  return `apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: test
  labels:
    app: ${name}
spec:
  serviceAccountName: ${sa}
  containers:
    - name: ${name}
      image: traefik/whoami:v1.6.0
      imagePullPolicy: IfNotPresent
      readinessProbe:
        httpGet:
          path: /
          port: 80
        periodSeconds: 1
status:
  phase: Running
  podIP: ${ip}
`;
}

function service(name: string): string {
  return `apiVersion: v1
kind: Service
metadata:
  name: ${name}
  namespace: test
  labels:
    app: ${name}
spec:
  type: ClusterIP
  ports:
    - port: 8080
      name: ${name}
      targetPort: 80
  selector:
    app: ${name}
`;
}

/** What the EndpointSlice controller would write; the whoami listens on `port`, not 80. */
function slice(svc: string, pods: [name: string, ip: string][], port: number): string {
  return `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ${svc}-abcde
  namespace: test
  labels:
    kubernetes.io/service-name: ${svc}
addressType: IPv4
ports:
  - name: ${svc}
    port: ${port}
    protocol: TCP
endpoints:
${
    pods.map(([name, ip]) =>
      `  - addresses: ["${ip}"]\n    conditions: { ready: true }\n    targetRef: { kind: Pod, name: ${name}, namespace: test }`
    ).join("\n")
  }
`;
}

const POLICY = `apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata:
  name: tool-authorized-to-server-http
  namespace: test
spec:
  destination:
    kind: ServiceAccount
    name: server
    namespace: test
  sources:
    - kind: ServiceAccount
      name: tool-authorized
      namespace: test
---
apiVersion: specs.smi-spec.io/v1alpha3
kind: HTTPRouteGroup
metadata:
  name: http-route-group-api
  namespace: test
spec:
  matches:
    - name: api
      pathRegex: /api
      methods: ["GET"]
---
apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata:
  name: traffic-target-path-filter
  namespace: test
spec:
  destination:
    kind: ServiceAccount
    name: server-api
    namespace: test
  rules:
    - kind: HTTPRouteGroup
      name: http-route-group-api
  sources:
    - kind: ServiceAccount
      name: tool-authorized
      namespace: test
---
apiVersion: specs.smi-spec.io/v1alpha3
kind: HTTPRouteGroup
metadata:
  name: http-route-group-header
  namespace: test
spec:
  matches:
    - name: header
      headers:
        - Authorized: "t|True"
---
apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata:
  name: traffic-target-header-filter
  namespace: test
spec:
  destination:
    kind: ServiceAccount
    name: server-header
    namespace: test
  rules:
    - kind: HTTPRouteGroup
      name: http-route-group-header
  sources:
    - kind: ServiceAccount
      name: tool-authorized
      namespace: test
---
apiVersion: split.smi-spec.io/v1alpha3
kind: TrafficSplit
metadata:
  name: server-http-split
  namespace: test
spec:
  service: server-http-split
  backends:
    - service: server-http-split-v1
      weight: 50
    - service: server-http-split-v2
      weight: 50
---
apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata:
  name: tool-authorized-to-server-http-split
  namespace: test
spec:
  destination:
    kind: ServiceAccount
    name: server-split
    namespace: test
  sources:
    - kind: ServiceAccount
      name: tool-authorized
      namespace: test
`;

interface Reply {
  status: number;
  headers: Map<string, string>;
  body: string;
}

/** One request from `source` (bound as the client's address) to meshd, read to the close. */
function curl(source: string, port: number, url: string, headers: string[] = []): Promise<Reply> {
  const slash = url.indexOf("/");
  const host = slash < 0 ? url : url.slice(0, slash);
  const path = slash < 0 ? "/" : url.slice(slash);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress: source });
    const chunks: Uint8Array[] = [];
    socket.on("data", (c: Uint8Array) => chunks.push(c));
    socket.on("error", reject);
    socket.on("end", () => {
      const raw = new TextDecoder().decode(
        chunks.reduce((a, c) => {
          const out = new Uint8Array(a.length + c.length);
          out.set(a);
          out.set(c, a.length);
          return out;
        }, new Uint8Array()),
      );
      const [head = "", ...rest] = raw.split("\r\n\r\n");
      const [statusLine = "", ...fields] = head.split("\r\n");
      resolve({
        status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0),
        headers: new Map(fields.map((f) => {
          const i = f.indexOf(":");
          return [f.slice(0, i).trim().toLowerCase(), f.slice(i + 1).trim()];
        })),
        body: rest.join("\r\n\r\n"),
      });
      socket.destroy();
    });
    socket.write(
      `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${
        headers.map((h) => `${h}\r\n`).join("")
      }Connection: close\r\n\r\n`,
    );
  });
}

Deno.test({
  name: "meshd answers Traefik Mesh's ACL objects as Traefik Mesh's integration tests expect",
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-parity-" });
  const children: Child[] = [];
  try {
    const ports = Object.fromEntries(
      Object.entries(SERVERS).map(([name, s]) => [name, freePort(s.ip)]),
    ) as Record<ServerName, number>;
    for (
      const [name, s] of Object.entries(SERVERS) as [ServerName, (typeof SERVERS)[ServerName]][]
    ) {
      children.push(
        new Child(name, [
          "run",
          "--allow-net",
          WHOAMI,
          "--name",
          name,
          "--listen",
          `${s.ip}:${ports[name]}`,
        ]),
      );
    }
    const docs = [
      serviceAccount("tool-authorized"),
      serviceAccount("tool-forbidden"),
      ...new Set(Object.values(SERVERS).map((s) => serviceAccount(s.sa))),
      pod("tool-authorized", TOOL_AUTHORIZED, "tool-authorized"),
      pod("tool-forbidden", TOOL_FORBIDDEN, "tool-forbidden"),
      ...Object.entries(SERVERS).map(([name, s]) => pod(name, s.ip, s.sa)),
      ...Object.keys(SERVERS).map((name) => service(name)),
      service("server-http-split"),
      ...Object.entries(SERVERS).map(([name, s]) =>
        slice(name, [[name, s.ip]], ports[name as ServerName])
      ),
      // The root's own Service selects no Pod: its traffic goes through the split alone.
    ];
    await Deno.writeTextFile(`${dir}/1.server.yaml`, docs.join("---\n"));
    await Deno.writeTextFile(`${dir}/2.policy.yaml`, POLICY);

    const http = freePort();
    const api = freePort();
    const meshd = spawnMeshd([
      "--config-dir",
      dir,
      "--http-port",
      String(http),
      "--api-port",
      String(api),
      "--acl",
      "--log-format",
      "json",
    ]);
    children.push(meshd);
    await Promise.all(
      (Object.keys(SERVERS) as ServerName[]).map((n) => waitForPort(SERVERS[n].ip, ports[n])),
    );
    await waitFor("meshd to be ready", async () => {
      const r = await fetch(`http://127.0.0.1:${api}/readyz`);
      await r.body?.cancel();
      return r.status === 200 ? true : undefined;
    }, 30_000);

    const expect = async (
      source: string,
      url: string,
      status: number,
      headers: string[] = [],
    ): Promise<Reply> => {
      const r = await curl(source, http, url, headers);
      assert.equal(
        r.status,
        status,
        `${source === TOOL_AUTHORIZED ? "tool-authorized" : "tool-forbidden"} GET ${url} ` +
          `${headers.join(" ")}: expected ${status}, got ${r.status}: ${r.body}`,
      );
      if (status === 403) assert.equal(r.headers.get("x-meshd-error"), "acl-denied");
      return r;
    };

    await t.step("a TrafficTarget without rules lets its sources in, and no one else", async () => {
      const ok = await expect(TOOL_AUTHORIZED, "server-http.test.traefik.mesh:8080", 200);
      assert.match(ok.body, /^name: server-http$/m);
      const denied = await expect(TOOL_FORBIDDEN, "server-http.test.traefik.mesh:8080", 403);
      assert.match(denied.body, /no TrafficTarget lets ServiceAccount "test\/tool-forbidden"/);
      // The older Traefik Mesh name and meshd's own reach the same service.
      await expect(TOOL_AUTHORIZED, "server-http.test.maesh:8080", 200);
      await expect(TOOL_AUTHORIZED, "server-http.test.mesh:8080", 200);
    });

    await t.step("pathRegex is a prefix of the path", async () => {
      await expect(TOOL_AUTHORIZED, "server-http-api.test.traefik.mesh:8080/api", 200);
      const below = await expect(
        TOOL_AUTHORIZED,
        "server-http-api.test.traefik.mesh:8080/api/v1/orders",
        200,
      );
      assert.match(below.body, /^request: GET \/api\/v1\/orders$/m);
      const root = await expect(TOOL_AUTHORIZED, "server-http-api.test.traefik.mesh:8080", 403);
      assert.match(
        root.body,
        /TrafficTarget "test\/traffic-target-path-filter" names ServiceAccount "test\/tool-authorized" as a source, but none of its rules matches GET \//,
      );
      // Dot segments do not carry a request out of the allowed prefix.
      await expect(TOOL_AUTHORIZED, "server-http-api.test.traefik.mesh:8080/api/../admin", 403);
      await expect(TOOL_FORBIDDEN, "server-http-api.test.traefik.mesh:8080/api", 403);
    });

    await t.step("header values are unanchored regular expressions (list form)", async () => {
      const url = "server-http-header.test.traefik.mesh:8080";
      await expect(TOOL_AUTHORIZED, url, 200, ["Authorized: true"]);
      await expect(TOOL_AUTHORIZED, url, 200, ["Authorized: True"]);
      await expect(TOOL_AUTHORIZED, url, 403, ["Authorized: false"]);
      await expect(TOOL_AUTHORIZED, url, 403);
    });

    await t.step("a TrafficSplit with a rule-less target splits for its sources", async () => {
      const seen: Record<string, number> = {};
      for (let i = 0; i < 40; i++) {
        const r = await expect(TOOL_AUTHORIZED, "server-http-split.test.traefik.mesh:8080", 200);
        const name = /^name: (.*)$/m.exec(r.body)?.[1] ?? "?";
        seen[name] = (seen[name] ?? 0) + 1;
      }
      assert.deepEqual(Object.keys(seen).sort(), ["server-http-split-v1", "server-http-split-v2"]);
      await expect(TOOL_FORBIDDEN, "server-http-split.test.traefik.mesh:8080", 403);
    });

    await t.step(
      "rule-less targets are said at info level, ServiceAccount documents not at all",
      () => {
        const infos = meshd.lines.filter((l) => /has no rules/.test(l));
        assert.ok(infos.length >= 2, meshd.lines.join("\n"));
        for (const l of infos) assert.equal(JSON.parse(l).level, "info", l);
        // The ServiceAccount documents of the manifests are skipped without a warning.
        const logged = meshd.lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
        assert.ok(logged.some((l) => l.msg === "config applied"), "the log is read as JSON");
        assert.deepEqual(
          logged.filter((l) => l.level !== "debug" && /kind "ServiceAccount"/.test(l.msg)),
          [],
        );
      },
    );
  } finally {
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(dir, { recursive: true });
  }
});
