/**
 * The test cluster: a real etcd, kube-apiserver and kube-controller-manager on loopback, built
 * from the Go module proxy by `tests/testenv/kube/build.sh`. No kubelet runs; the harness plays
 * kubelet where a test needs Pods (see `pods.ts`).
 *
 * Every run works under `/tmp/meshd-tc-<pid>-<n>` and records the PIDs it started there, so a
 * later run can stop exactly those processes (by PID, after checking that the process still
 * runs from that folder) and remove what a crashed run left.
 *
 * @module
 */
import { Child, cmdline, freePort, isAlive, sweepOrphanedChildren, waitFor } from "./process.ts";
import { issueCert, makeCa, openssl } from "../../src/_testing_tls.ts";
import { findCgroup2 } from "../../src/datapath/mod.ts";

const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
/** Every folder, network namespace and cgroup a run creates starts with this. */
export const PREFIX = "meshd-tc-";
/** The service CIDR: a documentation range, so no ClusterIP is ever a real address. */
export const SERVICE_CIDR = "198.51.100.0/24";

/** What a test needs to talk to the cluster as its admin. */
export interface ClusterAccess {
  /** `https://127.0.0.1:<port>` */
  server: string;
  caCert: string;
  /** An admin (system:masters) client certificate and key. */
  cert: string;
  key: string;
  /** A kubeconfig file with those credentials. */
  kubeconfig: string;
}

/** Where the harness puts a run's files and how to reach the binaries. */
export interface ClusterOptions {
  /** Kubernetes version to build or reuse; default: `$MESHD_KUBE_VERSION`, then the pinned one. */
  version?: string;
  /** Also start kube-controller-manager (default true). */
  controllerManager?: boolean;
  /**
   * The Services' address range; default {@linkcode SERVICE_CIDR}. Benchmarks with thousands
   * of Services use 198.18.0.0/15, the range set aside for benchmarking (RFC 2544); nothing
   * connects to these addresses from the host.
   */
  serviceCidr?: string;
  /**
   * Give the API server a client certificate for kubelets (`kubectl exec`, `logs`, real nodes)
   * and have it dial a node by its Hostname address first (default false).
   */
  kubeletClient?: boolean;
  /**
   * Send the API server's traffic to the cluster (pod, service and node proxy, kubelets)
   * through an HTTP CONNECT proxy on the Unix socket {@linkcode TestCluster.egressSocket}, as
   * konnectivity does (an EgressSelectorConfiguration). The test serves that socket (see
   * `egress.ts`); nothing reaches the cluster while no one does. Default false.
   */
  egress?: boolean;
}

/**
 * Fails with a plain message when this machine cannot host the integration tier: it needs
 * root, Linux network namespaces (`ip netns`), cgroup v2, and Go to build the control plane.
 */
export async function requireIntegrationHost(): Promise<void> {
  const missing: string[] = [];
  if (Deno.build.os !== "linux") missing.push(`Linux (this is ${Deno.build.os})`);
  else {
    if (Deno.uid() !== 0) missing.push("root (the tier creates network namespaces)");
    const ip = await run("ip", ["netns", "list"]).catch((e) => ({ ok: false, out: String(e) }));
    if (!ip.ok) missing.push(`"ip netns" from iproute2 (${ip.out.trim()})`);
    if (!findCgroup2()) missing.push("a cgroup v2 mount");
    const go = await run("go", ["version"]).catch((e) => ({ ok: false, out: String(e) }));
    if (!go.ok) missing.push("Go, to build the control plane");
  }
  if (missing.length > 0) {
    throw new Error(
      `The integration tier cannot run on this machine; it needs ${missing.join(", ")}. ` +
        "It does not skip itself: run it as root on Linux, or run only the unit tests.",
    );
  }
}

async function run(
  cmd: string,
  args: string[],
  cwd?: string,
): Promise<{ ok: boolean; out: string }> {
  const o = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { ok: o.success, out: dec.decode(o.stdout) + dec.decode(o.stderr) };
}

/**
 * What a release's kube-proxy configuration needs for nftables mode: 1.29 and 1.30 have it as
 * an alpha feature behind the `NFTablesProxyMode` gate (without it kube-proxy refuses the mode:
 * "must be iptables, ipvs or blank"); from 1.31 it is on by default, and a release that has
 * dropped the gate refuses it as unknown, so it is set only where it is needed.
 */
export function kubeProxyNftablesGate(version: string): string[] {
  const minor = Number(version.match(/^v?1\.(\d+)\./)?.[1] ?? NaN);
  return minor < 31 ? ["featureGates:", "  NFTablesProxyMode: true"] : [];
}

/** Builds (once per version, cached outside the repo) and returns the control plane's bin dir. */
export async function controlPlaneBinaries(version?: string): Promise<string> {
  const args = [`${ROOT}/tests/testenv/kube/build.sh`];
  if (version) args.push(version);
  const p = new Deno.Command("bash", { args, stdout: "piped", stderr: "inherit" });
  const o = await p.output();
  if (!o.success) throw new Error("Building the test cluster failed; see the lines above");
  return new TextDecoder().decode(o.stdout).trim().split("\n").pop()!;
}

/** Whether process `pid` was started from inside `dir` (its command line names the folder). */
function startedFrom(pid: number, dir: string): boolean {
  return cmdline(pid).includes(dir);
}

/**
 * Removes what crashed runs left: their processes (by the PIDs they recorded, and only while
 * such a process still runs from that run's folder), network namespaces, and folders. A run
 * whose owning test process is still alive is left alone.
 */
export async function removeLeftovers(): Promise<string[]> {
  const removed: string[] = [];
  // Real nodes first: their processes (kubelet, containerd, shims, containers) live in cgroups
  // of their own and still use the folders and namespaces removed below.
  const { removeRealNodeLeftovers } = await import("./real_nodes.ts");
  removed.push(...await removeRealNodeLeftovers());
  const orphans = sweepOrphanedChildren();
  if (orphans > 0) removed.push(`${orphans} orphaned test processes`);
  for await (const e of Deno.readDir("/tmp")) {
    if (!e.isDirectory || !e.name.startsWith(PREFIX)) continue;
    const dir = `/tmp/${e.name}`;
    const owner = Number(e.name.slice(PREFIX.length).split("-")[0]);
    if (owner && owner !== Deno.pid && isAlive(owner) && startedFrom(owner, "deno")) continue;
    const pids = (await Deno.readTextFile(`${dir}/pids`).catch(() => "")).split("\n")
      .map(Number).filter((n) => n > 0);
    for (const pid of pids) {
      if (isAlive(pid) && startedFrom(pid, dir)) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone meanwhile */ }
      }
    }
    // An eBPF run's bpffs: removing its pins detaches its hooks; then it can be unmounted.
    for (const m of mountsUnder(dir)) {
      await Deno.remove(`${m}/meshd`, { recursive: true }).catch(() => {});
      await run("umount", [m]);
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    removed.push(dir);
  }
  // An eBPF run's scratch cgroups (empty once its processes are gone).
  const cg2 = findCgroup2();
  if (cg2) {
    let cgs: Deno.DirEntry[] = [];
    try {
      cgs = [...Deno.readDirSync(`${cg2}/meshd-test`)];
    } catch { /* none yet */ }
    for (const e of cgs) {
      if (!e.name.startsWith(PREFIX)) continue;
      const owner = Number(e.name.slice(PREFIX.length).split("-")[0]);
      if (owner && owner !== Deno.pid && isAlive(owner)) continue;
      await Deno.remove(`${cg2}/meshd-test/${e.name}`).catch(() => {});
      removed.push(`cgroup ${e.name}`);
    }
  }
  const ns = await run("ip", ["netns", "list"]).catch(() => ({ ok: false, out: "" }));
  for (const line of ns.out.split("\n")) {
    const name = line.split(" ")[0];
    if (!name?.startsWith(PREFIX)) continue;
    const owner = Number(name.slice(PREFIX.length).split("-")[0]);
    if (owner && owner !== Deno.pid && isAlive(owner)) continue;
    await run("ip", ["netns", "delete", name]);
    removed.push(`netns ${name}`);
  }
  // The resolv.conf files of pod namespaces (`ip netns exec` mounts /etc/netns/<name>/*).
  let netnsEtc: Deno.DirEntry[] = [];
  try {
    netnsEtc = [...Deno.readDirSync("/etc/netns")];
  } catch { /* none yet */ }
  for (const e of netnsEtc) {
    if (!e.name.startsWith(PREFIX)) continue;
    const owner = Number(e.name.slice(PREFIX.length).split("-")[0]);
    if (owner && owner !== Deno.pid && isAlive(owner)) continue;
    await Deno.remove(`/etc/netns/${e.name}`, { recursive: true }).catch(() => {});
    removed.push(`/etc/netns/${e.name}`);
  }
  return removed;
}

function mountTable(): string[][] {
  try {
    return Deno.readTextFileSync("/proc/self/mounts").split("\n").map((l) => l.split(" "));
  } catch {
    return [];
  }
}

/** Mount points at or below `dir`, deepest first. */
function mountsUnder(dir: string): string[] {
  return mountTable().map((f) => f[1] ?? "").filter((m) => m === dir || m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}

let runCounter = 0;

/** A running test cluster. Call {@linkcode TestCluster.stop} in a `finally`. */
export class TestCluster implements ClusterAccess {
  readonly dir: string;
  readonly server: string;
  readonly caCert: string;
  readonly cert: string;
  readonly key: string;
  readonly kubeconfig: string;
  readonly version: string;
  /** Where the control plane's binaries (and kubectl) are. */
  readonly bin: string;
  /**
   * The Unix socket the API server sends its traffic to the cluster through (an HTTP CONNECT
   * proxy the test serves), with `egress: true`.
   */
  get egressSocket(): string {
    return `${this.dir}/egress.sock`;
  }
  readonly #children: Child[];
  readonly #client: Deno.HttpClient;
  readonly #apiServer: { stop(): Promise<void>; start(): Promise<void> };

  private constructor(
    init: ClusterAccess & {
      dir: string;
      version: string;
      bin: string;
      children: Child[];
      apiServer: { stop(): Promise<void>; start(): Promise<void> };
    },
  ) {
    this.#apiServer = init.apiServer;
    this.bin = init.bin;
    this.dir = init.dir;
    this.server = init.server;
    this.caCert = init.caCert;
    this.cert = init.cert;
    this.key = init.key;
    this.kubeconfig = init.kubeconfig;
    this.version = init.version;
    this.#children = init.children;
    this.#client = Deno.createHttpClient({
      caCerts: [this.caCert],
      cert: this.cert,
      key: this.key,
    });
  }

  /** Builds the binaries if needed, then starts etcd, the API server and the controller manager. */
  static async start(options: ClusterOptions = {}): Promise<TestCluster> {
    await requireIntegrationHost();
    await removeLeftovers();
    const bin = await controlPlaneBinaries(options.version);
    const version = (await Deno.readTextFile(`${bin}/../VERSION`)).trim();
    const dir = `/tmp/${PREFIX}${Deno.pid}-${++runCounter}`;
    await Deno.mkdir(dir, { recursive: true });
    const children: Child[] = [];
    const gone = new Map<string, string>();
    const record = async (c: Child) => {
      children.push(c);
      c.exited().then((st) => gone.set(c.name, `exited with code ${st.code}`));
      await Deno.writeTextFile(`${dir}/pids`, `${c.pid}\n`, { append: true });
    };
    try {
      const pki = await makeClusterPki(dir);
      const kubeletClient = options.kubeletClient
        ? await issueCert(dir, "apiserver-kubelet-client", {
          subj: "/O=system:masters/CN=kube-apiserver-kubelet-client",
          ext: "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        })
        : null;
      const etcdPort = freePort();
      const etcdPeer = freePort();
      await record(
        new Child("etcd", [
          "--name=meshd-test",
          `--data-dir=${dir}/etcd`,
          `--listen-client-urls=http://127.0.0.1:${etcdPort}`,
          `--advertise-client-urls=http://127.0.0.1:${etcdPort}`,
          `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
          `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
          `--initial-cluster=meshd-test=http://127.0.0.1:${etcdPeer}`,
          "--unsafe-no-fsync",
          "--log-level=warn",
        ], { command: `${bin}/etcd` }),
      );
      const apiPort = freePort();
      const server = `https://127.0.0.1:${apiPort}`;
      const apiArgs = [
        `--etcd-servers=http://127.0.0.1:${etcdPort}`,
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        // The reconciler that keeps the kubernetes Service's endpoints refuses loopback.
        "--endpoint-reconciler-type=none",
        `--secure-port=${apiPort}`,
        `--cert-dir=${dir}/apiserver`,
        `--tls-cert-file=${dir}/apiserver.crt`,
        `--tls-private-key-file=${dir}/apiserver.key`,
        `--client-ca-file=${dir}/ca.crt`,
        `--service-account-key-file=${dir}/sa.pub`,
        `--service-account-signing-key-file=${dir}/sa.key`,
        "--service-account-issuer=https://kubernetes.default.svc",
        `--service-cluster-ip-range=${options.serviceCidr ?? SERVICE_CIDR}`,
        "--authorization-mode=RBAC",
        // Compact often, and serve ConfigMap watches from etcd rather than the watch cache, so
        // a test can see a watch from a compacted version answered 410 Gone.
        "--etcd-compaction-interval=5s",
        "--watch-cache-sizes=configmaps#0",
        "--allow-privileged=true",
        ...(kubeletClient
          ? [
            `--kubelet-client-certificate=${dir}/apiserver-kubelet-client.crt`,
            `--kubelet-client-key=${dir}/apiserver-kubelet-client.key`,
            "--kubelet-preferred-address-types=Hostname,InternalIP",
          ]
          : []),
        ...(options.egress ? [`--egress-selector-config-file=${await egressConfig(dir)}`] : []),
        "--profiling=false",
        "--v=1",
      ];
      const startApi = async () => {
        const c = new Child("kube-apiserver", apiArgs, { command: `${bin}/kube-apiserver` });
        await record(c);
        return c;
      };
      let api = await startApi();
      const kubeconfig = `${dir}/admin.kubeconfig`;
      await Deno.writeTextFile(kubeconfig, kubeconfigYaml(server, pki.ca, pki.admin, "admin"));
      const cluster = new TestCluster({
        dir,
        server,
        caCert: pki.ca,
        cert: pki.admin.cert,
        key: pki.admin.key,
        kubeconfig,
        version,
        bin,
        children,
        apiServer: {
          stop: async () => {
            // SIGKILL: with watches open, a graceful stop waits a minute for them to end.
            try {
              Deno.kill(api.pid, "SIGKILL");
            } catch { /* already gone */ }
            await api.exited();
            gone.delete("kube-apiserver");
          },
          start: async () => {
            api = await startApi();
          },
        },
      });
      try {
        await waitFor("the API server's /readyz", async () => {
          for (const [name, how] of gone) throw new Error(`${name} ${how}`);
          const r = await cluster.request("GET", "/readyz").catch((e) => {
            throw new Error(`${e.message}: ${e.cause ?? ""}`);
          });
          return r.status === 200 ? true : undefined;
        }, 60_000);
        if (options.controllerManager ?? true) {
          const cmConfig = `${dir}/controller-manager.kubeconfig`;
          await Deno.writeTextFile(
            cmConfig,
            kubeconfigYaml(server, pki.ca, pki.controllerManager, "kube-controller-manager"),
          );
          await record(
            new Child("kube-controller-manager", [
              `--kubeconfig=${cmConfig}`,
              `--authentication-kubeconfig=${cmConfig}`,
              `--authorization-kubeconfig=${cmConfig}`,
              "--leader-elect=false",
              "--bind-address=127.0.0.1",
              "--secure-port=0",
              `--service-account-private-key-file=${dir}/sa.key`,
              `--root-ca-file=${dir}/ca.crt`,
              "--use-service-account-credentials=true",
              `--service-cluster-ip-range=${options.serviceCidr ?? SERVICE_CIDR}`,
              "--v=1",
            ], { command: `${bin}/kube-controller-manager` }),
          );
          // The ServiceAccount controller making "default" shows the controllers are running.
          await waitFor(
            "kube-controller-manager to create the default ServiceAccount",
            async () => {
              const r = await cluster.request(
                "GET",
                "/api/v1/namespaces/default/serviceaccounts/default",
              );
              return r.status === 200 ? true : undefined;
            },
            60_000,
          );
        }
      } catch (e) {
        const logs = cluster.logs();
        await cluster.stop();
        throw new Error(`${(e as Error).message}\n${logs}`);
      }
      return cluster;
    } catch (e) {
      for (const c of children.reverse()) await c.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw e;
    }
  }

  /** Runs the kubectl built with the cluster, as admin; resolves with its exit code and output. */
  async kubectl(
    ...args: string[]
  ): Promise<{ code: number; out: string; stdout: string; stderr: string }> {
    const o = await new Deno.Command(`${this.bin}/kubectl`, {
      args: [`--kubeconfig=${this.kubeconfig}`, ...args],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    const stdout = dec.decode(o.stdout), stderr = dec.decode(o.stderr);
    return { code: o.code, out: stdout + stderr, stdout, stderr };
  }

  /** The last lines each control-plane process wrote, for a failure message. */
  logs(lines = 20): string {
    return this.#children.map((c) => `--- ${c.name}\n${c.lines.slice(-lines).join("\n")}`).join(
      "\n",
    );
  }

  /**
   * One request to the API server as admin. `body` is sent as JSON, or as given with
   * `contentType` (e.g. a merge patch). Resolves with the status and the parsed JSON body.
   */
  async request(
    method: string,
    path: string,
    body?: unknown,
    contentType = "application/json",
  ): Promise<{ status: number; body: Record<string, unknown> }> {
    const r = await fetch(`${this.server}${path}`, {
      method,
      client: this.#client,
      headers: body === undefined ? {} : { "content-type": contentType },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = { text };
    }
    return { status: r.status, body: parsed };
  }

  /** Like {@linkcode request}, but throws naming the call unless the status is 2xx. */
  async must(
    method: string,
    path: string,
    body?: unknown,
    contentType?: string,
  ): Promise<Record<string, unknown>> {
    const r = await this.request(method, path, body, contentType);
    if (r.status < 200 || r.status > 299) {
      throw new Error(`${method} ${path} answered ${r.status}: ${JSON.stringify(r.body)}`);
    }
    return r.body;
  }

  /** Who holds meshd's controller Lease in `namespace`: "" when no one does, or there is none. */
  async leaseHolder(namespace = "meshd"): Promise<string> {
    const r = await this.request(
      "GET",
      `/apis/coordination.k8s.io/v1/namespaces/${namespace}/leases/meshd-controller`,
    );
    return r.status === 200
      ? (r.body["spec"] as { holderIdentity?: string }).holderIdentity ?? ""
      : "";
  }

  /** Kills the API server (SIGKILL, by PID), as an outage; etcd and the rest keep running. */
  async stopApiServer(): Promise<void> {
    await this.#apiServer.stop();
  }

  /** Starts the API server again, with the same flags and port; resolves once it is ready. */
  async startApiServer(): Promise<void> {
    await this.#apiServer.start();
    await waitFor("the API server's /readyz after a restart", async () => {
      const r = await this.request("GET", "/readyz").catch(() => null);
      return r?.status === 200 ? true : undefined;
    }, 60_000);
  }

  /** Stops every process (by PID, newest first) and removes the run's folder. */
  async stop(): Promise<void> {
    for (const c of [...this.#children].reverse()) await c.stop();
    this.#client.close();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/**
 * Writes the API server's EgressSelectorConfiguration: its `cluster` traffic as HTTP CONNECT
 * over the Unix socket `<dir>/egress.sock`. Returns the file's path.
 */
async function egressConfig(dir: string): Promise<string> {
  const file = `${dir}/egress-selector.yaml`;
  await Deno.writeTextFile(
    file,
    [
      "apiVersion: apiserver.k8s.io/v1beta1",
      "kind: EgressSelectorConfiguration",
      "egressSelections:",
      "  - name: cluster",
      "    connection:",
      "      proxyProtocol: HTTPConnect",
      "      transport:",
      `        uds: { udsName: ${dir}/egress.sock }`,
      "",
    ].join("\n"),
  );
  return file;
}

/** One client identity: certificate and key, PEM. */
export interface KeyPair {
  cert: string;
  key: string;
}

/** A kubeconfig that reaches `server` with a client certificate. */
export function kubeconfigYaml(server: string, ca: string, id: KeyPair, user: string): string {
  const b64 = (s: string) => btoa(s);
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: test",
    "  cluster:",
    `    server: ${server}`,
    `    certificate-authority-data: ${b64(ca)}`,
    "users:",
    `- name: ${user}`,
    "  user:",
    `    client-certificate-data: ${b64(id.cert)}`,
    `    client-key-data: ${b64(id.key)}`,
    "contexts:",
    "- name: test",
    "  context:",
    "    cluster: test",
    `    user: ${user}`,
    "current-context: test",
    "",
  ].join("\n");
}

/**
 * The cluster's certificates, made with openssl in `dir`: a CA, the API server's serving
 * certificate, client certificates for the admin and the controller manager, and the
 * service-account signing key pair. `extraClient` adds client certificates by CN and groups.
 */
async function makeClusterPki(dir: string) {
  const ssl = (...args: string[]) => openssl(dir, ...args);
  await makeCa(dir, "meshd test cluster CA");
  const issue = (name: string, subj: string, ext: string): Promise<KeyPair> =>
    issueCert(dir, name, { subj, ext });
  const client = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";
  await issue(
    "apiserver",
    "/CN=kube-apiserver",
    "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=" +
      "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default," +
      "DNS:kubernetes.default.svc,IP:198.51.100.1\n",
  );
  const admin = await issue("admin", "/O=system:masters/CN=meshd-test-admin", client);
  const controllerManager = await issue(
    "controller-manager",
    "/CN=system:kube-controller-manager",
    client,
  );
  await ssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key");
  await ssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub");
  return { ca: await Deno.readTextFile(`${dir}/ca.crt`), admin, controllerManager };
}

/** Plural and scope of the kinds the tests and manifests create. */
const RESOURCES: Record<string, { plural: string; namespaced: boolean }> = {
  Namespace: { plural: "namespaces", namespaced: false },
  ServiceAccount: { plural: "serviceaccounts", namespaced: true },
  Service: { plural: "services", namespaced: true },
  ConfigMap: { plural: "configmaps", namespaced: true },
  Pod: { plural: "pods", namespaced: true },
  DaemonSet: { plural: "daemonsets", namespaced: true },
  Job: { plural: "jobs", namespaced: true },
  PriorityClass: { plural: "priorityclasses", namespaced: false },
  ClusterRole: { plural: "clusterroles", namespaced: false },
  ClusterRoleBinding: { plural: "clusterrolebindings", namespaced: false },
  Role: { plural: "roles", namespaced: true },
  RoleBinding: { plural: "rolebindings", namespaced: true },
  CustomResourceDefinition: { plural: "customresourcedefinitions", namespaced: false },
  TrafficTarget: { plural: "traffictargets", namespaced: true },
  HTTPRouteGroup: { plural: "httproutegroups", namespaced: true },
  TCPRoute: { plural: "tcproutes", namespaced: true },
  TrafficSplit: { plural: "trafficsplits", namespaced: true },
};

/** The API path of one object (`name` omitted: its collection). */
export function objectPath(
  obj: { apiVersion: string; kind: string; metadata?: { name?: string; namespace?: string } },
  withName = true,
): string {
  const r = RESOURCES[obj.kind];
  if (!r) throw new Error(`objectPath: add ${obj.kind} to RESOURCES`);
  const base = obj.apiVersion.includes("/") ? `/apis/${obj.apiVersion}` : `/api/${obj.apiVersion}`;
  const ns = r.namespaced ? `/namespaces/${obj.metadata?.namespace ?? "default"}` : "";
  const name = withName && obj.metadata?.name ? `/${obj.metadata.name}` : "";
  return `${base}${ns}/${r.plural}${name}`;
}

/** Server-side apply of one object, as `kubectl apply --server-side` does. */
export async function serverSideApply(
  cluster: TestCluster,
  obj: { apiVersion: string; kind: string; metadata: { name: string; namespace?: string } },
  fieldManager = "meshd-test",
): Promise<Record<string, unknown>> {
  return await cluster.must(
    "PATCH",
    `${objectPath(obj)}?fieldManager=${fieldManager}&force=true`,
    obj,
    "application/apply-patch+yaml",
  );
}

/** Waits until a CRD reports Established. */
export async function waitEstablished(cluster: TestCluster, name: string): Promise<void> {
  await waitFor(`CRD ${name} to be Established`, async () => {
    const crd = await cluster.must(
      "GET",
      `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${name}`,
    );
    const conds = ((crd["status"] as { conditions?: { type: string; status: string }[] })
      ?.conditions) ?? [];
    return conds.some((c) => c.type === "Established" && c.status === "True") ? true : undefined;
  }, 30_000);
}
