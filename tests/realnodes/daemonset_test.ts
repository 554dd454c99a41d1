/**
 * The real-node tier: meshd as users deploy it. Two real nodes (kubelet, containerd, runc, CNI
 * bridge; tests/testenv/real_nodes.ts), meshd's image built here without a registry and
 * imported with ctr, `kubectl apply --server-side -k manifests/` as the README says, the
 * DaemonSet's pods (hostNetwork) Ready on both nodes, the kustomization's meshd-prepare Job
 * pointing CoreDNS (a Pod) at meshd, and an application pod on each node calling a mesh service
 * through its own node's meshd. The host must end exactly as it began.
 */
import assert from "node:assert/strict";
import type { TestCluster } from "../testenv/cluster.ts";
import { normalize, type RealNode, type RealNodes } from "../testenv/real_nodes.ts";
import { waitFor } from "../testenv/process.ts";
import {
  APP_NS,
  appNamespace,
  CAP_NUMBERS,
  execIn,
  installTarget,
  meshdReady,
  type Pod,
  podReady,
  pods,
  podsReady,
  wget,
  withRealNodes,
} from "./_setup.ts";

/** The application: a backend and a client pod on each node, and the Services they use. */
function appObjects(nodes: RealNode[]): unknown[] {
  const service = (name: string, spec: Record<string, unknown>, annotations = {}) => ({
    apiVersion: "v1",
    kind: "Service",
    metadata: { name, namespace: APP_NS, annotations },
    spec,
  });
  const objects: unknown[] = [
    service("whoami", {
      selector: { app: "whoami" },
      ports: [{ name: "web", port: 80, targetPort: 8080 }],
    }),
    service("echo-tcp", {
      selector: { app: "whoami" },
      ports: [{ name: "echo", port: 7000, targetPort: 7000 }],
    }, { "meshd.io/traffic-type": "tcp" }),
    service("echo-udp", {
      selector: { app: "whoami" },
      ports: [{ name: "echo", port: 7001, targetPort: 7001, protocol: "UDP" }],
    }),
    // A TrafficSplit's root and its two backends, one per node's backend pod.
    service("web", {
      selector: { app: "whoami" },
      ports: [{ name: "web", port: 80, targetPort: 8080 }],
    }),
    ...nodes.map((n) =>
      service(`web-v${n.index}`, {
        selector: { app: "whoami", version: `v${n.index}` },
        ports: [{ name: "web", port: 80, targetPort: 8080 }],
      })
    ),
  ];
  for (const n of nodes) {
    const common = {
      nodeName: n.name,
      terminationGracePeriodSeconds: 1,
      automountServiceAccountToken: false,
    };
    objects.push({
      apiVersion: "v1",
      kind: "Pod",
      metadata: {
        name: `whoami-${n.index}`,
        namespace: APP_NS,
        labels: { app: "whoami", version: `v${n.index}` },
      },
      spec: {
        ...common,
        containers: [{
          name: "whoami",
          image: "meshd-test/client:1",
          imagePullPolicy: "Never",
          command: ["/usr/local/bin/loadgen", "serve"],
          env: [{ name: "NODE_NAME", valueFrom: { fieldRef: { fieldPath: "spec.nodeName" } } }],
          ports: [
            { containerPort: 8080 },
            { containerPort: 7000 },
            { containerPort: 7001, protocol: "UDP" },
          ],
          readinessProbe: { httpGet: { path: "/ready", port: 8080 }, periodSeconds: 2 },
        }],
      },
    });
    objects.push({
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: `client-${n.index}`, namespace: APP_NS, labels: { app: "client" } },
      spec: {
        ...common,
        containers: [{
          name: "client",
          image: "meshd-test/client:1",
          imagePullPolicy: "Never",
          command: ["/bin/sleep", "3600"],
        }],
      },
    });
  }
  return objects;
}

/** The TrafficSplit over `web`: all to `web-v<to>`. */
function split(nodes: RealNode[], to: number): unknown {
  return {
    apiVersion: "split.smi-spec.io/v1alpha3",
    kind: "TrafficSplit",
    metadata: { name: "web", namespace: APP_NS },
    spec: {
      service: "web",
      backends: nodes.map((n) => ({ service: `web-v${n.index}`, weight: n.index === to ? 1 : 0 })),
    },
  };
}

const MESHD_IMAGE = "meshd:0.1.0";
const NEXT_IMAGE = "meshd:0.1.0-next";

/** Asks the mesh by name from each node's client: TCP and UDP echoes, and a TrafficSplit. */
async function tcpUdpSplit(c: TestCluster, app: Pod[], nodes: RealNode[]): Promise<void> {
  for (const n of nodes) {
    const client = app.find((p) => p.metadata.name === `client-${n.index}`)!;
    const r = await waitFor(
      `TCP and UDP by name from ${client.metadata.name}`,
      async () => {
        const r = await execIn(c, client, [
          "loadgen",
          "load",
          "--tcp",
          `echo-tcp.${APP_NS}.mesh:7000`,
          "--udp",
          `echo-udp.${APP_NS}.mesh:7001`,
          "--for",
          "2s",
        ]);
        const kinds = JSON.parse(r.out.trim().split("\n").at(-1) ?? "{}").kinds as
          | Record<string, { sent: number; failed: number }>
          | undefined;
        return kinds && Object.values(kinds).every((k) => k.sent > 0 && k.failed === 0)
          ? kinds
          : undefined;
      },
      60_000,
      1_000,
    );
    console.log(`${client.metadata.name}: TCP and UDP echoes by name: ${JSON.stringify(r)}`);
  }
  // The split sends everything to one node's backend, then, changed, to the other's.
  for (const to of nodes.map((n) => n.index)) {
    await Deno.writeTextFile(`${c.dir}/split.json`, JSON.stringify(split(nodes, to)));
    const a = await c.kubectl("apply", "--server-side", "-f", `${c.dir}/split.json`);
    assert.equal(a.code, 0, a.out);
    for (const n of nodes) {
      const client = app.find((p) => p.metadata.name === `client-${n.index}`)!;
      await waitFor(
        `web.${APP_NS}.mesh from ${client.metadata.name} split to web-v${to}`,
        async () => {
          const answers: string[] = [];
          for (let i = 0; i < 6; i++) {
            const r = await wget(c, APP_NS, client, `http://web.${APP_NS}.mesh/`);
            if (r.code !== 0) return undefined;
            answers.push(r.out.trim().split(" ")[0]!);
          }
          return answers.every((a) => a === `pod=whoami-${to}`) ? true : undefined;
        },
        60_000,
        1_000,
      );
    }
    console.log(`TrafficSplit web -> web-v${to}: every answer from whoami-${to}, from both nodes`);
  }
}

/**
 * Pod Security admission by the real API server: meshd's pod (hostNetwork, hostPath, added
 * capabilities, a privileged init container) is refused in a `baseline` namespace, and the
 * `meshd` namespace is labelled `privileged`, where it is admitted (server-side dry run).
 */
async function checkPodSecurity(c: TestCluster): Promise<void> {
  const ds = await c.must("GET", "/apis/apps/v1/namespaces/meshd/daemonsets/meshd");
  const template = (ds["spec"] as { template: { spec: unknown } }).template;
  const ns = await c.must("GET", "/api/v1/namespaces/meshd");
  const labels = (ns["metadata"] as { labels?: Record<string, string> }).labels ?? {};
  assert.equal(labels["pod-security.kubernetes.io/enforce"], "privileged");
  await c.must("POST", "/api/v1/namespaces", {
    apiVersion: "v1",
    kind: "Namespace",
    metadata: {
      name: "meshd-rn-baseline",
      labels: { "pod-security.kubernetes.io/enforce": "baseline" },
    },
  });
  const pod = (namespace: string) => ({
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: "meshd-psa", namespace },
    spec: { ...(template.spec as object), serviceAccountName: "default" },
  });
  const refused = await c.request(
    "POST",
    "/api/v1/namespaces/meshd-rn-baseline/pods?dryRun=All",
    pod("meshd-rn-baseline"),
  );
  assert.equal(refused.status, 403, JSON.stringify(refused.body));
  const why = String(refused.body["message"]);
  assert.match(why, /violates PodSecurity "baseline/);
  assert.match(why, /hostNetwork/);
  console.log(`Pod Security baseline refuses meshd's pod: ${why}`);
  const admitted = await c.request(
    "POST",
    "/api/v1/namespaces/meshd/pods?dryRun=All",
    pod("meshd"),
  );
  assert.equal(admitted.status, 201, JSON.stringify(admitted.body));
}

/** Capability names by number (linux/capability.h), for the ones that may show up. */
function capabilityNames(mask: bigint): string[] {
  const names = Object.entries(CAP_NUMBERS);
  const out: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if ((mask >> BigInt(bit)) & 1n) {
      out.push(names.find(([, n]) => n === bit)?.[0] ?? `cap${bit}`);
    }
  }
  return out.sort();
}

/**
 * On each meshd pod: the capabilities its process holds (exactly the DaemonSet's, no more),
 * no privilege escalation, the data path it chose and why, the health and metrics ports open
 * to the node's pods, and the API on the node's loopback only.
 */
async function checkMeshdPods(
  c: TestCluster,
  rn: RealNodes,
  meshd: Pod[],
  app: Pod[],
  capabilities: string[],
): Promise<void> {
  for (const p of meshd) {
    const n = rn.nodes.find((x) => x.name === p.spec.nodeName)!;
    const pid =
      rn.containerPids(n, p.metadata.uid, p.status.containerStatuses![0]!.containerID!)[0];
    assert.ok(pid, `no process found for ${p.metadata.name}`);
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const cap = (k: string) =>
      BigInt(`0x${status.match(new RegExp(`^${k}:\\s*([0-9a-f]+)`, "m"))![1]}`);
    const eff = capabilityNames(cap("CapEff"));
    assert.deepEqual(eff, [...capabilities].sort(), `${p.metadata.name} runs with ${eff}`);
    assert.deepEqual(capabilityNames(cap("CapBnd")), [...capabilities].sort());
    assert.match(status, /^NoNewPrivs:\s*1$/m, `${p.metadata.name} may gain privileges`);
    const logs = await c.kubectl("-n", "meshd", "logs", p.metadata.name, "-c", "meshd");
    const chosen = logs.out.split("\n").find((l) => l.includes("data path chosen")) ?? "";
    console.log(`${p.metadata.name} (${n.name}): capabilities ${eff.join(", ")}; ${chosen}`);
    assert.match(
      chosen,
      /datapath=ebpf/,
      `the eBPF path is off in ${p.metadata.name}:\n${logs.out}`,
    );
    const init = await c.kubectl("-n", "meshd", "logs", p.metadata.name, "-c", "mount-bpffs");
    console.log(`${p.metadata.name} init container: ${init.out.trim() || "(nothing to do)"}`);

    const client = app.find((a) => a.metadata.name === `client-${n.index}`)!;
    const get = (url: string) => wget(c, APP_NS, client, url);
    const ready = await get(`http://${n.ip}:9001/readyz`);
    assert.equal(ready.code, 0, `readyz from ${client.metadata.name}: ${ready.out}`);
    const metrics = await get(`http://${n.ip}:9002/metrics`);
    assert.equal(metrics.code, 0, `metrics from ${client.metadata.name}: ${metrics.out}`);
    assert.match(metrics.out, /^meshd_/m);
    for (const port of [9000, 9001, 9002]) {
      const api = await get(`http://${n.ip}:${port}/api/config`);
      assert.notEqual(
        api.code,
        0,
        `the API answered ${client.metadata.name} on ${port}: ${api.out}`,
      );
    }
    // On the node itself the API answers (kubectl port-forward reaches it there).
    const local = await c.kubectl(
      "-n",
      "meshd",
      "exec",
      p.metadata.name,
      "-c",
      "meshd",
      "--",
      "bash",
      "-c",
      'exec 3<>/dev/tcp/127.0.0.1/9000 && printf "GET /api/status HTTP/1.0\r\n\r\n" >&3 && cat <&3',
    );
    assert.match(local.out, /^HTTP\/1\.[01] 200/, `the API on ${n.name}'s loopback: ${local.out}`);
  }
}

type LoadCounts = Record<string, { sent: number; failed: number; errors?: string[] }>;

/**
 * Runs the load loop in every client pod (HTTP keep-alive and new connections, TCP, UDP, all
 * by mesh name), and once each has sent some of everything, `disrupt`; waits for the meshd
 * DaemonSet to be rolled out again (`replaces` pods new and Ready, the ones they replaced
 * gone), lets the
 * load go on a while, stops it, and fails on any failed request. Returns a line of figures.
 */
async function underLoad(
  c: TestCluster,
  rn: RealNodes,
  clients: Pod[],
  what: string,
  disrupt: () => Promise<void>,
  replaces: number,
): Promise<string> {
  const before = await pods(c, "meshd", "app.kubernetes.io/name=meshd");
  const runs = clients.map((p) =>
    execIn(c, p, [
      "loadgen",
      "load",
      "--http",
      `http://whoami.${APP_NS}.mesh/`,
      "--tcp",
      `echo-tcp.${APP_NS}.mesh:7000`,
      "--udp",
      `echo-udp.${APP_NS}.mesh:7001`,
      "--for",
      "300s",
    ])
  );
  const progress = async () =>
    await Promise.all(clients.map(async (p) => {
      const r = await execIn(c, p, ["cat", "/tmp/loadgen.progress"]);
      if (r.stderr.trim()) console.log(`kubectl exec in ${p.metadata.name}: ${r.stderr.trim()}`);
      // stdout only: kubectl 1.30.14's exec sometimes ends with a klog line on stderr.
      return r.code === 0 ? JSON.parse(r.stdout) as LoadCounts : {};
    }));
  const least = (all: LoadCounts[]) =>
    Math.min(
      ...all.map((k) => Math.min(...["tcp", "udp", "http-new"].map((x) => k[x]?.sent ?? 0))),
    );
  try {
    await waitFor(
      `the load running in every client (${what})`,
      async () => least(await progress()) >= 20 ? true : undefined,
      60_000,
      500,
    );
    const started = performance.now();
    await disrupt();
    await waitFor(
      `the meshd DaemonSet rolled out after ${what}`,
      async () => {
        const now = await pods(c, "meshd", "app.kubernetes.io/name=meshd");
        const fresh = now.filter((p) => !before.some((b) => b.metadata.uid === p.metadata.uid));
        const replaced = before.filter((b) => !now.some((p) => p.metadata.uid === b.metadata.uid));
        const done = now.length === rn.nodes.length && now.every(podReady) &&
          now.every((p) =>
            !(p as { metadata: { deletionTimestamp?: string } }).metadata.deletionTimestamp
          ) &&
          fresh.length === replaces && replaced.length === replaces;
        return done ? true : undefined;
      },
      300_000,
      1_000,
    );
    const took = (performance.now() - started) / 1000;
    const mark = least(await progress());
    await waitFor(
      "more load after the rollout",
      async () => least(await progress()) >= mark + 20 ? true : undefined,
      60_000,
      500,
    );
    for (const p of clients) await execIn(c, p, ["touch", "/tmp/loadgen.stop"]);
    const results = await Promise.all(runs);
    let sent = 0, failed = 0;
    const per: string[] = [];
    const errors: string[] = [];
    for (const [i, r] of results.entries()) {
      // The load's result is the last line of its stdout: kubectl 1.30.14's exec sometimes
      // ends with a klog line ("E1129 ...") on its own stderr, shown here, never parsed.
      const name = clients[i]!.metadata.name;
      if (r.stderr.trim()) {
        console.log(`kubectl exec in ${name} (exit ${r.code}): ${r.stderr.trim()}`);
      }
      const result = r.stdout.trim().split("\n").at(-1);
      assert.ok(result, `the load in ${name} printed no result (exit ${r.code}): ${r.out}`);
      const out = JSON.parse(result) as {
        ended: string;
        kinds: LoadCounts;
      };
      assert.equal(out.ended, "stop", `the load in ${clients[i]!.metadata.name} ran out of time`);
      for (const [kind, k] of Object.entries(out.kinds)) {
        sent += k.sent;
        failed += k.failed;
        per.push(`${clients[i]!.metadata.name} ${kind} ${k.sent}/${k.failed}`);
        for (const e of k.errors ?? []) errors.push(`${clients[i]!.metadata.name} ${kind}: ${e}`);
      }
    }
    const line = `${what} (rolled out in ${took.toFixed(0)} s): ${sent} sent, ${failed} failed ` +
      `[sent/failed: ${per.join(", ")}]`;
    console.log(line);
    if (failed > 0) {
      const restarts = await meshdRestarts(c).then((r) => r.text, (e) => `meshd pods: ${e}`);
      assert.fail(
        `${line}\n${errors.join("\n")}\n${restarts}\n${await rn.logs(60, "meshd_")}\n${await rn
          .grepNodeLogs(/meshd/)}\n${rn.kubeProxyLogs()}\n${await rn.dropCounters()}`,
      );
    }
    await leaderAfter(c, rn, what);
    return line;
  } finally {
    for (const p of clients) await execIn(c, p, ["touch", "/tmp/loadgen.stop"]).catch(() => {});
    await Promise.allSettled(runs);
  }
}

/**
 * After a step: one of the meshd pods now running holds the controller's Lease, each one that
 * found its config stream's port held by the pod it replaced has bound it since, and no meshd
 * container restarted (a restart drops the node's connections).
 */
async function leaderAfter(c: TestCluster, rn: RealNodes, what: string): Promise<void> {
  const now = await pods(c, "meshd", "app.kubernetes.io/name=meshd");
  const names = now.map((p) => p.metadata.name);
  // A pod that takes over waits out the Lease of a predecessor that left without giving it up.
  await waitFor(
    `a running meshd pod to hold the Lease after ${what}`,
    async () => names.includes(await c.leaseHolder()) ? true : undefined,
    60_000,
    500,
  ).catch(async (e) => {
    throw new Error(
      `${e.message}: held by ${JSON.stringify(await c.leaseHolder())}, pods ${
        names.join(", ")
      }\n${await rn.logs(30, "meshd_")}`,
    );
  });
  for (const p of now) {
    const logs = (await c.kubectl("-n", "meshd", "logs", p.metadata.name, "-c", "meshd")).out;
    if (!logs.includes("the config stream's port is held")) continue;
    await waitFor(
      `${p.metadata.name} to bind the config stream's port after ${what}`,
      async () => {
        const l = (await c.kubectl("-n", "meshd", "logs", p.metadata.name, "-c", "meshd")).out;
        return l.includes("config stream listening") ? true : undefined;
      },
      30_000,
      1000,
    ).catch((e) => {
      throw new Error(`${e.message}\n${logs.split("\n").slice(-30).join("\n")}`);
    });
  }
  const restarts = await meshdRestarts(c);
  assert.equal(restarts.total, 0, `after ${what}:\n${restarts.text}`);
}

/**
 * Each meshd pod's containers: how often they restarted and how the last run ended (reason,
 * exit code, signal, times), which a step that lost requests prints: a process that died
 * leaves no line of its own. `total` is the sum of their restarts.
 */
async function meshdRestarts(c: TestCluster): Promise<{ total: number; text: string }> {
  type Terminated = {
    reason?: string;
    exitCode?: number;
    signal?: number;
    startedAt?: string;
    finishedAt?: string;
  };
  type Status = { name: string; restartCount?: number; lastState?: { terminated?: Terminated } };
  const r = await c.must("GET", "/api/v1/namespaces/meshd/pods");
  const items = r["items"] as {
    metadata: { name: string };
    status?: { containerStatuses?: Status[] };
  }[];
  const lines = ["meshd pods' containers:"];
  let total = 0;
  for (const p of items) {
    for (const s of p.status?.containerStatuses ?? []) {
      total += s.restartCount ?? 0;
      const t = s.lastState?.terminated;
      lines.push(
        `  ${p.metadata.name}/${s.name}: ${s.restartCount ?? 0} restarts` +
          (t
            ? `; the last run ended: ${t.reason ?? "?"}, exit ${t.exitCode ?? "?"}` +
              `${t.signal ? `, signal ${t.signal}` : ""}, ${t.startedAt} to ${t.finishedAt}`
            : ""),
      );
    }
  }
  return { total, text: lines.join("\n") };
}

Deno.test({
  name:
    "meshd DaemonSet on two real nodes serves HTTP, TCP, UDP and splits by name and loses nothing in rollouts and restarts",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await withRealNodes(async (c, nodes) => {
    // Installed as users install it.
    const target = await installTarget(c.dir);
    if (target.note) console.log(target.note);
    const apply = await c.kubectl("apply", "--server-side", "-k", target.path);
    assert.equal(apply.code, 0, `kubectl apply -k ${target.path} failed:\n${apply.out}`);
    const meshd = await meshdReady(c, nodes);

    await appNamespace(c, APP_NS);
    for (const o of appObjects(nodes.nodes)) {
      const obj = o as { kind: string };
      const path = obj.kind === "Service" ? "services" : "pods";
      await c.must("POST", `/api/v1/namespaces/${APP_NS}/${path}`, o);
    }
    const app = await podsReady(c, nodes, APP_NS, "app in (whoami,client)", 2 * nodes.nodes.length);

    // From each node's client pod, through that node's meshd (its pod IP, the HTTP entrypoint).
    for (const n of nodes.nodes) {
      const client = app.find((p) => p.metadata.name === `client-${n.index}`)!;
      const local = meshd.find((p) => p.spec.nodeName === n.name)!;
      const url = `http://${local.status.podIP}:5000/cgi-bin/whoami`;
      const body = await waitFor(
        `a mesh call from ${client.metadata.name} to ${url}`,
        async () => {
          const r = await wget(c, APP_NS, client, url, `Host: whoami.${APP_NS}.mesh`);
          if (r.code !== 0) throw new Error(`wget exited ${r.code}: ${r.out.trim()}`);
          return r.out;
        },
        90_000,
        1_000,
      ).catch(async (e) => {
        throw new Error(`${e.message}\n${await nodes.logs()}`);
      });
      assert.match(body, /pod=whoami-\d node=127\.77\.0\.\d /, `unexpected answer: ${body}`);
      console.log(`${client.metadata.name} -> ${url} (Host whoami.${APP_NS}.mesh): ${body.trim()}`);
    }
    // By name, as applications call: CoreDNS (a Pod) with the block `meshd prepare` adds,
    // meshd's DNS behind the meshd-dns Service, the shadow Service's ClusterIP. prepare is the
    // kustomization's meshd-prepare Job, as its own ServiceAccount: the DaemonSet's may not
    // write CoreDNS's ConfigMap.
    const prepare = await c.kubectl(
      "-n",
      "meshd",
      "wait",
      "--for=condition=complete",
      "job/meshd-prepare",
      "--timeout=120s",
    );
    if (prepare.code !== 0) {
      const log = await c.kubectl("-n", "meshd", "logs", "job/meshd-prepare", "--tail=20");
      const desc = await c.kubectl("-n", "meshd", "describe", "job/meshd-prepare");
      assert.fail(
        `the meshd-prepare Job did not complete:\n${prepare.out}\n${log.out}\n${
          desc.out.slice(-2000)
        }`,
      );
    }
    for (const [sa, want] of [["meshd-prepare", "yes"], ["meshd", "no"]]) {
      const can = await c.kubectl(
        "auth",
        "can-i",
        "update",
        "configmaps/coredns",
        "-n",
        "kube-system",
        `--as=system:serviceaccount:meshd:${sa}`,
      );
      assert.equal(can.out.trim().split("\n").at(-1), want, `can ${sa} update CoreDNS: ${can.out}`);
    }
    const corefile = await c.must("GET", "/api/v1/namespaces/kube-system/configmaps/coredns");
    console.log(
      `Corefile after meshd prepare:\n${(corefile["data"] as Record<string, string>)["Corefile"]}`,
    );
    // This CoreDNS has no reload plugin: a new pod reads the new Corefile.
    const restart = await c.kubectl(
      "-n",
      "kube-system",
      "rollout",
      "restart",
      "deployment/coredns",
    );
    assert.equal(restart.code, 0, restart.out);
    const status = await c.kubectl(
      "-n",
      "kube-system",
      "rollout",
      "status",
      "deployment/coredns",
      "--timeout=120s",
    );
    assert.equal(
      status.code,
      0,
      `CoreDNS did not become Ready:\n${status.out}\n${await nodes.logs()}`,
    );
    for (const n of nodes.nodes) {
      const client = app.find((p) => p.metadata.name === `client-${n.index}`)!;
      const url = `http://whoami.${APP_NS}.mesh/cgi-bin/whoami`;
      const body = await waitFor(
        `a mesh call by name from ${client.metadata.name}`,
        async () => {
          const r = await wget(c, APP_NS, client, url);
          if (r.code !== 0) throw new Error(`wget exited ${r.code}: ${r.out.trim()}`);
          return r.out;
        },
        90_000,
        1_000,
      ).catch(async (e) => {
        const look = await execIn(c, client, ["getent", "hosts", `whoami.${APP_NS}.mesh`]);
        throw new Error(
          `${e.message}\ngetent: ${look.code} ${look.out}\n${await nodes.logs()}`,
        );
      });
      assert.match(body, /pod=whoami-\d node=127\.77\.0\.\d /, `unexpected answer: ${body}`);
      // The shadow Service is node-local: the call went through this node's meshd, which
      // (hostNetwork) connects from the node: from its address on the nodes' network, or from
      // its Pod bridge's when the backend is on the same node.
      const local = meshd.find((p) => p.spec.nodeName === n.name)!;
      assert.equal(local.status.podIP, n.ip, `${local.metadata.name} is not on the node's network`);
      const from = [n.ip, n.gateway].map((a) => a.replaceAll(".", "\\.")).join("|");
      assert.match(
        body,
        new RegExp(`remote=\\[?(::ffff:)?(${from})\\]?:\\d+ `),
        `the call by name from ${n.name} did not go through ${local.metadata.name} (${n.ip}, ${n.gateway}): ${body}`,
      );
      console.log(`${client.metadata.name} -> ${url}: ${body.trim()}`);
    }
    await tcpUdpSplit(c, app, nodes.nodes);
    await checkPodSecurity(c);
    await checkMeshdPods(c, nodes, meshd, app, target.capabilities);

    // Rollouts and restarts under load: none may fail a request, a connection or a datagram.
    // First with the eBPF path (TCP and UDP balanced in the kernel, HTTP redirected to meshd),
    // then with the userspace proxy alone (every kind through meshd's listeners).
    const clients = app.filter((p) => p.metadata.name.startsWith("client-"));
    const kubectl = async (...args: string[]) => {
      const r = await c.kubectl("-n", "meshd", ...args);
      assert.equal(r.code, 0, `kubectl ${args.join(" ")}: ${r.out}`);
    };
    const all = nodes.nodes.length;
    const deletePod = (node: RealNode) => async () => {
      const p = (await pods(c, "meshd", "app.kubernetes.io/name=meshd")).find((p) =>
        p.spec.nodeName === node.name
      )!;
      await kubectl("delete", "pod", p.metadata.name, "--wait=false");
    };
    // The pod that runs the controller: its successor must take over the config stream's
    // port from it, and a new leader must be elected, while the node's traffic goes on.
    const deleteLeader = async () => {
      const leader = await c.leaseHolder();
      const p = (await pods(c, "meshd", "app.kubernetes.io/name=meshd")).find((p) =>
        p.metadata.name === leader
      );
      assert.ok(p, `the Lease's holder ${JSON.stringify(leader)} is not a running meshd pod`);
      await kubectl("delete", "pod", p.metadata.name, "--wait=false");
    };
    /** A rollout that adds `arg` to meshd's arguments. */
    const addArg = (arg: string) => () =>
      kubectl(
        "patch",
        "daemonset/meshd",
        "--type=json",
        "-p",
        JSON.stringify([{
          op: "add",
          path: "/spec/template/spec/containers/0/args/-",
          value: arg,
        }]),
      );
    // What each does, and how many meshd pods it replaces.
    const disruptions: [string, () => Promise<void>, number][] = [
      [
        "kubectl rollout restart (eBPF)",
        () => kubectl("rollout", "restart", "daemonset/meshd"),
        all,
      ],
      ["deleting one meshd pod (eBPF)", deletePod(nodes.nodes[0]!), 1],
      ["an image change (eBPF)", async () => {
        // The same image under a new name on each node, as a new version would arrive.
        for (const n of nodes.nodes) {
          const t = await nodes.ctr(
            n,
            "images",
            "tag",
            "--force",
            normalize(MESHD_IMAGE),
            normalize(NEXT_IMAGE),
          );
          assert.equal(t.code, 0, `${n.name}: ctr images tag: ${t.out}${t.err}`);
        }
        await kubectl(
          "set",
          "image",
          "daemonset/meshd",
          `meshd=${NEXT_IMAGE}`,
          `mount-bpffs=${NEXT_IMAGE}`,
        );
      }, all],
      // The eBPF hooks come off as the new pods start with --datapath=userspace.
      ["switching to the userspace data path", addArg("--datapath=userspace"), all],
      [
        "kubectl rollout restart (userspace)",
        () => kubectl("rollout", "restart", "daemonset/meshd"),
        all,
      ],
      ["deleting the leader's meshd pod (userspace)", deleteLeader, 1],
      // The DaemonSet runs TCP and UDP in the L4 worker by default (--l4-worker=auto, whose
      // probe passes in the shipped image): every step above did, as the check below says.
      ["turning the L4 worker off (--l4-worker=false)", addArg("--l4-worker=false"), all],
      ["deleting the leader's meshd pod (no L4 worker)", deleteLeader, 1],
    ];
    /** Each meshd pod's log lines that say which data path it chose and whether its L4 worker started. */
    const started = async () =>
      await Promise.all(
        (await pods(c, "meshd", "app.kubernetes.io/name=meshd")).map(async (p) => {
          const logs = await c.kubectl("-n", "meshd", "logs", p.metadata.name, "-c", "meshd");
          const line = (what: string) => logs.out.split("\n").find((l) => l.includes(what)) ?? "";
          return {
            pod: p.metadata.name,
            datapath: line("data path chosen"),
            l4: line("proxy workers started"),
          };
        }),
      );
    const figures: string[] = [];
    for (const [what, disrupt, replaces] of disruptions) {
      figures.push(await underLoad(c, nodes, clients, what, disrupt, replaces));
      if (what === "deleting the leader's meshd pod (userspace)") {
        for (const s of await started()) {
          assert.match(s.l4, /l4Worker=true/, `${s.pod}: the L4 worker did not start: ${s.l4}`);
        }
      }
    }
    for (const s of await started()) {
      assert.match(s.datapath, /datapath=userspace/, `${s.pod}: ${s.datapath}`);
      // With one proxy and no L4 worker, no pool of proxy workers starts at all.
      assert.equal(s.l4, "", `${s.pod}: ${s.l4}`);
    }
    console.log(`rollouts under load:\n  ${figures.join("\n  ")}`);
    console.log((await meshdRestarts(c)).text);
    const now = await pods(c, "meshd", "app.kubernetes.io/name=meshd");
    const mib = (b: number | null) => b === null ? "?" : `${(b / 2 ** 20).toFixed(0)} MiB`;
    for (const p of now) {
      const n = nodes.nodes.find((x) => x.name === p.spec.nodeName)!;
      console.log(
        `${n.name}: meshd pod ${p.metadata.name} RSS ${mib(nodes.podRss(n, p.metadata.uid))}; ` +
          `containerd, kubelet and shims ${mib(nodes.nodeRss(n))}`,
      );
    }
  });
});
