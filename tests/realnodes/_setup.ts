/**
 * What the real-node tests share: a two-node cluster with CoreDNS as a Pod, started and torn
 * down around a test body with the host checked to end as it began, and small helpers for
 * Pods and `kubectl exec`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { relative } from "node:path";
import { parseAllDocuments } from "yaml";
import { removeLeftovers, TestCluster } from "../testenv/cluster.ts";
import { type EgressProxy, serveEgress } from "../testenv/egress.ts";
import { sh } from "../testenv/netns_mesh.ts";
import { mountsOfType } from "../../src/datapath/mod.ts";
import {
  CLUSTER_DNS,
  nodeBinaries,
  RealNodes,
  testImages,
  WATCHED_SYSCTLS,
} from "../testenv/real_nodes.ts";
import { waitFor } from "../testenv/process.ts";

export const APP_NS = "meshd-rn-app";
export const ROOT = new URL("../../", import.meta.url).pathname;

/** Capability numbers (linux/capability.h) of the ones meshd's manifests may add. */
export const CAP_NUMBERS: Record<string, number> = {
  NET_BIND_SERVICE: 10,
  NET_ADMIN: 12,
  NET_RAW: 13,
  SYS_PTRACE: 19,
  SYS_ADMIN: 21,
  SYS_RESOURCE: 24,
  PERFMON: 38,
  BPF: 39,
};

export type Pod = {
  metadata: { name: string; uid: string };
  spec: { nodeName?: string };
  status: {
    podIP?: string;
    conditions?: { type: string; status: string }[];
    containerStatuses?: { containerID?: string; restartCount?: number }[];
  };
};

export function podReady(p: Pod): boolean {
  return (p.status.conditions ?? []).some((c) => c.type === "Ready" && c.status === "True");
}

/** What this host looks like where the tier could change it; compared before and after. */
export async function hostState(): Promise<Record<string, string>> {
  const sysctls = WATCHED_SYSCTLS.map((s) => {
    try {
      return `${s}=${Deno.readTextFileSync(`/proc/sys/${s}`).trim()}`;
    } catch {
      return `${s} absent`;
    }
  });
  const mounts = Deno.readTextFileSync("/proc/self/mounts").split("\n").map((l) =>
    l.split(" ").slice(0, 3).join(" ")
  ).sort();
  const cgroups: string[] = [];
  const table = Deno.readTextFileSync("/proc/self/mounts");
  for (const dir of [...mountsOfType(table, "cgroup"), ...mountsOfType(table, "cgroup2")]) {
    // (meshd-test is the scratch cgroups' shared parent: other tiers make it too, and a run
    // removes it once it is empty.)
    for (const e of Deno.readDirSync(dir)) {
      if (e.isDirectory && e.name !== "meshd-test") cgroups.push(`${dir}/${e.name}`);
    }
  }
  const links = JSON.parse(await sh("ip", ["-j", "link", "show"])).map((l: { ifname: string }) =>
    l.ifname
  ).sort();
  // Other test processes' own namespaces and cgroups (they may run meanwhile) are theirs.
  const others = (text: string) =>
    text.split("\n").filter((l) => {
      const m = l.match(/meshd-tc-(\d+)/);
      return !m || Number(m[1]) === Deno.pid;
    }).join("\n");
  const state: Record<string, string> = {
    sysctls: sysctls.join("\n"),
    mounts: mounts.join("\n"),
    cgroups: cgroups.sort().join("\n"),
    links: links.join("\n"),
    addresses: await sh("ip", ["-o", "addr", "show"]),
    routes: await sh("ip", ["route", "show", "table", "all"]),
    netns: (await sh("ip", ["netns", "list"])).split("\n").filter((l) => l.startsWith("meshd-tc-"))
      .join("\n"),
    nftables: await sh("nft", ["list", "ruleset"]),
  };
  for (const k of Object.keys(state)) state[k] = others(state[k]!);
  return state;
}

/** CoreDNS as clusters run it: a Deployment behind the kube-dns Service, its Corefile a ConfigMap. */
export const COREDNS = `
apiVersion: v1
kind: ConfigMap
metadata: { name: coredns, namespace: kube-system }
data:
  Corefile: |
    .:53 {
        errors
        cache 30
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: coredns, namespace: kube-system, labels: { k8s-app: kube-dns } }
spec:
  replicas: 1
  selector: { matchLabels: { k8s-app: kube-dns } }
  template:
    metadata: { labels: { k8s-app: kube-dns } }
    spec:
      dnsPolicy: Default
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers:
        - name: coredns
          image: meshd-test/coredns:1
          imagePullPolicy: Never
          args: [-conf, /etc/coredns/Corefile]
          ports:
            - { name: dns, containerPort: 53, protocol: UDP }
            - { name: dns-tcp, containerPort: 53, protocol: TCP }
          readinessProbe: { tcpSocket: { port: 53 }, periodSeconds: 2 }
          volumeMounts: [{ name: config, mountPath: /etc/coredns, readOnly: true }]
      volumes:
        - name: config
          configMap: { name: coredns, items: [{ key: Corefile, path: Corefile }] }
---
apiVersion: v1
kind: Service
metadata: { name: kube-dns, namespace: kube-system, labels: { k8s-app: kube-dns } }
spec:
  selector: { k8s-app: kube-dns }
  clusterIP: ${CLUSTER_DNS}
  ports:
    - { name: dns, port: 53, protocol: UDP }
    - { name: dns-tcp, port: 53, protocol: TCP }
`;

export async function pods(cluster: TestCluster, ns: string, selector: string): Promise<Pod[]> {
  const r = await cluster.must(
    "GET",
    `/api/v1/namespaces/${ns}/pods?labelSelector=${encodeURIComponent(selector)}`,
  );
  return r["items"] as Pod[];
}

/** `kubectl exec` in an application pod: the API server reaches the pod's kubelet. */
export async function execIn(
  cluster: TestCluster,
  pod: Pod,
  argv: string[],
): Promise<{ code: number; out: string; stdout: string; stderr: string }> {
  return await cluster.kubectl("-n", APP_NS, "exec", pod.metadata.name, "--", ...argv);
}

/**
 * Runs `body` on a fresh cluster with two real nodes and CoreDNS (a Pod, as a cluster has it
 * before meshd is installed), then stops it all and checks that the host is as it was.
 */
export async function withRealNodes(
  body: (c: TestCluster, rn: RealNodes, egress: EgressProxy | null) => Promise<void>,
  options: {
    /**
     * The API server reaches the cluster through an egress proxy (as with konnectivity), so
     * its pod proxy (`/api/v1/namespaces/NS/pods/POD:PORT/proxy/...`) reaches a node's or a
     * Pod's address through that node's netns agent; the kubelets' loopback relays stay as
     * they are. Without it the API server has no route to the nodes' network.
     */
    egress?: boolean;
  } = {},
): Promise<void> {
  const leftovers = await removeLeftovers();
  if (leftovers.length) console.log(`removed leftovers of earlier runs: ${leftovers.join(", ")}`);
  const bin = await nodeBinaries();
  const images = await testImages();
  const before = await hostState();
  const started = performance.now();
  let cluster: TestCluster | null = null;
  let rn: RealNodes | null = null;
  let egress: EgressProxy | null = null;
  try {
    cluster = await TestCluster.start({ kubeletClient: true, egress: options.egress });
    if (options.egress) egress = serveNodeEgress(cluster, () => rn);
    rn = await RealNodes.start(cluster, { count: 2, bin, images });
    await Deno.writeTextFile(`${cluster.dir}/coredns.yaml`, COREDNS);
    const dns = await cluster.kubectl(
      "apply",
      "--server-side",
      "-f",
      `${cluster.dir}/coredns.yaml`,
    );
    assert.equal(dns.code, 0, `kubectl apply CoreDNS failed:\n${dns.out}`);
    await body(cluster, rn, egress);
    console.log(
      `the cluster and the test took ${((performance.now() - started) / 1000).toFixed(0)} s`,
    );
  } finally {
    await rn?.stop();
    await egress?.stop();
    await cluster?.stop();
  }
  const after = await hostState();
  for (const k of Object.keys(before)) {
    assert.equal(after[k], before[k], `the host's ${k} changed during the real-node tier`);
  }
}

/**
 * What to apply: `manifests/` as users do, unless the DaemonSet adds a capability this
 * machine's bounding set lacks (this VM has no CAP_SYS_RESOURCE, see TESTBEDS.md; runc then
 * refuses to start the container). Then a kustomization over `manifests/`, written in `dir`,
 * leaves out only those capabilities, and `note` says so.
 */
export async function installTarget(
  dir: string,
): Promise<{ path: string; note: string; capabilities: string[] }> {
  const bounding = BigInt(
    "0x" +
      (Deno.readTextFileSync("/proc/self/status").match(/^CapBnd:\s*([0-9a-f]+)/m)?.[1] ?? "0"),
  );
  const docs = parseAllDocuments(await Deno.readTextFile(`${ROOT}manifests/daemonset.yaml`));
  const ds = docs.map((d) => d.toJS()).find((o) => o?.kind === "DaemonSet");
  const add: string[] = ds.spec.template.spec.containers[0].securityContext?.capabilities?.add ??
    [];
  const lacking = add.filter((c) =>
    CAP_NUMBERS[c] !== undefined && (bounding & (1n << BigInt(CAP_NUMBERS[c]!))) === 0n
  );
  if (lacking.length === 0) return { path: "manifests/", note: "", capabilities: add };
  const overlay = `${dir}/install`;
  await Deno.mkdir(overlay, { recursive: true });
  await Deno.writeTextFile(
    `${overlay}/kustomization.yaml`,
    [
      "apiVersion: kustomize.config.k8s.io/v1beta1",
      "kind: Kustomization",
      `resources: [${relative(overlay, `${ROOT}manifests`)}]`,
      "patches:",
      "  - target: { kind: DaemonSet, name: meshd }",
      "    patch: |-",
      "      - op: replace",
      "        path: /spec/template/spec/containers/0/securityContext/capabilities/add",
      `        value: ${JSON.stringify(add.filter((c) => !lacking.includes(c)))}`,
      "",
    ].join("\n"),
  );
  return {
    path: overlay,
    note: `this machine's capability bounding set lacks ${lacking.join(", ")}: ` +
      `applied manifests/ without adding ${lacking.length > 1 ? "them" : "it"}`,
    capabilities: add.filter((c) => !lacking.includes(c)),
  };
}

/**
 * The egress proxy of a real-node cluster: loopback (the kubelets' relays) is dialled as
 * asked; a node's address, or a Pod's in its range, through a `forward` of that node's netns
 * agent (a Unix socket in the node's folder, made on first use).
 */
function serveNodeEgress(cluster: TestCluster, nodes: () => RealNodes | null): EgressProxy {
  const forwards = new Map<string, Promise<string>>();
  const inPodRange = (ip: string, cidr: string) => {
    const [net, bits] = cidr.split("/") as [string, string];
    const n = (a: string) => a.split(".").reduce((x, o) => x * 256 + Number(o), 0);
    const size = 2 ** (32 - Number(bits));
    return Math.floor(n(ip) / size) === Math.floor(n(net) / size);
  };
  return serveEgress(cluster.egressSocket, async (host, port) => {
    if (host.startsWith("127.")) return { hostname: host, port };
    const node = nodes()?.nodes.find((n) => n.ip === host || inPodRange(host, n.podCidr));
    if (!node) return null;
    const key = `${host}:${port}`;
    let path = forwards.get(key);
    if (!path) {
      const p = `${node.dir}/egress-${host}-${port}.sock`;
      path = node.agent.call("forward", { path: p, hostname: host, port }).then((r) => {
        if (r.error) throw new Error(`${node.name}: forward to ${key}: ${r.error}`);
        return p;
      });
      forwards.set(key, path);
    }
    return { transport: "unix", path: await path };
  });
}

/** Waits for a Ready meshd pod on each node, or fails with why (a pod exiting again and again). */
export async function meshdReady(c: TestCluster, rn: RealNodes, ns = "meshd"): Promise<Pod[]> {
  const outcome = await waitFor(
    "a Ready meshd pod on each node",
    async () => {
      const list = await pods(c, ns, "app.kubernetes.io/name=meshd");
      const crashing = list.find((p) => (p.status.containerStatuses?.[0]?.restartCount ?? 0) >= 2);
      if (crashing) return { crashing: crashing.metadata.name };
      const ready = rn.nodes.map((n) =>
        list.find((p) => p.spec.nodeName === n.name && podReady(p))
      );
      return ready.every(Boolean) ? { ready: ready as Pod[] } : undefined;
    },
    240_000,
    1_000,
  ).catch((e) => ({ error: (e as Error).message }));
  if ("ready" in outcome && outcome.ready) return outcome.ready;
  const desc = await c.kubectl("-n", ns, "describe", "pods");
  const why = "crashing" in outcome ? `meshd pod ${outcome.crashing} keeps exiting` : outcome.error;
  throw new Error(`${why}\n${desc.out.slice(-3000)}\n${await rn.logs()}`);
}

/** Creates `ns` and waits for its `default` ServiceAccount (Pods are refused until then). */
export async function appNamespace(c: TestCluster, ns: string): Promise<void> {
  await waitFor(
    `the default ServiceAccount of ${ns}`,
    async () => {
      await c.request("POST", "/api/v1/namespaces", {
        apiVersion: "v1",
        kind: "Namespace",
        metadata: { name: ns },
      });
      const r = await c.request("GET", `/api/v1/namespaces/${ns}/serviceaccounts/default`);
      return r.status === 200 ? true : undefined;
    },
    60_000,
    200,
  );
}

/** Waits for the Pods matching `selector` in `ns` (`count` of them) to be Ready. */
export async function podsReady(
  c: TestCluster,
  rn: RealNodes,
  ns: string,
  selector: string,
  count: number,
): Promise<Pod[]> {
  return await waitFor(
    `${count} Pods (${selector}) Ready in ${ns}`,
    async () => {
      const list = await pods(c, ns, selector);
      return list.length === count && list.every(podReady) ? list : undefined;
    },
    120_000,
    1_000,
  ).catch(async (e) => {
    const desc = await c.kubectl("-n", ns, "describe", "pods");
    throw new Error(`${e.message}\n${desc.out.slice(-4000)}\n${await rn.logs()}`);
  });
}

/** busybox wget in `pod` (in `ns`): the exit code and what it printed. */
export async function wget(
  c: TestCluster,
  ns: string,
  pod: Pod,
  url: string,
  ...headers: string[]
): Promise<{ code: number; out: string }> {
  // (busybox 1.35's wget crashes with -T: the time limit is timeout's.)
  return await c.kubectl(
    "-n",
    ns,
    "exec",
    pod.metadata.name,
    "--",
    "timeout",
    "10",
    "busybox",
    "wget",
    "-q",
    "-O-",
    ...headers.flatMap((h) => ["--header", h]),
    url,
  );
}
