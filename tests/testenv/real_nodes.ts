/**
 * Real Kubernetes nodes for the test cluster: on each, containerd, runc, the CNI plugins, the
 * kubelet and kube-proxy, built from the Go module proxy by `tests/testenv/nodes/build.sh`;
 * kube-scheduler binds the Pods. Images come from `tests/testenv/image/build.sh` and are
 * imported with `ctr`; nothing is ever pulled (every registry is pointed at a closed port on
 * loopback).
 *
 * Layout (every name starts with the cluster's {@linkcode PREFIX}, so a later run removes what
 * a crashed one left):
 *
 * - a fabric namespace holds one bridge, the nodes' network 192.0.2.0/24, with no address of
 *   its own and no route anywhere;
 * - each node is a network namespace on that bridge (192.0.2.1N), with routes to the other
 *   nodes' pod ranges and to the Service range (on the bridge, for kube-proxy to rewrite) and
 *   nothing else; it forwards packets (its own `ip_forward`, not the
 *   host's). Its containerd and kubelet run there in a mount namespace of their own
 *   (`nodes/node.sh`): private /var/lib, /var/log and /run, private copies of the sysctls the
 *   kubelet writes, and a scratch cgroup standing for the cgroup v2 root;
 * - Pods are on the node's CNI bridge (`cni0`, host-local addresses from 203.0.113.64N/26),
 *   routed to the test ranges only: no default route, no masquerade;
 * - each node reaches the API server through a relay: the netns agent listens on
 *   127.0.0.1:6443 (the kubelet, kube-proxy) and on {@linkcode API_VIP}:6443, the `kubernetes`
 *   Service's endpoint (Pods, hostNetwork ones too, through kube-proxy), and pipes to a Unix
 *   socket this process serves, which connects to the API server on host loopback.
 *
 * Each node's processes live in cgroups of their own (`<controller>/<prefix>…/daemons`, the
 * Pods under `…/pods`), so stopping a node stops every process it started, shims and
 * containers included, by PID, and nothing else.
 *
 * @module
 */
import { kubeProxyNftablesGate, PREFIX, type TestCluster } from "./cluster.ts";
import { NetnsAgent, sh } from "./netns_mesh.ts";
import { Child, freePort, isAlive, waitFor } from "./process.ts";
import { issueCert } from "../../src/_testing_tls.ts";
import { findCgroup2, mountsOfType } from "../../src/datapath/mod.ts";

const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
const NODE_SH = `${ROOT}/tests/testenv/nodes/node.sh`;
/** Where the Pods and nodes reach the API server: the `kubernetes` Service's endpoint. */
export const API_VIP = "192.0.2.250";
/** The nodes' network. */
export const NODE_NET = "192.0.2.0/24";
/** The Pods' network; node N has 203.0.113.64N/26. */
export const POD_NET = "203.0.113.0/24";
const SERVICE_NET = "198.51.100.0/24";
/** The cluster DNS Service's ClusterIP, as the kubelets tell Pods (CoreDNS runs as a Pod). */
export const CLUSTER_DNS = "198.51.100.10";
/** The kubelet's own sysctls, and the host's forwarding switch, which must end as they began. */
export const WATCHED_SYSCTLS = [
  "kernel/panic",
  "kernel/panic_on_oops",
  "vm/overcommit_memory",
  "vm/panic_on_oom",
  "kernel/keys/root_maxkeys",
  "kernel/keys/root_maxbytes",
  "net/ipv4/ip_forward",
  "net/ipv6/conf/all/forwarding",
  "net/bridge/bridge-nf-call-iptables",
];

/** Binary folders, from `nodes/build.sh`. */
export interface NodeBinaries {
  kube: string;
  kubeNode: string;
  containerd: string;
  runc: string;
  cni: string;
}

/** Builds (once per version, cached outside the repo) and returns the nodes' binary folders. */
export async function nodeBinaries(): Promise<NodeBinaries> {
  const out = await runScript(`${ROOT}/tests/testenv/nodes/build.sh`, "Building the test nodes");
  const m = new Map(out.map((l) => l.split("=", 2) as [string, string]));
  return {
    kube: m.get("kube")!,
    kubeNode: m.get("kube-node")!,
    containerd: m.get("containerd")!,
    runc: m.get("runc")!,
    cni: m.get("cni-plugins")!,
  };
}

/** Builds (cached per content) the test images; returns image reference → docker-archive. */
export async function testImages(): Promise<Map<string, string>> {
  const out = await runScript(`${ROOT}/tests/testenv/image/build.sh`, "Building the test images");
  return new Map(
    out.map((l) => {
      const i = l.lastIndexOf("=");
      return [l.slice(0, i), l.slice(i + 1)] as [string, string];
    }),
  );
}

async function runScript(path: string, what: string): Promise<string[]> {
  const o = await new Deno.Command("bash", { args: [path], stdout: "piped", stderr: "inherit" })
    .output();
  if (!o.success) throw new Error(`${what} failed; see the lines above`);
  return new TextDecoder().decode(o.stdout).trim().split("\n").filter((l) => l.includes("="));
}

/** Mount points of the host's cgroup v1 hierarchies, and of cgroup v2. */
function cgroupMounts(): { v1: string[]; v2: string | null } {
  return {
    v1: mountsOfType(Deno.readTextFileSync("/proc/self/mounts"), "cgroup"),
    v2: findCgroup2() ?? null,
  };
}

/** The cgroup v2 folder that holds the nodes' scratch cgroups. */
function v2Base(v2: string): string {
  return `${v2}/meshd-test`;
}

/** Every cgroup folder below `dir` (itself included), deepest first. */
function cgroupTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    let entries: Deno.DirEntry[] = [];
    try {
      entries = [...Deno.readDirSync(d)];
    } catch {
      return;
    }
    for (const e of entries) if (e.isDirectory) walk(`${d}/${e.name}`);
    out.push(d);
  };
  walk(dir);
  return out;
}

/** `total_rss` of a cgroup v1 memory cgroup, or null. */
function rssOf(dir: string): number | null {
  try {
    const stat = Deno.readTextFileSync(`${dir}/memory.stat`);
    return Number(stat.match(/^total_rss (\d+)$/m)?.[1] ?? NaN);
  } catch {
    return null;
  }
}

function procsOf(dir: string): number[] {
  try {
    return Deno.readTextFileSync(`${dir}/cgroup.procs`).split("\n").map(Number).filter((n) =>
      n > 0
    );
  } catch {
    return [];
  }
}

/**
 * Stops every process in the cgroups at `roots` (each of them and below, in every hierarchy),
 * by PID, and removes the cgroups. `signal` goes first (SIGTERM lets the kubelet and
 * containerd end), then SIGKILL for what is left after `graceMs`.
 */
async function killCgroups(roots: string[], graceMs: number): Promise<void> {
  const all = () => roots.flatMap(cgroupTree);
  const send = (sig: Deno.Signal) => {
    let n = 0;
    for (const d of all()) {
      for (const pid of procsOf(d)) {
        try {
          Deno.kill(pid, sig);
          n++;
        } catch { /* gone */ }
      }
    }
    return n;
  };
  if (send("SIGTERM") > 0) {
    await waitFor(
      "node processes to end",
      () => all().every((d) => procsOf(d).length === 0) || undefined,
      graceMs,
    )
      .catch(() => {});
  }
  for (let i = 0; i < 50 && send("SIGKILL") > 0; i++) await new Promise((r) => setTimeout(r, 100));
  for (const d of all()) {
    for (let i = 0; i < 20; i++) {
      try {
        Deno.removeSync(d);
        break;
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) break;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
}

/** The owning test process's PID in a name `<PREFIX><pid>-…`, or 0. */
function ownerOf(name: string): number {
  return name.startsWith(PREFIX) ? Number(name.slice(PREFIX.length).split("-")[0]) || 0 : 0;
}

/**
 * Removes what crashed real-node runs left: the processes in their cgroups (by PID) and the
 * cgroups themselves. Their network namespaces and folders go with the cluster's leftovers:
 * `removeLeftovers` (cluster.ts) calls this first, so no node process still uses them.
 */
export async function removeRealNodeLeftovers(): Promise<string[]> {
  const { v1, v2 } = cgroupMounts();
  const roots: string[] = [];
  for (const base of [...v1, ...(v2 ? [v2Base(v2)] : [])]) {
    let entries: Deno.DirEntry[] = [];
    try {
      entries = [...Deno.readDirSync(base)];
    } catch {
      continue;
    }
    for (const e of entries) {
      const owner = ownerOf(e.name);
      if (!e.isDirectory || !owner || owner === Deno.pid) continue;
      if (isAlive(owner) && Deno.readTextFileSync(`/proc/${owner}/cmdline`).includes("deno")) {
        continue;
      }
      roots.push(`${base}/${e.name}`);
    }
  }
  if (roots.length) await killCgroups(roots, 5_000);
  return roots;
}

/** One node. */
export interface RealNode {
  index: number;
  name: string;
  netns: string;
  ip: string;
  /** Its Pods' range, and the bridge's own address in it (their gateway). */
  podCidr: string;
  gateway: string;
  dir: string;
  socket: string;
  agent: NetnsAgent;
  process: Child;
  kubeProxy: Child;
  /** The node's cgroups, one per hierarchy (v1 controllers, then the v2 scratch). */
  cgroups: string[];
}

let counter = 0;

/** Two (or more) real nodes joined to `cluster`. Call {@linkcode RealNodes.stop} in a `finally`. */
export class RealNodes {
  readonly cluster: TestCluster;
  readonly bin: NodeBinaries;
  readonly base: string;
  readonly fabric: string;
  readonly nodes: RealNode[] = [];
  scheduler: Child | null = null;
  readonly #namespaces: string[] = [];
  readonly #relay: Deno.Listener<Deno.UnixConn>;
  readonly #socket: string;

  private constructor(cluster: TestCluster, bin: NodeBinaries) {
    this.cluster = cluster;
    this.bin = bin;
    this.base = `${PREFIX}${Deno.pid}-r${++counter}`;
    this.fabric = `${this.base}-f`;
    this.#socket = `${cluster.dir}/${this.base}-api.sock`;
    this.#relay = Deno.listen({ transport: "unix", path: this.#socket });
    this.#serveRelay();
  }

  /**
   * Starts kube-scheduler and `count` nodes, imports `images` (reference → docker-archive)
   * into each node's containerd, and resolves once every node is Ready. Start `cluster` with
   * `kubeletClient: true` for `kubectl exec` and `logs` to reach the kubelets.
   */
  static async start(
    cluster: TestCluster,
    opts: { count: number; bin: NodeBinaries; images: Map<string, string> },
  ): Promise<RealNodes> {
    const rn = new RealNodes(cluster, opts.bin);
    rn.#keeper = setInterval(() => rn.#keepLogs(), 250);
    try {
      await rn.#setUp(opts.count, opts.images);
    } catch (e) {
      const logs = await rn.logs();
      await rn.stop();
      throw new Error(`${(e as Error).message}\n${logs}`);
    }
    return rn;
  }

  async #serveRelay(): Promise<void> {
    const port = Number(new URL(this.cluster.server).port);
    for await (const c of this.#relay) {
      (async () => {
        try {
          const t = await Deno.connect({ hostname: "127.0.0.1", port });
          await Promise.all([
            c.readable.pipeTo(t.writable).catch(() => {}),
            t.readable.pipeTo(c.writable).catch(() => {}),
          ]);
        } catch {
          try {
            c.close();
          } catch { /* closed */ }
        }
      })();
    }
  }

  readonly #kubeletRelays: Deno.Listener[] = [];
  #keeper: ReturnType<typeof setInterval> | undefined;
  readonly #kept = new Set<string>();

  /**
   * Hard-links each container log file the kubelets write into `<node dir>/kept-logs`, so the
   * output of a Pod deleted during a test (the kubelet removes its log folder) can still be
   * shown when the test fails. The link shares the file: what the container writes after it
   * is kept too.
   */
  #keepLogs(): void {
    for (const n of this.nodes) {
      const root = `${n.dir}/var-log/pods`;
      for (const f of walkFiles(root)) {
        if (!f.endsWith(".log") || this.#kept.has(f)) continue;
        try {
          Deno.mkdirSync(`${n.dir}/kept-logs`, { recursive: true });
          // `<namespace>_<pod>_<uid>/<container>/<n>.log`, its slashes as `~`.
          const name = f.slice(root.length + 1).replaceAll("/", "~");
          Deno.linkSync(f, `${n.dir}/kept-logs/${name}`);
          this.#kept.add(f);
        } catch { /* gone before the link, or already linked */ }
      }
    }
  }

  /** Pipes each connection to `listener` (host loopback) to the node's kubelet relay socket. */
  async #serveKubeletRelay(listener: Deno.Listener, path: string): Promise<void> {
    this.#kubeletRelays.push(listener);
    for await (const c of listener) {
      (async () => {
        try {
          const u = await Deno.connect({ transport: "unix", path });
          await Promise.all([
            c.readable.pipeTo(u.writable).catch(() => {}),
            u.readable.pipeTo(c.writable).catch(() => {}),
          ]);
        } catch {
          try {
            c.close();
          } catch { /* closed */ }
        }
      })();
    }
  }

  #record(pid: number): void {
    Deno.writeTextFileSync(`${this.cluster.dir}/pids`, `${pid}\n`, { append: true });
  }

  async #netns(name: string): Promise<void> {
    await sh("ip", ["netns", "add", name]);
    this.#namespaces.push(name);
    await sh("ip", ["-n", name, "link", "set", "lo", "up"]);
  }

  /** A veth from the fabric's bridge (`port` there) to `eth0` in `netns`, holding `ip`/24. */
  async #joinFabric(port: string, netns: string, ip: string): Promise<void> {
    await sh("ip", [
      "-n",
      this.fabric,
      "link",
      "add",
      port,
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      netns,
    ]);
    await sh("ip", ["-n", this.fabric, "link", "set", port, "master", "br0", "up"]);
    await sh("ip", ["-n", netns, "addr", "add", `${ip}/24`, "dev", "eth0"]);
    await sh("ip", ["-n", netns, "link", "set", "eth0", "up"]);
  }

  async #setUp(count: number, images: Map<string, string>): Promise<void> {
    const c = this.cluster;
    // The kubelets' group may do what the Node authorizer would let them: system:node.
    await c.must("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRoleBinding",
      metadata: { name: "meshd-test-nodes" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "system:node" },
      subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "Group", name: "system:nodes" }],
    });
    // The API server as Pods reach it: the `kubernetes` Service (its reconciler is off, as the
    // API server listens on loopback) gets the relay's address on every node.
    await c.must("POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", {
      apiVersion: "discovery.k8s.io/v1",
      kind: "EndpointSlice",
      metadata: {
        name: "kubernetes-relay",
        labels: { "kubernetes.io/service-name": "kubernetes" },
      },
      addressType: "IPv4",
      endpoints: [{ addresses: [API_VIP], conditions: { ready: true } }],
      ports: [{ name: "https", port: 6443, protocol: "TCP" }],
    });
    this.scheduler = new Child("kube-scheduler", [
      `--kubeconfig=${c.kubeconfig}`,
      `--authentication-kubeconfig=${c.kubeconfig}`,
      `--authorization-kubeconfig=${c.kubeconfig}`,
      "--leader-elect=false",
      "--bind-address=127.0.0.1",
      "--secure-port=0",
      "--v=1",
    ], { command: `${this.bin.kubeNode}/kube-scheduler` });
    this.#record(this.scheduler.pid);

    await this.#netns(this.fabric);
    await sh("ip", ["-n", this.fabric, "link", "add", "br0", "type", "bridge"]);
    await sh("ip", ["-n", this.fabric, "link", "set", "br0", "up"]);
    for (let i = 1; i <= count; i++) await this.#addNode(i);
    for (const n of this.nodes) {
      for (const o of this.nodes) {
        if (o !== n) await sh("ip", ["-n", n.netns, "route", "add", o.podCidr, "via", o.ip]);
      }
    }
    for (const n of this.nodes) {
      await waitFor(
        `containerd on ${n.name}`,
        async () => {
          if (!isAlive(n.process.pid)) throw new Error(`${n.name} exited`);
          return (await this.ctr(n, "version")).code === 0 ? true : undefined;
        },
        60_000,
        200,
      );
      for (const [ref, archive] of images) {
        const r = await this.ctr(n, "images", "import", archive);
        if (r.code !== 0) throw new Error(`${n.name}: ctr images import ${ref}: ${r.out}${r.err}`);
      }
      const list = await this.ctr(n, "images", "ls", "-q");
      for (const ref of images.keys()) {
        if (!list.out.includes(normalize(ref))) {
          throw new Error(`${n.name}: ${normalize(ref)} is not in containerd after import`);
        }
      }
    }
    await Promise.all(this.nodes.map((n) => this.waitNodeReady(n)));
    // Pods are refused until their namespace's `default` ServiceAccount exists.
    await waitFor(
      "the default ServiceAccount",
      async () => {
        const r = await c.request("GET", "/api/v1/namespaces/default/serviceaccounts/default");
        return r.status === 200 ? true : undefined;
      },
      60_000,
      200,
    );
  }

  async #addNode(i: number): Promise<void> {
    const c = this.cluster;
    // The node's name is also its Hostname address, which the API server dials first (for
    // `kubectl exec` and `logs`): a loopback address on the host where this process relays to
    // the kubelet inside the node's namespace.
    const name = `127.77.0.${i}`;
    const kubeletPort = freePort(name);
    const netns = `${this.base}-n${i}`;
    const nodeIp = `192.0.2.${10 + i}`;
    const podCidr = `203.0.113.${64 * i}/26`;
    const gateway = `203.0.113.${64 * i + 1}`;
    const dir = `${c.dir}/node-${i}`;
    await Deno.mkdir(`${dir}/cni/net.d`, { recursive: true });
    await this.#netns(netns);
    await this.#joinFabric(`n${i}`, netns, nodeIp);
    await sh("ip", ["-n", netns, "addr", "add", `${API_VIP}/32`, "dev", "lo"]);
    // ClusterIPs from the node itself (hostNetwork Pods such as meshd, which reach the API
    // server at the `kubernetes` Service): connect() needs a route before kube-proxy's output
    // hook rewrites the address to an endpoint. A real node's default route serves; here the
    // Service range goes to the nodes' fabric, which leads nowhere else.
    await sh("ip", ["-n", netns, "route", "add", SERVICE_NET, "dev", "eth0", "src", nodeIp]);
    // This namespace's own switch: the node routes between its Pods and the other nodes.
    await sh("ip", ["netns", "exec", netns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);

    const agent = new NetnsAgent(name, netns, c.dir);
    this.#record(agent.pid);
    for (const hostname of ["127.0.0.1", API_VIP]) {
      const r = await agent.call("relay", { hostname, port: 6443, path: this.#socket });
      if (r.error) throw new Error(`${name}: API relay on ${hostname}: ${r.error}`);
    }

    const kubeletSocket = `${dir}/kubelet-relay.sock`;
    const f = await agent.call("forward", {
      path: kubeletSocket,
      hostname: nodeIp,
      port: kubeletPort,
    });
    if (f.error) throw new Error(`${name}: kubelet relay: ${f.error}`);
    this.#serveKubeletRelay(Deno.listen({ hostname: name, port: kubeletPort }), kubeletSocket);

    // Its identity: system:node:<name> in system:nodes.
    const id = await issueCert(c.dir, `kubelet-${i}`, {
      subj: `/O=system:nodes/CN=system:node:${name}`,
      ext: "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    });
    const kubeconfig = kubeconfigFor("https://127.0.0.1:6443", c.caCert, id, `kubelet-${i}`);
    await Deno.writeTextFile(`${dir}/kubelet.kubeconfig`, kubeconfig);
    const admin = (await Deno.readTextFile(c.kubeconfig)).replace(
      c.server,
      "https://127.0.0.1:6443",
    );
    await Deno.writeTextFile(`${dir}/admin.kubeconfig`, admin);

    // cgroups: `daemons` for containerd, the kubelet and the shims; `pods` as the kubelet's root.
    const { v1, v2 } = cgroupMounts();
    if (!v2 || v1.length === 0) {
      throw new Error(
        "The real-node tier needs hybrid cgroups (v1 controllers and a cgroup v2 mount), as " +
          `this project's machines have; found ${v1.length} v1 hierarchies and ${
            v2 ?? "no"
          } cgroup v2`,
      );
    }
    const cgName = `${this.base}-n${i}`;
    const cgroups = [...v1.map((m) => `${m}/${cgName}`), `${v2Base(v2)}/${cgName}`];
    for (const cg of cgroups) {
      for (const sub of ["", "/daemons", "/pods"]) {
        await Deno.mkdir(`${cg}${sub}`, { recursive: true });
        // A new cpuset cgroup has no CPUs or memory nodes until given its parent's.
        for (const f of ["cpuset.cpus", "cpuset.mems"]) {
          try {
            const parent = Deno.readTextFileSync(`${cg}${sub}/../${f}`);
            Deno.writeTextFileSync(`${cg}${sub}/${f}`, parent);
          } catch { /* not the cpuset hierarchy */ }
        }
      }
    }
    const v1Node = v1.map((m) => `${m}/${cgName}`);

    await Deno.writeTextFile(
      `${dir}/env`,
      [
        `CONTAINERD_BIN=${this.bin.containerd}`,
        `KUBE_NODE_BIN=${this.bin.kubeNode}`,
        `RUNC_BIN=${this.bin.runc}`,
        `NODE_NAME=${name}`,
        `NODE_IP=${nodeIp}`,
        `CGROUP_V1="${v1Node.join(" ")}"`,
        `CGROUP_V2=${v2Base(v2)}/${cgName}`,
        "",
      ].join("\n"),
    );
    await Deno.writeTextFile(`${dir}/containerd.toml`, containerdConfig(dir, this.bin.cni));
    await Deno.mkdir(`${dir}/certs.d/_default`, { recursive: true });
    // No registry is ever reached: every pull would go to a closed port on loopback.
    await Deno.writeTextFile(
      `${dir}/certs.d/_default/hosts.toml`,
      'server = "http://127.0.0.1:9"\n[host."http://127.0.0.1:9"]\n  capabilities = ["pull", "resolve"]\n',
    );
    await Deno.writeTextFile(
      `${dir}/cni/net.d/10-meshd-test.conflist`,
      cniConfig(podCidr, gateway),
    );
    // Pods' DNS until a test gives them one: an address on the nodes' network nobody has.
    await Deno.writeTextFile(`${dir}/resolv.conf`, "nameserver 192.0.2.253\n");
    await Deno.writeTextFile(
      `${dir}/kubelet.yaml`,
      kubeletConfig({
        dir,
        nodeIp,
        port: kubeletPort,
        cgroupRoot: `/${cgName}/pods`,
        caFile: `${c.dir}/ca.crt`,
      }),
    );

    const process = new Child(`node ${name}`, [
      `--net=/run/netns/${netns}`,
      "unshare",
      "--mount",
      "--propagation",
      "private",
      "bash",
      NODE_SH,
      dir,
    ], { command: "nsenter" });
    this.#record(process.pid);
    const kubeProxy = new Child(`kube-proxy ${name}`, [
      "netns",
      "exec",
      netns,
      `${this.bin.kube}/kube-proxy`,
      `--config=${await this.#kubeProxyConfig(dir, name)}`,
      "--v=1",
    ], { command: "ip" });
    this.#record(kubeProxy.pid);
    this.nodes.push({
      index: i,
      name,
      netns,
      ip: nodeIp,
      podCidr,
      gateway,
      dir,
      socket: `${dir}/containerd.sock`,
      agent,
      process,
      kubeProxy,
      cgroups,
    });
  }

  /**
   * A workstation on the nodes' network, as a developer's machine beside a kind cluster: a
   * network namespace on the fabric (192.0.2.100) with routes to every node's Pods and nothing
   * else, the API server at https://127.0.0.1:6443 (relayed, as on the nodes), and an admin
   * kubeconfig for it. Removed with the nodes.
   */
  async workstation(): Promise<{ netns: string; ip: string; kubeconfig: string }> {
    const netns = `${this.base}-w`;
    const ip = "192.0.2.100";
    await this.#netns(netns);
    await this.#joinFabric("w0", netns, ip);
    for (const n of this.nodes) {
      await sh("ip", ["-n", netns, "route", "add", n.podCidr, "via", n.ip]);
    }
    const agent = new NetnsAgent("workstation", netns, this.cluster.dir);
    this.#record(agent.pid);
    this.#agents.push(agent);
    const r = await agent.call("relay", { hostname: "127.0.0.1", port: 6443, path: this.#socket });
    if (r.error) throw new Error(`workstation: API relay: ${r.error}`);
    const kubeconfig = `${this.cluster.dir}/workstation.kubeconfig`;
    await Deno.writeTextFile(
      kubeconfig,
      (await Deno.readTextFile(this.cluster.kubeconfig)).replace(
        this.cluster.server,
        "https://127.0.0.1:6443",
      ),
    );
    return { netns, ip, kubeconfig };
  }

  readonly #agents: NetnsAgent[] = [];

  async #kubeProxyConfig(dir: string, name: string): Promise<string> {
    const file = `${dir}/kube-proxy.yaml`;
    await Deno.writeTextFile(
      file,
      [
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1",
        "kind: KubeProxyConfiguration",
        "clientConnection:",
        `  kubeconfig: ${dir}/admin.kubeconfig`,
        `hostnameOverride: ${name}`,
        "mode: nftables",
        ...kubeProxyNftablesGate(this.cluster.version),
        `clusterCIDR: ${POD_NET}`,
        "healthzBindAddress: 127.0.0.1:10256",
        "metricsBindAddress: 127.0.0.1:10249",
        "conntrack:",
        "  maxPerCore: 0",
        "  min: 0",
        "  tcpEstablishedTimeout: 0s",
        "  tcpCloseWaitTimeout: 0s",
        "",
      ].join("\n"),
    );
    return file;
  }

  /**
   * Runs `ctr` against node `n`'s containerd, in the `k8s.io` namespace: `out` is its stdout,
   * `err` its stderr less containerd's cgroup v1 deprecation warnings.
   */
  async ctr(n: RealNode, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
    const o = await new Deno.Command(`${this.bin.containerd}/ctr`, {
      args: ["--address", n.socket, "--namespace", "k8s.io", ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    const err = dec.decode(o.stderr).split("\n").filter((l) => l && !l.includes("cgroup v1"))
      .join("\n");
    return { code: o.code, out: dec.decode(o.stdout), err };
  }

  /**
   * Runs `argv` in container `id` on node `n`, as `kubectl exec` does, through containerd.
   * (The FIFOs go to the node's folder: its containerd does not see the host's /run.)
   */
  async exec(
    n: RealNode,
    id: string,
    argv: string[],
  ): Promise<{ code: number; out: string; err: string }> {
    await Deno.mkdir(`${n.dir}/fifo`, { recursive: true });
    return await this.ctr(
      n,
      "tasks",
      "exec",
      "--fifo-dir",
      `${n.dir}/fifo`,
      "--exec-id",
      `t${crypto.randomUUID()}`,
      id,
      ...argv,
    );
  }

  /**
   * The resident memory of Pod `uid` on node `n`, in bytes: `total_rss` of its memory cgroup
   * (cgroup v1), or null when the Pod has none there.
   */
  podRss(n: RealNode, uid: string): number | null {
    const dir = cgroupTree(`${this.#memoryCgroup(n)}/pods`).find((d) => d.endsWith(`/pod${uid}`));
    return dir ? rssOf(dir) : null;
  }

  /**
   * The host PIDs of container `containerId` (`containerd://…` or the bare id) of Pod `uid` on
   * node `n`, from its memory cgroup.
   */
  containerPids(n: RealNode, uid: string, containerId: string): number[] {
    const id = containerId.replace(/^[a-z]+:\/\//, "");
    const pod = cgroupTree(`${this.#memoryCgroup(n)}/pods`).find((d) => d.endsWith(`/pod${uid}`));
    return pod ? procsOf(`${pod}/${id}`) : [];
  }

  /** The resident memory of node `n`'s own processes (containerd, kubelet, shims), in bytes. */
  nodeRss(n: RealNode): number | null {
    return rssOf(`${this.#memoryCgroup(n)}/daemons`);
  }

  #memoryCgroup(n: RealNode): string {
    const memory = cgroupMounts().v1.find((m) => m.endsWith("/memory"));
    return n.cgroups.find((c) => c.startsWith(`${memory}/`)) ?? "/nonexistent";
  }

  /** Waits for node `n` to be Ready. */
  async waitNodeReady(n: RealNode, timeoutMs = 120_000): Promise<void> {
    await waitFor(
      `node ${n.name} to be Ready`,
      async () => {
        if (!isAlive(n.process.pid)) throw new Error(`${n.name}'s node.sh exited`);
        const r = await this.cluster.request("GET", `/api/v1/nodes/${n.name}`);
        const conds = (r.body["status"] as { conditions?: { type: string; status: string }[] })
          ?.conditions ?? [];
        return conds.some((c) => c.type === "Ready" && c.status === "True") ? true : undefined;
      },
      timeoutMs,
      500,
    );
  }

  /**
   * The last `lines` lines of each node's kubelet and containerd logs that match `re`: what
   * they did to a Pod (probes, kills, restarts, OOM events).
   */
  async grepNodeLogs(re: RegExp, lines = 40): Promise<string> {
    const out: string[] = [];
    for (const n of this.nodes) {
      for (const f of ["kubelet.log", "containerd.log"]) {
        const text = await Deno.readTextFile(`${n.dir}/${f}`).catch(() => "");
        const hits = text.split("\n").filter((l) => re.test(l)).slice(-lines);
        out.push(`--- ${n.name} ${f}, lines matching ${re}`, ...hits);
      }
    }
    return out.join("\n");
  }

  /**
   * Each node's kernel counters of TCP connections dropped before an accept (a full accept or
   * SYN queue) and of UDP datagrams dropped, in its network namespace (meshd's, with
   * hostNetwork): whether a lost SYN or datagram died at a listener there.
   */
  async dropCounters(): Promise<string> {
    const names = [
      "TcpExtListenOverflows",
      "TcpExtListenDrops",
      "TcpExtTCPReqQFullDrop",
      "UdpRcvbufErrors",
      "UdpInErrors",
      "UdpNoPorts",
    ];
    const out: string[] = [];
    for (const n of this.nodes) {
      const text = await sh("ip", ["netns", "exec", n.netns, "nstat", "-asz", ...names])
        .catch((e) => `nstat: ${(e as Error).message}`);
      const got = text.split("\n").filter((l) => names.some((x) => l.startsWith(x)))
        .map((l) => l.split(/\s+/).slice(0, 2).join("="));
      out.push(`${n.name} kernel drops: ${got.join(" ") || text.trim()}`);
    }
    return out.join("\n");
  }

  /** The last `lines` lines of each node's kube-proxy: its syncs, and what it did to conntrack. */
  kubeProxyLogs(lines = 40): string {
    return this.nodes.flatMap((
      n,
    ) => [`--- ${n.name} kube-proxy`, ...n.kubeProxy.lines.slice(-lines)])
      .join("\n");
  }

  /**
   * The last lines of each node's containerd and kubelet logs and of its other processes; or,
   * with `podPrefix`, of the containers of the Pods whose log folder starts with it.
   */
  async logs(lines = 25, podPrefix?: string): Promise<string> {
    const out: string[] = [];
    if (podPrefix) {
      // Only the containers' output of the Pods whose log folder (<namespace>_<name>_<uid>)
      // starts with `podPrefix`, including the Pods deleted since (see #keepLogs).
      this.#keepLogs();
      for (const n of this.nodes) {
        for (const f of walkFiles(`${n.dir}/kept-logs`)) {
          const rel = f.slice(`${n.dir}/kept-logs/`.length).replaceAll("~", "/");
          if (!rel.startsWith(podPrefix)) continue;
          const gone = isFile(`${n.dir}/var-log/pods/${rel}`) ? "" : " (Pod deleted)";
          const text = await Deno.readTextFile(f).catch(() => "");
          out.push(`--- ${n.name} ${rel}${gone}`, ...text.trimEnd().split("\n").slice(-lines));
        }
      }
      return out.join("\n");
    }
    for (const n of this.nodes) {
      for (const f of ["kubelet.log", "containerd.log"]) {
        const text = await Deno.readTextFile(`${n.dir}/${f}`).catch(() => "");
        out.push(`--- ${n.name} ${f}`, ...text.trimEnd().split("\n").slice(-lines));
      }
      // The containers' own output, as `kubectl logs` would show it.
      for (const f of walkFiles(`${n.dir}/var-log/pods`).filter((f) => f.endsWith(".log"))) {
        const text = await Deno.readTextFile(f).catch(() => "");
        out.push(
          `--- ${n.name} ${f.slice(n.dir.length + 1)}`,
          ...text.trimEnd().split("\n").slice(-lines),
        );
      }
      out.push(`--- ${n.name} node.sh`, ...n.process.lines.slice(-lines));
      out.push(`--- ${n.name} kube-proxy`, ...n.kubeProxy.lines.slice(-lines));
    }
    if (this.scheduler) out.push("--- kube-scheduler", ...this.scheduler.lines.slice(-lines));
    return out.join("\n");
  }

  /**
   * Stops every node (kubelet and containerd first, then whatever is left in its cgroups:
   * shims and containers), kube-proxy, the agents and the scheduler, all by PID; removes the
   * cgroups and the network namespaces (and with them the Pods' namespaces and veths).
   */
  async stop(): Promise<void> {
    clearInterval(this.#keeper);
    for (const n of this.nodes) {
      await n.kubeProxy.stop();
      await n.process.stop();
    }
    // What this kubelet release said about the host's cgroup v1 hierarchies (they are hybrid
    // here): its --fail-cgroupv1 default and the first line of its own about cgroups v1 (not
    // the echo of its configuration). scripts/compat puts it in the compatibility table.
    const first = this.nodes[0];
    if (first) {
      const lines = (await Deno.readTextFile(`${first.dir}/kubelet.log`).catch(() => ""))
        .split("\n");
      const flag = lines.map((l) => l.match(/FLAG: --fail-cgroupv1="(\w+)"/)?.[1]).find((v) => v);
      const said = lines.find((l) =>
        /^[IWE]\d{4} /.test(l) && /cgroups? ?v1/i.test(l) && !/FLAG:/.test(l)
      );
      const value = [
        flag ? `--fail-cgroupv1 defaults to ${flag}` : "no --fail-cgroupv1 flag",
        said?.replace(/^\S+ \S+\s+\d+ \S+\] /, "").slice(0, 200) ?? "no line about cgroup v1",
      ].join("; ");
      console.log(`COMPAT ${JSON.stringify({ row: "kubelet on cgroup v1", value })}`);
    }
    await killCgroups(this.nodes.flatMap((n) => n.cgroups), 10_000);
    const { v2 } = cgroupMounts();
    if (v2) await Deno.remove(v2Base(v2)).catch(() => {}); // only when no other run uses it
    await Promise.all([...this.nodes.map((n) => n.agent), ...this.#agents].map((a) => a.stop()));
    await this.scheduler?.stop();
    for (const l of [this.#relay, ...this.#kubeletRelays]) {
      try {
        l.close();
      } catch { /* closed */ }
    }
    await Deno.remove(this.#socket).catch(() => {});
    for (const ns of this.#namespaces.reverse()) {
      await sh("ip", ["netns", "delete", ns]).catch(() => {});
    }
  }
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function walkFiles(dir: string): string[] {
  const out: string[] = [];
  try {
    for (const e of Deno.readDirSync(dir)) {
      if (e.isDirectory) out.push(...walkFiles(`${dir}/${e.name}`));
      else if (e.isFile) out.push(`${dir}/${e.name}`);
    }
  } catch { /* none */ }
  return out.sort();
}

/** How containerd names an image reference (`meshd:0.1.0` → `docker.io/library/meshd:0.1.0`). */
export function normalize(ref: string): string {
  const first = ref.split("/")[0]!;
  const hasHost = ref.includes("/") && (first.includes(".") || first.includes(":"));
  if (hasHost) return ref;
  return ref.includes("/") ? `docker.io/${ref}` : `docker.io/library/${ref}`;
}

function kubeconfigFor(
  server: string,
  ca: string,
  id: { cert: string; key: string },
  user: string,
): string {
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: test",
    "  cluster:",
    `    server: ${server}`,
    `    certificate-authority-data: ${btoa(ca)}`,
    "users:",
    `- name: ${user}`,
    "  user:",
    `    client-certificate-data: ${btoa(id.cert)}`,
    `    client-key-data: ${btoa(id.key)}`,
    "contexts:",
    "- name: test",
    `  context: { cluster: test, user: ${user} }`,
    "current-context: test",
    "",
  ].join("\n");
}

/** containerd 2.x (config version 4), as TESTBEDS.md found it must be set on this machine. */
function containerdConfig(dir: string, cniBin: string): string {
  return `version = 4
root = '/var/lib/containerd'
state = '/run/containerd'
imports = []
oom_score = 0

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = 'docker.io/meshd-test/pause:1'
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '${dir}/certs.d'

  [plugins.'io.containerd.cri.v1.runtime']
    # This VM lacks CAP_SYS_RESOURCE: never lower a process's oom_score_adj.
    restrict_oom_score_adj = true
    enable_selinux = false
    disable_apparmor = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['${cniBin}']
      conf_dir = '${dir}/cni/net.d'
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'

  [plugins.'io.containerd.server.v1.grpc']
    address = '${dir}/containerd.sock'

  [plugins.'io.containerd.server.v1.ttrpc']
    address = '/run/containerd/containerd.sock.ttrpc'
`;
}

/**
 * The node's Pod network: the bridge plugin with host-local addresses from `podCidr`, the
 * bridge holding the gateway address; routes to the test ranges only (no default route), no
 * masquerade. (portmap is built but not chained: hostPorts would need the host's firewall.)
 */
function cniConfig(podCidr: string, gateway: string): string {
  return JSON.stringify(
    {
      cniVersion: "1.0.0",
      name: "meshd-test",
      plugins: [{
        type: "bridge",
        bridge: "cni0",
        isGateway: true,
        isDefaultGateway: false,
        ipMasq: false,
        hairpinMode: true,
        ipam: {
          type: "host-local",
          ranges: [[{ subnet: podCidr, gateway }]],
          routes: [{ dst: POD_NET }, { dst: NODE_NET }, { dst: SERVICE_NET }],
        },
      }],
    },
    null,
    2,
  );
}

/** The kubelet's settings; the pitfalls are TESTBEDS.md's. */
function kubeletConfig(
  o: { dir: string; nodeIp: string; port: number; cgroupRoot: string; caFile: string },
) {
  return [
    "apiVersion: kubelet.config.k8s.io/v1beta1",
    "kind: KubeletConfiguration",
    // This host's cgroups are hybrid v1.
    "failCgroupV1: false",
    "cgroupDriver: cgroupfs",
    `cgroupRoot: ${o.cgroupRoot}`,
    // No CAP_SYS_RESOURCE here: the kubelet must not lower its own oom_score_adj.
    "oomScoreAdj: 0",
    `containerRuntimeEndpoint: unix://${o.dir}/containerd.sock`,
    `address: ${o.nodeIp}`,
    `port: ${o.port}`,
    "readOnlyPort: 0",
    "healthzBindAddress: 127.0.0.1",
    "healthzPort: 10248",
    "authentication:",
    "  anonymous: { enabled: false }",
    "  webhook: { enabled: false }",
    `  x509: { clientCAFile: ${o.caFile} }`,
    "authorization: { mode: AlwaysAllow }",
    `resolvConf: ${o.dir}/resolv.conf`,
    `clusterDNS: [${CLUSTER_DNS}]`,
    "clusterDomain: cluster.local",
    "failSwapOn: false",
    "maxPods: 30",
    "serializeImagePulls: false",
    "evictionHard:",
    '  memory.available: "50Mi"',
    '  nodefs.available: "1%"',
    '  nodefs.inodesFree: "1%"',
    '  imagefs.available: "1%"',
    "imageGCHighThresholdPercent: 100",
    "imageGCLowThresholdPercent: 99",
    "protectKernelDefaults: false",
    "syncFrequency: 5s",
    "fileCheckFrequency: 5s",
    "nodeStatusUpdateFrequency: 5s",
    "",
  ].join("\n");
}
