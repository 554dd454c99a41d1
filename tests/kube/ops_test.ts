/**
 * `meshd check`, `meshd status` and `meshd stat` against a real API server with no kubelets:
 * Nodes, the DaemonSet's status, meshd's pods and the Lease are written by the test, and each
 * "pod" is a real `meshd run` (file provider) on loopback. The API server proxies to a pod's
 * address only when it is not loopback ("address not allowed"), so the pods get addresses from
 * 192.0.2.0/24 and the API server's traffic to the cluster goes through an HTTP CONNECT proxy
 * of the test's (an EgressSelectorConfiguration, as konnectivity is set up), which takes
 * 192.0.2.11:9002 to the first meshd's metrics port on 127.0.67.1, and so on: the commands
 * read the nodes' metrics exactly as from a laptop, through the pod proxy.
 */
import assert from "node:assert/strict";
import { TestCluster } from "../testenv/cluster.ts";
import { type CliRun, meshd } from "../testenv/cli.ts";
import { applyManifests, tokenKubeconfig } from "../testenv/manifests.ts";
import { corefileFixture, putCorefile } from "../testenv/coredns.ts";
import { serveEgress } from "../testenv/egress.ts";
import { spawnMeshd } from "../testenv/meshd.ts";
import { type Child, freePort, waitFor } from "../testenv/process.ts";

// This file's loopback range: 127.0.67.0/24.
const BACKEND = "127.0.67.10";
const NODES = [
  { name: "n1", kernel: "6.1.0-13-amd64", podIp: "192.0.2.11", host: "127.0.67.1" },
  { name: "n2", kernel: "5.4.0-150-generic", podIp: "192.0.2.12", host: "127.0.67.2" },
];
const NS = "meshd";

interface Check {
  group: string;
  name: string;
  level: string;
  message: string;
  hint?: string;
}

async function check(...argv: string[]): Promise<{ run: CliRun; checks: Check[] }> {
  const run = await meshd("check", "-o", "json", ...argv);
  let parsed: { checks: Check[] };
  try {
    parsed = JSON.parse(run.out);
  } catch {
    throw new Error(`check -o json printed no JSON:\n${run.out}${run.err}`);
  }
  return { run, checks: parsed.checks };
}

const levels = (checks: Check[], name: string) =>
  checks.filter((c) => c.name === name).map((c) => c.level);
const one = (checks: Check[], name: string) => {
  const found = checks.filter((c) => c.name === name);
  assert.equal(found.length, 1, `one "${name}" check in ${JSON.stringify(checks, null, 1)}`);
  return found[0]!;
};

function service(dir: string, name: string, backendPort: number): Promise<void> {
  return Deno.writeTextFile(
    `${dir}/${name}.yaml`,
    `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: ops }
spec:
  ports: [{ name: http, port: 80 }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ${name}-1
  namespace: ops
  labels: { kubernetes.io/service-name: ${name} }
addressType: IPv4
ports: [{ name: http, port: ${backendPort}, protocol: TCP }]
endpoints:
  - addresses: ["${BACKEND}"]
    conditions: { ready: true }
`,
  );
}

/** A GET by hand (fetch() would set Host from the URL). */
async function get(host: string, port: number, path: string): Promise<number> {
  const conn = await Deno.connect({ hostname: host, port });
  try {
    await conn.write(
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nHost: web.ops.mesh\r\nConnection: close\r\n\r\n`,
      ),
    );
    const text = await new Response(conn.readable).text();
    return Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
  } finally {
    try {
      conn.close();
    } catch { /* closed by the readable */ }
  }
}

async function metricsOf(host: string, port: number): Promise<string> {
  const r = await fetch(`http://${host}:${port}/metrics`);
  return await r.text();
}

const configVersion = async (host: string, port: number) =>
  Number(/^meshd_config_version (\d+)$/m.exec(await metricsOf(host, port))?.[1] ?? 0);

Deno.test("meshd check, status and stat read the cluster and every node's metrics through the API server", async (t) => {
  const cluster = await TestCluster.start({ controllerManager: false, egress: true });
  const kc = `--kubeconfig=${cluster.kubeconfig}`;
  const local = `--bpffs=${cluster.dir}/no-bpffs`;
  const children: Child[] = [];
  const metricsPort = new Map<string, number>();
  const egress = serveEgress(cluster.egressSocket, (host, port) => {
    const n = NODES.find((x) => x.podIp === host);
    return n && port === 9002 ? { hostname: n.host, port: metricsPort.get(n.name)! } : null;
  });
  const backendPort = freePort(BACKEND);
  const backend = Deno.serve(
    { hostname: BACKEND, port: backendPort, onListen() {} },
    async (req) => {
      if (new URL(req.url).pathname === "/slow-fail") {
        // a slow failure: 503 after 300 ms, in the (0.25 s, 0.5 s] bucket
        await new Promise((r) => setTimeout(r, 300));
        return new Response("no\n", { status: 503 });
      }
      return new Response("ok\n");
    },
  );
  const dirs = new Map<string, string>();
  const httpPort = new Map<string, number>();
  try {
    for (const n of NODES) {
      await cluster.must("POST", "/api/v1/nodes", {
        apiVersion: "v1",
        kind: "Node",
        metadata: { name: n.name },
      });
      const node = await cluster.must("GET", `/api/v1/nodes/${n.name}`);
      node["status"] = {
        conditions: [{ type: "Ready", status: "True", reason: "KubeletReady", message: "test" }],
        nodeInfo: {
          kernelVersion: n.kernel,
          machineID: n.name,
          systemUUID: n.name,
          bootID: n.name,
          osImage: "Debian GNU/Linux 12",
          containerRuntimeVersion: "containerd://2.4.2",
          kubeletVersion: cluster.version,
          kubeProxyVersion: "",
          operatingSystem: "linux",
          architecture: "amd64",
        },
      };
      await cluster.must("PUT", `/api/v1/nodes/${n.name}/status`, node);
    }

    await t.step(
      "--pre before install: version, RBAC to install, CoreDNS, SMI, kernels",
      async () => {
        const { run, checks } = await check("--pre", kc, local);
        assert.equal(run.code, 1, "no CoreDNS ConfigMap fails");
        assert.deepEqual(
          [...new Set(checks.map((c) => c.group))],
          ["Kubernetes API", "RBAC", "SMI CRDs", "CoreDNS", "Nodes", "Data path on this machine"],
        );
        assert.equal(one(checks, "version").level, "ok");
        assert.match(
          one(checks, "version").message,
          /^Kubernetes 1\.\d+ is in the supported range/,
        );
        assert.equal(one(checks, "rbac-install").level, "ok");
        assert.deepEqual(levels(checks, "smi"), ["warn", "warn", "warn"]);
        assert.equal(one(checks, "coredns").level, "fail");
        assert.match(one(checks, "coredns").hint!, /--coredns-namespace/);
        assert.deepEqual(
          checks.filter((c) => c.name === "kernel").map((c) => [c.level, c.message]),
          [
            ["ok", "n1: kernel 6.1.0-13-amd64 (eBPF needs 5.10)"],
            [
              "warn",
              "n2: kernel 5.4.0-150-generic is older than 5.10, or not a version: meshd runs there " +
              "on the userspace proxy alone",
            ],
          ],
        );
        assert.equal(
          checks.some((c) => c.name === "daemonset"),
          false,
          "--pre looks at no install",
        );
        await putCorefile(cluster, await corefileFixture("coredns-1.11-kubeadm-1.30.Corefile"));
        const ready = await check("--pre", kc, local);
        assert.equal(ready.run.code, 0, "warnings do not fail --pre");
        assert.equal(
          one(ready.checks, "coredns").message,
          "CoreDNS's Corefile is in ConfigMap kube-system/coredns",
        );
        // Traefik Mesh's block holds an alias: prepare will leave it out
        await putCorefile(
          cluster,
          await corefileFixture("coredns-1.8-with-traefik-mesh-1.4.Corefile"),
        );
        const held = one((await check("--pre", kc, local)).checks, "coredns");
        assert.equal(held.level, "warn");
        assert.match(held.message, /already serves traefik\.mesh in a block meshd did not add/);
        await putCorefile(cluster, await corefileFixture("coredns-1.11-kubeadm-1.30.Corefile"));
        // the text form: groups, marks and the hint under each problem
        const text = await meshd("check", "--pre", kc, local);
        assert.equal(text.code, 0);
        assert.match(
          text.out,
          /^Nodes\n-----\n✔ n1: kernel 6\.1\.0-13-amd64 \(eBPF needs 5\.10\)\n‼ n2: /m,
        );
        assert.match(text.out, /\n {4}hint: upgrade the node's kernel to 5\.10 or newer/);
        assert.match(text.out, /\n✔ \d+ passed, \d+ warnings\n$/);
      },
    );

    await t.step("--pre names what an identity without rights may not create", async () => {
      await cluster.must("POST", "/api/v1/namespaces", {
        apiVersion: "v1",
        kind: "Namespace",
        metadata: { name: "ops" },
      });
      await cluster.must("POST", "/api/v1/namespaces/ops/serviceaccounts", {
        apiVersion: "v1",
        kind: "ServiceAccount",
        metadata: { name: "nobody" },
      });
      const nobody = `--kubeconfig=${await tokenKubeconfig(cluster, "ops", "nobody")}`;
      const { run, checks } = await check("--pre", nobody, local);
      assert.equal(run.code, 1);
      const rbac = one(checks, "rbac-install");
      assert.equal(rbac.level, "fail");
      assert.match(rbac.message, /create customresourcedefinitions\.apiextensions\.k8s\.io/);
      assert.match(rbac.message, /create daemonsets\.apps in meshd \(the DaemonSet\)/);
      // Nodes are not the SA's to list: skipped, not failed
      assert.deepEqual(levels(checks, "kernel"), ["skip"]);
    });

    await applyManifests(cluster);
    assert.equal((await meshd("prepare", kc)).code, 0);

    await t.step("installed, nothing running: DaemonSet, leader and each node fail", async () => {
      const { run, checks } = await check(kc, local);
      assert.equal(run.code, 1);
      assert.equal(one(checks, "coredns").level, "ok");
      assert.equal(one(checks, "daemonset").level, "fail");
      assert.match(
        one(checks, "daemonset").message,
        /^DaemonSet meshd\/meshd is not rolled out: 0 of 0/,
      );
      assert.match(one(checks, "daemonset").hint!, /rollout status daemonset meshd/);
      assert.equal(one(checks, "leader").level, "fail");
      assert.match(
        one(checks, "leader").message,
        /no meshd holds the Lease meshd\/meshd-controller/,
      );
      assert.deepEqual(checks.filter((c) => c.name === "node").map((c) => [c.level, c.message]), [
        ["fail", "n1: no meshd pod"],
        ["fail", "n2: no meshd pod"],
      ]);
      // seen by the DaemonSet controller, scheduled nowhere: still not rolled out
      const ds = await cluster.must("GET", `/apis/apps/v1/namespaces/${NS}/daemonsets/meshd`);
      ds["status"] = {
        desiredNumberScheduled: 0,
        currentNumberScheduled: 0,
        numberReady: 0,
        numberMisscheduled: 0,
        observedGeneration: (ds["metadata"] as { generation: number }).generation,
      };
      await cluster.must("PUT", `/apis/apps/v1/namespaces/${NS}/daemonsets/meshd/status`, ds);
      const nowhere = await check(kc, local);
      assert.equal(one(nowhere.checks, "daemonset").level, "fail");
      // --wait gives up when its time is up: the last round's report, exit 1
      const started = performance.now();
      const gaveUp = await meshd("check", "--wait", "1s", kc, local);
      assert.equal(gaveUp.code, 1);
      assert.ok(performance.now() - started >= 1000, "it waited");
      assert.match(
        gaveUp.err,
        /^meshd check: waiting \(round 1, 1s left\): DaemonSet meshd\/meshd is not rolled out/,
      );
      assert.match(gaveUp.out, /\n✘ \d+ passed, \d+ warnings?, 4 failed\n$/);
    });

    // The nodes' meshd: real processes on loopback, each with its own config directory.
    for (const n of NODES) {
      const dir = `${cluster.dir}/config-${n.name}`;
      await Deno.mkdir(dir);
      await service(dir, "web", backendPort);
      dirs.set(n.name, dir);
      metricsPort.set(n.name, freePort(n.host));
      httpPort.set(n.name, freePort(n.host));
      const tcpPort = freePort(n.host);
      children.push(
        spawnMeshd([
          "--config-dir",
          dir,
          "--proxy-address",
          n.host,
          "--http-port",
          String(httpPort.get(n.name)),
          "--api-address",
          n.host,
          "--api-port",
          String(freePort(n.host)),
          "--health-address",
          n.host,
          "--metrics-port",
          String(metricsPort.get(n.name)),
          "--tcp-ports",
          `${tcpPort}-${tcpPort}`,
          "--log-format",
          "json",
        ], { name: `meshd-${n.name}` }),
      );
    }
    for (const n of NODES) {
      await waitFor(`${n.name}'s meshd to apply its config`, async () => {
        return (await configVersion(n.host, metricsPort.get(n.name)!)) > 0 ? true : undefined;
      }, 30_000);
    }
    const ds = await cluster.must("GET", `/apis/apps/v1/namespaces/${NS}/daemonsets/meshd`);
    const generation = (ds["metadata"] as { generation: number }).generation;
    ds["status"] = {
      desiredNumberScheduled: 2,
      currentNumberScheduled: 2,
      numberReady: 2,
      updatedNumberScheduled: 2,
      numberAvailable: 2,
      numberMisscheduled: 0,
      observedGeneration: generation,
    };
    await cluster.must("PUT", `/apis/apps/v1/namespaces/${NS}/daemonsets/meshd/status`, ds);
    const setPod = async (i: number, status: Record<string, unknown>) => {
      const name = `meshd-${NODES[i]!.name}`;
      const pod = await cluster.must("GET", `/api/v1/namespaces/${NS}/pods/${name}`);
      pod["status"] = status;
      await cluster.must("PUT", `/api/v1/namespaces/${NS}/pods/${name}/status`, pod);
    };
    const running = (i: number) => ({
      phase: "Running",
      podIP: NODES[i]!.podIp,
      podIPs: [{ ip: NODES[i]!.podIp }],
      conditions: [{ type: "Ready", status: "True" }],
      containerStatuses: [{
        name: "meshd",
        image: "meshd:0.1.0",
        imageID: "",
        ready: true,
        restartCount: 0,
        state: { running: { startedAt: new Date().toISOString().replace(/\.\d+Z$/, "Z") } },
      }],
    });
    for (const [i, n] of NODES.entries()) {
      await cluster.must("POST", `/api/v1/namespaces/${NS}/pods`, {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name: `meshd-${n.name}`, labels: { "app.kubernetes.io/name": "meshd" } },
        spec: {
          nodeName: n.name,
          serviceAccountName: "meshd",
          automountServiceAccountToken: false,
          hostNetwork: true,
          containers: [{ name: "meshd", image: "meshd:0.1.0" }],
        },
      });
      await setPod(i, running(i));
    }
    const now = new Date().toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
    await cluster.must("POST", `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases`, {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: { name: "meshd-controller" },
      spec: {
        holderIdentity: "meshd-n1",
        leaseDurationSeconds: 3600,
        acquireTime: now,
        renewTime: now,
      },
    });

    await t.step("running: every check passes; nodes show config and data path", async () => {
      const { run, checks } = await check(kc, local);
      assert.equal(run.code, 0, JSON.stringify(checks, null, 1));
      assert.equal(
        one(checks, "daemonset").message,
        "DaemonSet meshd/meshd is rolled out: 2 of 2 pods ready and up to date",
      );
      assert.equal(one(checks, "leader").message, "meshd-n1 leads (Lease meshd/meshd-controller)");
      const v = await configVersion(NODES[0]!.host, metricsPort.get("n1")!);
      // No FFI for these meshd processes: the userspace path, a warning with its reason.
      assert.deepEqual(checks.filter((c) => c.name === "node").map((c) => c.level), [
        "warn",
        "warn",
      ]);
      const [n1, n2] = checks.filter((c) => c.name === "node");
      assert.match(
        n1!.message,
        new RegExp(`^n1: pod meshd-n1, leader, config v${v}, userspace \\(.+\\)$`),
      );
      assert.match(n2!.message, new RegExp(`^n2: pod meshd-n2, config v${v}, userspace \\(.+\\)$`));
      // meshd_build_info: both run this checkout (from source, so the commit is git's)
      const versions = one(checks, "versions");
      assert.equal(versions.level, "ok");
      assert.match(
        versions.message,
        /^every node runs meshd 0\.1\.0 \(commit ([0-9a-f]{7}|unknown), deno \d+\.\d+\.\d+\)$/,
      );
      // the pod proxy went through the egress, to each node's metrics port
      for (const n of NODES) {
        assert.ok(
          (egress.requests.get(`${n.podIp}:9002`) ?? []).includes("GET /metrics"),
          `${n.name}: ${JSON.stringify([...egress.requests])}`,
        );
      }
    });

    await t.step(
      "as meshd's own ServiceAccount (in a meshd pod): what it may not read is skipped",
      async () => {
        const sa = `--kubeconfig=${await tokenKubeconfig(cluster, NS, "meshd")}`;
        const { run, checks } = await check(sa, local);
        assert.equal(run.code, 0, JSON.stringify(checks, null, 1));
        assert.equal(one(checks, "daemonset").level, "skip");
        assert.match(one(checks, "daemonset").message, /Nodes may not be listed/);
        assert.equal(one(checks, "leader").level, "ok");
        // The Role meshd-pod-proxy lets it read each node's metrics through the pod proxy:
        // the node lines are whole (warnings here only for the userspace data path).
        const nodes = checks.filter((c) => c.name === "node");
        assert.deepEqual(nodes.map((c) => c.level), ["warn", "warn"]);
        assert.match(nodes[0]!.message, /^n1: pod meshd-n1, leader, config v\d+, userspace \(/);
        assert.match(nodes[1]!.message, /^n2: pod meshd-n2, config v\d+, userspace \(/);
        assert.equal(one(checks, "versions").level, "ok");
        const status = await meshd("status", sa);
        assert.match(status.out, /^DaemonSet: {2}not readable by this identity$/m);
        assert.equal(status.code, 0, "what it may not read is no failure");
      },
    );

    await t.step("config version skew fails the node behind; --wait sees it catch up", async () => {
      const [a, b] = NODES as [typeof NODES[0], typeof NODES[0]];
      const before = await configVersion(b.host, metricsPort.get("n2")!);
      await service(dirs.get("n1")!, "other", backendPort);
      const ahead = await waitFor("n1's meshd to apply the new config", async () => {
        const v = await configVersion(a.host, metricsPort.get("n1")!);
        return v > before ? v : undefined;
      }, 20_000);
      const { run, checks } = await check(kc, local);
      assert.equal(run.code, 1);
      const n2 = checks.filter((c) => c.name === "node")[1]!;
      assert.equal(n2.level, "fail");
      assert.match(
        n2.message,
        new RegExp(`^n2: pod meshd-n2 routes by config v${before}, the leader is at v${ahead}`),
      );
      const status = await meshd("status", kc);
      assert.match(
        status.out,
        new RegExp(`^Config: {5}skew: v${before} to v${ahead} \\(n2 v${before} behind\\)$`, "m"),
      );
      // n2 catches up while check waits
      const waited = check("--wait", "30s", kc, local);
      await service(dirs.get("n2")!, "other", backendPort);
      const done = await waited;
      assert.equal(done.run.code, 0, JSON.stringify(done.checks.filter((c) => c.level === "fail")));
    });

    await t.step(
      "status: one screen, and -o json; a pod not ready shows with its last errors",
      async () => {
        const s = await meshd("status", "-o", "json", kc);
        assert.equal(s.code, 0, s.out + s.err);
        const j = JSON.parse(s.out);
        assert.equal(j.leader, "meshd-n1");
        assert.equal(j.nodesReady, 2);
        assert.equal(j.nodes, 2);
        assert.equal(j.versions.length, 1, j.versions);
        assert.match(j.versions[0], /^0\.1\.0 \(commit ([0-9a-f]{7}|unknown), deno [\d.]+\)$/);
        assert.deepEqual(j.images, ["meshd:0.1.0"]);
        assert.equal(j.configVersions.min, j.configVersions.max);
        assert.deepEqual(j.perNode.map((n: { datapath: string }) => n.datapath), [
          "userspace",
          "userspace",
        ]);
        await setPod(1, {
          ...running(1),
          conditions: [{ type: "Ready", status: "False" }],
          containerStatuses: [{
            name: "meshd",
            image: "meshd:0.1.0",
            imageID: "",
            ready: false,
            restartCount: 3,
            state: { waiting: { reason: "CrashLoopBackOff" } },
            lastState: {
              terminated: { reason: "Error", exitCode: 1, finishedAt: "2026-11-29T16:00:00Z" },
            },
          }],
        });
        await cluster.must("POST", `/api/v1/namespaces/${NS}/events`, {
          apiVersion: "v1",
          kind: "Event",
          metadata: { name: "meshd-n2.probe" },
          involvedObject: { kind: "Pod", name: "meshd-n2", namespace: NS },
          reason: "Unhealthy",
          message: "Readiness probe failed: HTTP probe failed with statuscode: 503",
          type: "Warning",
          count: 4,
          firstTimestamp: "2026-11-29T16:00:01Z",
          lastTimestamp: "2026-11-29T16:00:02Z",
        });
        const text = await meshd("status", kc);
        assert.equal(text.code, 1, "not every node has a ready meshd");
        assert.match(text.out, /^Nodes: {6}1\/2 with a ready meshd$/m);
        assert.match(text.out, /^Leader: {5}meshd-n1$/m);
        assert.match(text.out, /^n2 +meshd-n2 +no +v\d+ +userspace: /m);
        assert.match(text.out, /^ {2}n2 meshd-n2: waiting, CrashLoopBackOff$/m);
        assert.match(
          text.out,
          /^ {2}n2 meshd-n2: 3 restarts, last ended Error, exit code 1, at 2026-11-29T16:00:00Z$/m,
        );
        assert.match(
          text.out,
          /^ {2}2026-11-29T16:00:02Z Pod\/meshd-n2 Unhealthy \(x4\): Readiness probe failed: HTTP probe failed with statuscode: 503$/m,
        );
        const { checks } = await check(kc, local);
        assert.match(
          checks.filter((c) => c.name === "node")[1]!.message,
          /^n2: meshd pod meshd-n2 is not ready \(Running, CrashLoopBackOff, 3 restarts, last ended Error, exit code 1, at 2026-11-29T16:00:00Z\)$/,
        );
        await setPod(1, running(1));
      },
    );

    await t.step(
      "status shows what a node's /api/status lists: a file that does not parse",
      async () => {
        const bad = `${dirs.get("n2")!}/broken.yaml`;
        await Deno.writeTextFile(bad, "kind: Service\nmetadata: [unclosed\n");
        try {
          await waitFor("n2's metrics to count the bad file", async () => {
            const m = await metricsOf(NODES[1]!.host, metricsPort.get("n2")!);
            return /^meshd_status_problems\{kind="invalid_object"\} 1$/m.test(m) ? true : undefined;
          }, 20_000);
          const text = await meshd("status", kc);
          assert.match(
            text.out,
            /^ {2}n2 meshd-n2: object rejected: Cannot parse file "broken\.yaml", document 1, as YAML: /m,
            text.out,
          );
          const j = JSON.parse((await meshd("status", "-o", "json", kc)).out);
          assert.equal(j.perNode[1].problems.invalid_object, 1);
        } finally {
          await Deno.remove(bad);
        }
        await waitFor("n2's metrics to clear", async () => {
          const m = await metricsOf(NODES[1]!.host, metricsPort.get("n2")!);
          return /^meshd_status_problems\{kind="invalid_object"\} 0$/m.test(m) ? true : undefined;
        }, 20_000);
      },
    );

    await t.step("stat: golden signals over the window, summed over both nodes", async () => {
      const seen = (n: typeof NODES[0]) => (egress.requests.get(`${n.podIp}:9002`) ?? []).length;
      const start = NODES.map(seen);
      const stat = meshd("stat", "ops", "--window", "6s", "-o", "json", kc);
      // the load starts once both nodes' metrics were read the first time
      await waitFor(
        "stat's first read of both nodes",
        () => NODES.every((n, i) => seen(n) > start[i]!) ? true : undefined,
        10_000,
      );
      const codes = await Promise.all([
        ...Array.from({ length: 40 }, () => get(NODES[0]!.host, httpPort.get("n1")!, "/")),
        ...Array.from({ length: 10 }, () => get(NODES[1]!.host, httpPort.get("n2")!, "/slow-fail")),
      ]);
      assert.deepEqual(
        [codes.filter((c) => c === 200).length, codes.filter((c) => c === 503).length],
        [40, 10],
      );
      const r = await stat;
      assert.equal(r.code, 0, r.err);
      const j = JSON.parse(r.out);
      assert.equal(j.nodes, 2);
      assert.deepEqual(j.unread, []);
      const web = j.services.find((s: { service: string }) => s.service === "ops/web");
      assert.ok(web, r.out);
      assert.equal(web.requests, 50, r.out);
      assert.equal(web.successRate, 0.8);
      assert.equal(web.nodes, 2);
      // the window is 6 s plus the second read: a little less than 50 / 6
      assert.ok(web.rps > 50 / 9 && web.rps <= 50 / 6, `rps ${web.rps}`);
      assert.ok(web.p50 < 0.25, `p50 ${web.p50}`);
      assert.ok(web.p95 > 0.25 && web.p95 <= 0.5, `p95 ${web.p95}`);
      assert.ok(web.p99 > 0.25 && web.p99 <= 0.5, `p99 ${web.p99}`);
      // ops/other is in the config and never used: meshd has no series for it yet, so no row
      assert.deepEqual(j.services.map((s: { service: string }) => s.service), ["ops/web"]);
      const table = await meshd("stat", "ops/web", "--window", "1s", kc);
      assert.equal(table.code, 0);
      assert.match(
        table.out,
        /^SERVICE +PORT +PROTO +SUCCESS +RPS +P50 +P95 +P99 +NODES\nops\/web +80 +http /,
      );
    });

    await t.step("a node whose metrics cannot be read is named, not guessed", async () => {
      await children[1]!.stop();
      const { run, checks } = await check(kc, local);
      const n2 = checks.filter((c) => c.name === "node")[1]!;
      assert.equal(n2.level, "warn");
      assert.match(
        n2.message,
        /^n2: pod meshd-n2 is ready; its metrics cannot be read: .*\b50[23]\b/,
      );
      assert.match(n2.hint!, /get pods\/proxy/);
      assert.equal(run.code, 0);
      const stat = await meshd("stat", "--window", "1s", "-o", "json", kc);
      assert.equal(stat.code, 0);
      assert.equal(JSON.parse(stat.out).nodes, 1);
      assert.match(
        stat.err,
        /^meshd stat: warning: left out, its metrics cannot be read: n2 \(meshd-n2\): /m,
      );
    });
  } finally {
    for (const c of children) await c.stop();
    await backend.shutdown();
    await egress.stop();
    await cluster.stop();
  }
});
