/**
 * A multi-node mesh in network namespaces, with the harness playing kubelet:
 *
 * - a fabric namespace holds one bridge, the nodes' shared network (192.0.2.0/24), with no
 *   address of its own and no route anywhere;
 * - each node is a namespace on that bridge with one address (192.0.2.1N), routes to the other
 *   nodes' pod ranges (203.0.113.32N/27), and its own meshd and kube-proxy (nftables mode, its
 *   rules in that namespace alone);
 * - each pod is a namespace joined to its node by a veth pair, with a /32 address routed to
 *   that veth on the node, as Calico does: the node keeps a single address, so whatever it
 *   sends a pod comes from the node's address. The pod reaches its node through a link-local
 *   gateway (169.254.1.1, a permanent neighbour entry for the node's end) and has routes to
 *   the three test ranges only (no default route); its names are resolved by its node's meshd DNS
 *   (`/etc/netns/<pod>/resolv.conf`), and the netns agent running its small programs; its Pod
 *   object is created bound to the node and patched Running and Ready with that IP.
 *
 * Nothing here has a route out of the machine, and the host's own namespace gets no address
 * in these ranges. Nodes reach the API server through a relay: the agent in each node listens
 * on 127.0.0.1:6443 there and pipes to a Unix socket the test process serves, which connects
 * to the API server on host loopback.
 *
 * @module
 */
import { kubeProxyNftablesGate, PREFIX, SERVICE_CIDR, type TestCluster } from "./cluster.ts";
import { registerNode, runPod } from "./kubelet.ts";
import { meshdKubeconfig } from "./manifests.ts";
import { MeshdProcess } from "./meshd.ts";
import { Child, waitFor } from "./process.ts";

const AGENT = new URL("./netns_agent.ts", import.meta.url).pathname;
/** The nodes' network. */
export const NODE_NET = "192.0.2.0/24";
/** The pods' network: node N has 203.0.113.32N/27. */
export const POD_NET = "203.0.113.0/24";
/** Every pod's next hop: its node's end of the veth pair answers for it. */
const GATEWAY = "169.254.1.1";
/** Where the API server is, seen from inside a node. */
const NODE_API = { hostname: "127.0.0.1", port: 6443 };

/** What an agent answers: `error` when the exchange failed. */
export type AgentReply = { error?: string; [k: string]: unknown };

let meshCounter = 0;

/** Runs a command to its end; its stdout, or an error with its stderr. */
export async function sh(cmd: string, args: string[]): Promise<string> {
  const o = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  if (!o.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${dec.decode(o.stderr).trim()}`);
  }
  return dec.decode(o.stdout);
}

const ip = (...args: string[]) => sh("ip", args);

/** A veth pair: `name` in namespace `ns`, its peer `eth0` in `peerNs`. */
const vethPair = (ns: string, name: string, peerNs: string) =>
  ip("-n", ns, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", peerNs);

/** The netns agent in one namespace, driven over its stdin and stdout. */
export class NetnsAgent {
  readonly name: string;
  readonly netns: string;
  readonly #child: Child;
  readonly #pending = new Map<number, (r: AgentReply) => void>();
  #next = 1;

  constructor(name: string, netns: string, runDir: string) {
    this.name = name;
    this.netns = netns;
    this.#child = new Child(
      `agent ${name}`,
      ["netns", "exec", netns, Deno.execPath(), "run", "--allow-all", AGENT, name, runDir],
      { command: "ip", stdin: true, onLine: (line, stream) => this.#reply(line, stream) },
    );
    this.#child.exited().then(() => {
      for (const [, resolve] of this.#pending) resolve({ error: `agent ${this.name} exited` });
    });
  }

  get pid(): number {
    return this.#child.pid;
  }

  /** The agent's log (its stderr lines). */
  get lines(): string[] {
    return this.#child.stderr.filter(Boolean);
  }

  #reply(line: string, stream: "stdout" | "stderr"): void {
    if (stream !== "stdout" || !line) return;
    const r = JSON.parse(line) as AgentReply & { id: number };
    this.#pending.get(r.id)?.(r);
    this.#pending.delete(r.id);
  }

  /** Sends one command; resolves with the agent's reply. */
  async call(op: string, params: Record<string, unknown> = {}): Promise<AgentReply> {
    const id = this.#next++;
    const reply = new Promise<AgentReply>((r) => this.#pending.set(id, r));
    await this.#child.write(JSON.stringify({ id, op, ...params }) + "\n");
    return await reply;
  }

  /** `GET url` from inside the namespace. */
  async get(url: string, timeoutMs = 5_000): Promise<{ status: number; body: string }> {
    const r = await this.call("fetch", { url, timeoutMs });
    if (r.error) throw new Error(`${this.name}: GET ${url}: ${r.error}`);
    return { status: r["status"] as number, body: r["body"] as string };
  }

  /** Starts a bounded HTTP load loop; read its counts as it runs, or stop it and read them. */
  async load(
    url: string,
    opts: { maxRequests: number; maxMs: number; concurrency?: number },
  ): Promise<{ progress(): Promise<LoadResult>; stop(): Promise<LoadResult> }> {
    const id = this.#next;
    const r = await this.call("load", { url, ...opts });
    if (r.error) throw new Error(r.error);
    const ask = async (op: string) => {
      const out = await this.call(op, { load: id });
      if (out.error) throw new Error(out.error);
      return out as unknown as LoadResult;
    };
    return { progress: () => ask("load-status"), stop: () => ask("load-stop") };
  }

  /** Closes its stdin, so it exits; kills it if it has not within a few seconds. */
  async stop(): Promise<void> {
    await this.#child.closeStdin();
    await this.#child.wait(3_000);
  }
}

/** What a load loop saw. */
export interface LoadResult {
  sent: number;
  ok: number;
  failed: number;
  errors: Record<string, number>;
  /** Answers per pod. */
  by: Record<string, number>;
}

/** One node: its namespace, address, agent, kube-proxy and meshd. */
export interface MeshNodeNs {
  index: number;
  name: string;
  netns: string;
  ip: string;
  agent: NetnsAgent;
  kubeProxy: Child;
  meshd: MeshdProcess;
  stateDir: string;
}

/** One pod. */
export interface PodNs {
  name: string;
  namespace: string;
  netns: string;
  ip: string;
  node: MeshNodeNs;
  agent: NetnsAgent;
}

/** What a pod runs and how the API sees it. */
export interface PodOptions {
  name: string;
  node: number;
  namespace?: string;
  labels?: Record<string, string>;
  serviceAccount?: string;
  /** Ports of the pod's programs: whoami (HTTP), TCP hello+echo, UDP hello+echo. */
  http?: number;
  tcp?: number;
  udp?: number;
}

/** The running mesh. Call {@linkcode NetnsMesh.stop} in a `finally`. */
export class NetnsMesh {
  readonly cluster: TestCluster;
  readonly base: string;
  readonly fabric: string;
  readonly nodes: MeshNodeNs[] = [];
  readonly pods: PodNs[] = [];
  /** meshd's flags for every node (after the harness's own). */
  readonly meshdFlags: string[];
  readonly #namespaces: string[] = [];
  readonly #relay: Deno.Listener<Deno.UnixConn>;
  readonly #socket: string;
  #meshdKubeconfig = "";
  #proxyKubeconfig = "";
  #podCount = 0;

  private constructor(cluster: TestCluster, meshdFlags: string[]) {
    this.cluster = cluster;
    this.meshdFlags = meshdFlags;
    this.base = `${PREFIX}${Deno.pid}-m${++meshCounter}`;
    this.fabric = `${this.base}-f`;
    this.#socket = `${cluster.dir}/${this.base}-api.sock`;
    this.#relay = Deno.listen({ transport: "unix", path: this.#socket });
    this.#serveRelay();
  }

  /**
   * Builds the fabric and `nodes` nodes, each with kube-proxy and meshd (given `meshdFlags`
   * too), and resolves once every meshd is ready.
   */
  static async start(
    cluster: TestCluster,
    opts: { nodes: number; meshdFlags?: string[] },
  ): Promise<NetnsMesh> {
    const mesh = new NetnsMesh(cluster, opts.meshdFlags ?? []);
    try {
      await mesh.#setUp(opts.nodes);
    } catch (e) {
      const logs = mesh.logs();
      await mesh.stop();
      throw new Error(`${(e as Error).message}\n${logs}`);
    }
    return mesh;
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

  /** Records a PID with the cluster's, so a later run stops it if this one crashes. */
  #record(pid: number): void {
    Deno.writeTextFileSync(`${this.cluster.dir}/pids`, `${pid}\n`, { append: true });
  }

  async #netns(name: string): Promise<void> {
    await ip("netns", "add", name);
    this.#namespaces.push(name);
    await ip("-n", name, "link", "set", "lo", "up");
  }

  async #setUp(count: number): Promise<void> {
    await this.#netns(this.fabric);
    await ip("-n", this.fabric, "link", "add", "br0", "type", "bridge");
    await ip("-n", this.fabric, "link", "set", "br0", "up");
    // Kubeconfigs as the nodes reach the API server: meshd's ServiceAccount token, and the
    // admin's certificate for kube-proxy.
    const nodeServer = `https://${NODE_API.hostname}:${NODE_API.port}`;
    const sa = await Deno.readTextFile(await meshdKubeconfig(this.cluster));
    this.#meshdKubeconfig = `${this.cluster.dir}/${this.base}-meshd.kubeconfig`;
    await Deno.writeTextFile(this.#meshdKubeconfig, sa.replace(this.cluster.server, nodeServer));
    const admin = await Deno.readTextFile(this.cluster.kubeconfig);
    this.#proxyKubeconfig = `${this.cluster.dir}/${this.base}-proxy.kubeconfig`;
    await Deno.writeTextFile(this.#proxyKubeconfig, admin.replace(this.cluster.server, nodeServer));

    for (let i = 1; i <= count; i++) await this.#addNode(i);
    for (const n of this.nodes) {
      for (const o of this.nodes) {
        if (o === n) continue;
        await ip("-n", n.netns, "route", "add", podRange(o.index), "via", o.ip);
      }
    }
    for (const n of this.nodes) this.#startNode(n);
    await Promise.all(this.nodes.map((n) => this.waitReady(n)));
  }

  async #addNode(i: number): Promise<void> {
    const name = `node-${i}`;
    const netns = `${this.base}-n${i}`;
    const nodeIp = `192.0.2.${10 + i}`;
    await this.#netns(netns);
    await vethPair(this.fabric, `n${i}`, netns);
    await ip("-n", this.fabric, "link", "set", `n${i}`, "master", "br0", "up");
    await ip("-n", netns, "addr", "add", `${nodeIp}/24`, "dev", "eth0");
    await ip("-n", netns, "link", "set", "eth0", "up");
    await sh("ip", ["netns", "exec", netns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
    await registerNode(this.cluster, name, nodeIp);

    const agent = new NetnsAgent(name, netns, this.cluster.dir);
    this.#record(agent.pid);
    const relay = await agent.call("relay", { ...NODE_API, path: this.#socket });
    if (relay.error) throw new Error(`${name}: API relay: ${relay.error}`);

    // kube-proxy, as the node's: nftables mode, leaving the conntrack sysctls alone.
    const cfg = `${this.cluster.dir}/${this.base}-kube-proxy-${name}.yaml`;
    await Deno.writeTextFile(
      cfg,
      kubeProxyConfig(this.#proxyKubeconfig, name, this.cluster.version),
    );
    const stateDir = `${this.cluster.dir}/${this.base}-state-${name}`;
    this.nodes.push({
      index: i,
      name,
      netns,
      ip: nodeIp,
      agent,
      stateDir,
      kubeProxy: null as unknown as Child,
      meshd: null as unknown as MeshdProcess,
    });
    // meshd's own Pod, as the DaemonSet would have it: on the node's network, so its address
    // is the node's, and the shadow Services' Local policy picks the one on the client's node.
    await runPod(this.cluster, {
      namespace: "meshd",
      name: `meshd-${name}`,
      node: name,
      ip: nodeIp,
      hostIP: nodeIp,
      hostNetwork: true,
      serviceAccount: "meshd",
      labels: { "app.kubernetes.io/name": "meshd" },
    });
  }

  #startNode(n: MeshNodeNs): void {
    const cfg = `${this.cluster.dir}/${this.base}-kube-proxy-${n.name}.yaml`;
    n.kubeProxy = new Child(`kube-proxy ${n.name}`, [
      "netns",
      "exec",
      n.netns,
      `${this.cluster.bin}/kube-proxy`,
      `--config=${cfg}`,
      "--v=1",
    ], { command: "ip" });
    this.#record(n.kubeProxy.pid);
    this.startMeshd(n);
  }

  /** Starts (or starts again) node `n`'s meshd, keeping its state directory. */
  startMeshd(n: MeshNodeNs): MeshdProcess {
    n.meshd = MeshdProcess.start(
      this.#meshdKubeconfig,
      `meshd-${n.name}`,
      [`--advertise-address=${n.ip}`, ...this.meshdFlags],
      n.stateDir,
      {
        netns: n.netns,
        api: (path) => n.agent.get(`http://127.0.0.1:9000${path}`),
        started: (pid) => this.#record(pid),
      },
    );
    return n.meshd;
  }

  /** Waits for node `n`'s meshd to answer /readyz with 200. */
  async waitReady(n: MeshNodeNs, timeoutMs = 60_000): Promise<void> {
    await waitFor(`meshd on ${n.name} to be ready`, async () => {
      const r = await n.meshd.api("/readyz").catch(() => null);
      return r?.status === 200 ? true : undefined;
    }, timeoutMs).catch((e) => {
      throw new Error(`${e.message}\n${n.meshd.child.lines.slice(-20).join("\n")}`);
    });
  }

  /**
   * Creates a pod on node `opts.node`: its namespace, veth pair and address, its resolv.conf
   * (its node's meshd DNS), its agent serving what `opts` asks, and its Pod object, Ready.
   */
  async addPod(opts: PodOptions): Promise<PodNs> {
    const node = this.nodes[opts.node - 1];
    if (!node) throw new Error(`no node ${opts.node}`);
    const k = ++this.#podCount;
    const onNode = this.pods.filter((p) => p.node === node).length;
    const podIp = `203.0.113.${32 * node.index + 1 + onNode}`;
    const netns = `${this.base}-p${k}`;
    await this.#netns(netns);
    await Deno.mkdir(`/etc/netns/${netns}`, { recursive: true });
    await Deno.writeTextFile(
      `/etc/netns/${netns}/resolv.conf`,
      `nameserver ${node.ip}\noptions timeout:1 attempts:3\n`,
    );
    const veth = `v${k}`;
    await vethPair(node.netns, veth, netns);
    await ip("-n", node.netns, "link", "set", veth, "up");
    await ip("-n", node.netns, "route", "add", `${podIp}/32`, "dev", veth, "scope", "link");
    const mac = JSON.parse(await ip("-j", "-n", node.netns, "link", "show", veth))[0].address;
    await ip("-n", netns, "addr", "add", `${podIp}/32`, "dev", "eth0");
    await ip("-n", netns, "link", "set", "eth0", "up");
    await ip("-n", netns, "route", "add", GATEWAY, "dev", "eth0", "scope", "link");
    await ip(
      "-n",
      netns,
      "neigh",
      "add",
      GATEWAY,
      "lladdr",
      mac,
      "dev",
      "eth0",
      "nud",
      "permanent",
    );
    for (const range of [NODE_NET, POD_NET, SERVICE_CIDR]) {
      await ip("-n", netns, "route", "add", range, "via", GATEWAY, "dev", "eth0");
    }
    const agent = new NetnsAgent(opts.name, netns, this.cluster.dir);
    this.#record(agent.pid);
    if (opts.http || opts.tcp || opts.udp) {
      const r = await agent.call("serve", { http: opts.http, tcp: opts.tcp, udp: opts.udp });
      if (r.error) throw new Error(`${opts.name}: ${r.error}`);
    }
    const ports = [
      ...(opts.http ? [{ name: "http", containerPort: opts.http }] : []),
      ...(opts.tcp ? [{ name: "tcp", containerPort: opts.tcp }] : []),
      ...(opts.udp ? [{ name: "udp", containerPort: opts.udp, protocol: "UDP" }] : []),
    ];
    const namespace = opts.namespace ?? "default";
    await runPod(this.cluster, {
      namespace,
      name: opts.name,
      node: node.name,
      ip: podIp,
      hostIP: node.ip,
      labels: opts.labels ?? {},
      serviceAccount: opts.serviceAccount,
      ports,
    });
    const pod = { name: opts.name, namespace, netns, ip: podIp, node, agent };
    this.pods.push(pod);
    return pod;
  }

  /** The node whose meshd leads now (by the Lease's holder), or undefined. */
  async leader(): Promise<MeshNodeNs | undefined> {
    const r = await this.cluster.request(
      "GET",
      "/apis/coordination.k8s.io/v1/namespaces/meshd/leases/meshd-controller",
    );
    const holder = (r.body["spec"] as { holderIdentity?: string } | undefined)?.holderIdentity;
    return this.nodes.find((n) => `meshd-${n.name}` === holder);
  }

  /** The last lines of every node's meshd and kube-proxy, for a failure message. */
  logs(lines = 12): string {
    const out: string[] = [];
    for (const n of this.nodes) {
      if (n.meshd) out.push(`--- meshd ${n.name}`, ...n.meshd.child.lines.slice(-lines));
      if (n.kubeProxy) out.push(`--- ${n.kubeProxy.name}`, ...n.kubeProxy.lines.slice(-lines));
      out.push(`--- agent ${n.name}`, ...n.agent.lines.slice(-lines));
    }
    for (const p of this.pods) {
      if (p.agent.lines.length) out.push(`--- pod ${p.name}`, ...p.agent.lines.slice(-lines));
    }
    return out.join("\n");
  }

  /** Stops every process (by PID), deletes every namespace and resolv.conf it made. */
  async stop(): Promise<void> {
    for (const n of this.nodes) {
      if (n.meshd) await n.meshd.stop();
      if (n.kubeProxy) await n.kubeProxy.stop();
    }
    await Promise.all([...this.pods, ...this.nodes].map((x) => x.agent.stop()));
    for (const ns of [...this.#namespaces].reverse()) {
      await ip("netns", "delete", ns).catch(() => {});
      await Deno.remove(`/etc/netns/${ns}`, { recursive: true }).catch(() => {});
    }
    try {
      this.#relay.close();
    } catch { /* closed */ }
    await Deno.remove(this.#socket).catch(() => {});
  }
}

function podRange(index: number): string {
  return `203.0.113.${32 * index}/27`;
}

function kubeProxyConfig(kubeconfig: string, node: string, version: string): string {
  return [
    "apiVersion: kubeproxy.config.k8s.io/v1alpha1",
    "kind: KubeProxyConfiguration",
    "clientConnection:",
    `  kubeconfig: ${kubeconfig}`,
    `hostnameOverride: ${node}`,
    "mode: nftables",
    ...kubeProxyNftablesGate(version),
    `clusterCIDR: ${POD_NET}`,
    "healthzBindAddress: 127.0.0.1:10256",
    "metricsBindAddress: 127.0.0.1:10249",
    "conntrack:",
    "  maxPerCore: 0",
    "  min: 0",
    "  tcpEstablishedTimeout: 0s",
    "  tcpCloseWaitTimeout: 0s",
    "",
  ].join("\n");
}
