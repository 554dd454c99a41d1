import type { ConfigStore } from "../node/mod.ts";
import { ZoneStore } from "../node/mod.ts";
import {
  MeshController,
  SHADOW_SELECTOR,
  shadowDnsEntries,
  ShadowServiceController,
} from "../controller/mod.ts";
// Only types here: the kube room (and @kubernetes/client-node with it) loads on demand, so the
// file provider needs neither it nor the permissions it asks for.
import type { KubeApi, LeaderElector, RawObject, Reflector } from "../kube/mod.ts";
// Types only as well: the distribution room brings grpc-js, which reads GRPC_* variables as it
// loads, so it is imported in kube mode alone.
import type {
  DistributionClient,
  DistributionServer,
  LeaderAddress,
  LeaderIdentity,
} from "../distribution/mod.ts";
import { DnsServer, type MeshDnsEntry, MeshZone } from "../dns/mod.ts";
import type { MeshAddresses } from "../datapath/mod.ts";
import type { Registry } from "../observability/mod.ts";
import { CliError, type CliIo, kubeClientFor } from "./common.ts";
import { DnsFeed } from "./dns_feed.ts";
import { LeaderLookup, LEASE_ADDRESS_ANNOTATION, LEASE_CERT_ANNOTATION } from "./leader_lookup.ts";
import {
  type Assembly,
  type NodeServices,
  nodeServices,
  type RunContext,
} from "./node_services.ts";
import type { RunConfig } from "./run_config.ts";
import type { Service } from "./service_stack.ts";

type Kube = typeof import("../kube/mod.ts");
type Dist = typeof import("../distribution/mod.ts");

/** The kube provider's client and election settings, checked before anything starts. */
export interface KubeSetup {
  kube: Kube;
  kapi: KubeApi;
  /** This pod's name in leader election. */
  identity: string;
  /** The labels of the meshd pods. */
  selector: Record<string, string>;
  /** The mesh DNS names, before any is known. */
  zone: MeshZone;
}

/** Checks the kube provider's flags and makes its API client, before anything starts. */
export async function kubeSetup(config: RunConfig, io: CliIo): Promise<KubeSetup> {
  const { kube, kapi } = await kubeClientFor(config.kube.kubeconfig, io);
  const bad = kube.checkElectionTiming(config.kube.timing);
  if (bad) throw new CliError(`Leader election: ${bad}`);
  const selector: Record<string, string> = {};
  for (const kv of config.kube.meshdSelector) {
    const [k, v] = kv.split("=");
    if (!k || v === undefined) {
      throw new CliError(`--meshd-selector: "${kv}" is not KEY=VALUE`);
    }
    selector[k] = v;
  }
  let identity = config.kube.identity ?? io.env("POD_NAME");
  if (!identity) {
    try {
      identity = Deno.hostname();
    } catch {
      throw new CliError("Cannot tell who this pod is: set --identity or POD_NAME");
    }
  }
  let zone: MeshZone;
  try {
    zone = new MeshZone({
      domain: config.domain,
      aliases: config.domainAliases,
      ttlSeconds: config.dns.ttlSeconds,
    });
  } catch (e) {
    throw new CliError(`--domain or --domain-aliases: ${(e as Error).message}`);
  }
  return { kube, kapi, identity, selector, zone };
}

/** Where other pods reach this one's config stream, from the flags and the environment. */
export function advertiseAddress(config: RunConfig, io: CliIo): string {
  const flag = config.distribution.advertise;
  if (flag) return flag;
  const podIp = io.env("POD_IP");
  if (podIp) return podIp;
  const bind = config.distribution.address;
  if (bind === "0.0.0.0" || bind === "::") {
    throw new CliError(
      `--distribution-address ${bind} says nothing of where other pods reach this one: ` +
        "set --advertise-address or POD_IP",
    );
  }
  return bind;
}

/** Options for {@linkcode kubeMode}. */
export interface KubeModeOptions {
  caCerts?: string[];
  /** Where other pods reach this one's config stream. */
  advertise: string;
  /** Where the applied config is saved; absent with `--state-dir ""`. */
  store?: ConfigStore;
}

/**
 * `meshd run --provider kube`, in start order: the node's services; the config it applied
 * last, from disk; the mesh DNS and the shadow Services' watch that feeds it; the config
 * stream this pod serves while it leads; the Lease's watch, which says who leads; this node's
 * stream from the leader; and the election. Stopped in reverse, a leader gives the Lease up
 * first, so another pod takes over at once.
 */
export function kubeMode(ctx: RunContext, setup: KubeSetup, o: KubeModeOptions): Assembly {
  const { logger } = ctx;
  let election: Election | null = null;
  const isLeader = () => election?.isLeader ?? false;
  const lease = watchLease(ctx, setup, () => leader.changed());
  const leader = new LeaderLookup({
    lease: lease.get,
    holderOf: setup.kube.leaseHolderOf,
    onChange: (now) => client.leaderChanged(now),
    logger,
  });
  const node = nodeServices(ctx, {
    caCerts: o.caCerts,
    advertise: o.advertise,
    store: o.store,
    addresses: "given",
    nodes: () => ({ leader: leader.holder()?.identity ?? null, ...election?.report() }),
  });
  const dns = new MeshDns(ctx, setup, node, isLeader);
  const stream = new ConfigStream(ctx, setup);
  const client = new LeaderClient(ctx, setup, {
    stream,
    node,
    leader,
    leading: () => election?.leading ?? false,
  });
  const electionService: Service = {
    name: "the controller's election",
    start: () => {
      election = new Election(ctx, setup, { stream, node, dns, advertise: o.advertise });
      election.start();
    },
    stop: () => election?.stop(),
  };
  return {
    services: [
      ...node.services,
      // A restarted node routes on what it last applied before it reaches anyone.
      { name: "the saved config", start: () => node.agent.restore().then(() => {}) },
      dns.responder,
      dns.shadowWatch,
      stream,
      lease.service,
      client,
      electionService,
    ],
    node,
    dnsPort: () => dns.port,
    // Until the first config (the API or the leader may be down), signals still stop meshd.
    untilReady: () =>
      Promise.race([
        waitUntil(() => node.agent.ready(), ctx.stopped).then(() => null),
        ctx.stopped,
      ]),
    readyFields: () => ({
      http: node.proxy.httpAddress,
      api: node.servers.apiAddress,
      distribution: hostPort(o.advertise, stream.port),
    }),
  };
}

/**
 * The mesh DNS: the responder, and the watch of the shadow Services that feeds it. Every node
 * watches the shadow Services the leader keeps: the leader to reconcile them, every node to
 * answer DNS from them (see {@linkcode DnsFeed}).
 */
class MeshDns {
  readonly responder: Service;
  readonly shadowWatch: Service;
  /** The leader's writer of the shadow Services, which reads this watch. */
  readonly shadows: ShadowServiceController;
  #server: DnsServer | null = null;

  constructor(ctx: RunContext, setup: KubeSetup, node: NodeServices, isLeader: () => boolean) {
    const { config, logger } = ctx;
    const log = logger.with({ room: "dns" });
    const zone = config.dns.port > 0 ? setup.zone : null;
    const stateDir = config.distribution.stateDir;
    const store = zone && stateDir
      ? new ZoneStore(
        `${stateDir}/dns.json`,
        (e) => log.warn("cannot save the DNS names", { error: e.message }),
      )
      : null;
    let watch: Reflector | null = null;
    this.shadows = new ShadowServiceController({
      api: setup.kapi,
      logger: logger.with({ room: "controller" }),
      meshNamespace: config.kube.meshNamespace,
      selector: setup.selector,
      httpPort: config.proxy.httpPort,
      isLeader,
      existing: () => watch?.synced ? watch.items.values() : null,
    });
    const feed = new DnsFeed({
      zone,
      store,
      names: () => shadowDnsEntries(watch?.items.values() ?? []),
      onNames: (entries) => node.datapath.setAddresses(meshAddresses(entries)),
      startResponder: () => zone && this.#start(ctx, zone, log),
      isLeader,
      resync: () => void this.shadows.resync(),
      logger: log,
    });
    this.responder = {
      name: "the mesh DNS responder",
      start: () => feed.restore(),
      stop: () => this.#server?.stop(),
    };
    this.shadowWatch = {
      name: "the shadow Services' watch",
      start: () => {
        watch = new setup.kube.Reflector({
          api: setup.kapi,
          path: `/api/v1/namespaces/${config.kube.meshNamespace}/services`,
          apiVersion: "v1",
          kind: "Service",
          labelSelector: SHADOW_SELECTOR,
          logger: logger.with({ room: "controller" }),
          onChange: () => feed.changed(),
        });
        watch.start();
      },
      stop: async () => {
        // No shadow pass retries after this: a pass under way finishes first.
        await this.shadows.stop();
        await watch?.stop();
        await feed.stop();
      },
    };
  }

  /** The responder's port while it listens, else null. */
  get port(): number | null {
    return this.#server ? this.#server.port : null;
  }

  /**
   * Binds the responder, once. It binds only once it has names to give: bound earlier, it
   * would answer NXDOMAIN for every mesh name, and resolvers cache that.
   */
  #start(ctx: RunContext, zone: MeshZone, log: RunContext["logger"]): void {
    if (this.#server) return;
    const { address, port } = ctx.config.dns;
    const server = new DnsServer({
      hostname: address,
      port,
      reusePort: ctx.config.reusePort,
      zone,
      logger: log,
      registry: ctx.registry,
    });
    try {
      server.start();
    } catch (e) {
      throw new CliError(`Cannot listen on ${address}:${port} for DNS: ${(e as Error).message}`);
    }
    this.#server = server;
  }
}

/** The mesh addresses of each service, from the DNS names of its shadow Service. */
function meshAddresses(entries: readonly MeshDnsEntry[]): MeshAddresses {
  return new Map(entries.map((e) => [`${e.namespace}/${e.name}`, e]));
}

/**
 * The config stream this pod serves while it leads, with a key made for this process. With
 * --reuse-port, the meshd this one replaces may hold the port (the config stream cannot share
 * it): it is taken once that one has left, and {@linkcode bound} resolves only then.
 */
class ConfigStream implements Service {
  readonly name = "the config stream this pod serves while it leads";
  readonly #ctx: RunContext;
  readonly #setup: KubeSetup;
  #server: DistributionServer | null = null;
  /** The distribution room, loaded on start. */
  dist: Dist | null = null;
  identity: LeaderIdentity | null = null;
  /** The port the stream listens on (or will, once the predecessor has left). */
  port: number;
  /** Resolves once the port is bound: the election waits for it. */
  bound: Promise<void> = Promise.resolve();
  /**
   * This process's own node is let in by a secret only it knows, whatever credentials it runs
   * with: a meshd started from a kubeconfig (the dev loop) has no ServiceAccount token, and its
   * node takes its config from its own controller all the same. Every other node shows a
   * token the API server vouches for.
   */
  readonly selfToken = `meshd-self.${
    btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))))
  }`;
  /** Whether this pod leads now; set by the election. */
  leading: () => boolean = () => false;

  constructor(ctx: RunContext, setup: KubeSetup) {
    this.#ctx = ctx;
    this.#setup = setup;
    this.port = ctx.config.distribution.port;
  }

  /** The server, once started. */
  get server(): DistributionServer {
    if (!this.#server) throw new Error("the config stream is not started");
    return this.#server;
  }

  async start(): Promise<void> {
    const { config, logger } = this.#ctx;
    const { kube: k, kapi } = this.#setup;
    const dist = this.dist = await import("../distribution/mod.ts");
    const identity = this.identity = await dist.createLeaderIdentity(this.#setup.identity);
    const nodeUser = k.serviceAccountUser(
      config.kube.meshNamespace,
      config.distribution.serviceAccount,
    );
    const server = this.#server = new dist.DistributionServer({
      identity,
      logger: logger.with({ room: "distribution" }),
      isLeader: () => this.leading(),
      authenticate: ({ token }) =>
        token === this.selfToken ? Promise.resolve(null) : k.reviewToken(kapi, token, nodeUser),
    });
    const address = config.distribution.address;
    try {
      this.port = await server.listen(address, this.port);
    } catch (e) {
      if (!config.reusePort || this.port === 0) {
        throw new CliError(
          `Cannot listen on ${address}:${this.port} for the config stream: ${(e as Error).message}`,
        );
      }
      this.bound = this.#retry(address, (e as Error).message);
    }
  }

  stop(): Promise<void> | undefined {
    return this.#server?.stop();
  }

  /** Tries the held port every second until it is bound, or meshd stops. */
  async #retry(address: string, error: string): Promise<void> {
    const log = this.#ctx.logger.with({ room: "distribution" });
    log.info("the config stream's port is held, by the meshd this one replaces; retrying", {
      address: hostPort(address, this.port),
      error,
    });
    for (let done = false; !done;) {
      const gone = await Promise.race([
        new Promise((r) => setTimeout(() => r(false), 1000)),
        this.#ctx.stopped.then(() => true),
      ]);
      if (gone) throw new Error("stopped");
      done = await this.server.listen(address, this.port).then(() => true, () => false);
    }
    log.info("config stream listening", { address: hostPort(address, this.port) });
  }
}

/**
 * The controller and its election: the elector campaigns for the Lease (once the config
 * stream's port is bound: electing a controller does not wait for this node's first config),
 * and the controller leads while this pod holds it.
 */
class Election {
  readonly #controller: MeshController;
  readonly #elector: LeaderElector;
  readonly #stream: ConfigStream;

  constructor(
    ctx: RunContext,
    setup: KubeSetup,
    o: { stream: ConfigStream; node: NodeServices; dns: MeshDns; advertise: string },
  ) {
    const { config, logger } = ctx;
    const { kube: k, kapi } = setup;
    const { stream, dns } = o;
    const agent = o.node.agent;
    this.#stream = stream;
    const controller = this.#controller = new MeshController({
      logger: logger.with({ room: "controller" }),
      identity: setup.identity,
      server: stream.server,
      registry: ctx.registry,
      seed: () => agent.current(),
      compile: config.compile,
      inputLogger: logger.with({ room: "node" }),
      onInput: (r) => agent.reportInput(r),
      onConfig: (c) => void dns.shadows.update(c),
      watch: (onLoad) => {
        const p = new k.KubeProvider({
          api: kapi,
          logger: logger.with({ room: "provider" }),
          watchNamespaces: config.kube.watchNamespaces,
          ignoreNamespaces: [...config.kube.ignoreNamespaces, config.kube.meshNamespace],
          onLoad,
        });
        p.start().catch((e) =>
          logger.error("watching the cluster failed", { error: (e as Error).message })
        );
        return p;
      },
    });
    stream.leading = () => controller.leading;
    this.#elector = new k.LeaderElector({
      api: kapi,
      logger: logger.with({ room: "controller" }),
      namespace: config.kube.meshNamespace,
      name: config.kube.leaseName,
      identity: setup.identity,
      ...config.kube.timing,
      annotations: {
        [LEASE_ADDRESS_ANNOTATION]: hostPort(o.advertise, stream.port),
        [LEASE_CERT_ANNOTATION]: stream.identity!.certPem,
      },
      onStartedLeading: () => {
        void controller.lead();
        // A new leader brings the API in line with the config at once.
        void dns.shadows.resync();
      },
      onStoppedLeading: () => void controller.stepDown("the lease is lost"),
    });
  }

  get isLeader(): boolean {
    return this.#elector.isLeader;
  }

  get leading(): boolean {
    return this.#controller.leading;
  }

  report(): ReturnType<MeshController["report"]> {
    return this.#controller.report();
  }

  start(): void {
    this.#stream.bound.then(() => this.#elector.start(), () => {});
  }

  /** A leader gives the Lease up first, so another pod takes over at once. */
  async stop(): Promise<void> {
    await this.#elector.stop();
    await this.#controller.stepDown("meshd is stopping");
  }
}

/** The watch of the Lease the controllers elect on: who leads, and where. */
function watchLease(
  ctx: RunContext,
  setup: KubeSetup,
  onChange: () => void,
): { service: Service; get: () => RawObject | undefined } {
  const k = ctx.config.kube;
  let watch: Reflector | null = null;
  const service: Service = {
    name: "the Lease's watch",
    start: () => {
      watch = new setup.kube.Reflector({
        api: setup.kapi,
        path: `/apis/coordination.k8s.io/v1/namespaces/${k.meshNamespace}/leases`,
        apiVersion: "coordination.k8s.io/v1",
        kind: "Lease",
        fieldSelector: `metadata.name=${k.leaseName}`,
        logger: ctx.logger.with({ room: "node" }),
        onChange,
      });
      watch.start();
    },
    stop: () => watch?.stop(),
  };
  return { service, get: () => watch?.items.get(`${k.meshNamespace}/${k.leaseName}`) };
}

/** What {@linkcode LeaderClient} uses. */
interface LeaderClientParts {
  stream: ConfigStream;
  node: NodeServices;
  leader: LeaderLookup;
  /** Whether this pod's controller leads now. */
  leading: () => boolean;
}

/**
 * This node's config stream from whoever holds the Lease, the leader's own node too (to its
 * own controller, with the secret only this process knows).
 */
class LeaderClient implements Service {
  readonly name = "this node's config stream from the leader";
  readonly #ctx: RunContext;
  readonly #setup: KubeSetup;
  readonly #o: LeaderClientParts;
  #client: DistributionClient | null = null;

  constructor(ctx: RunContext, setup: KubeSetup, o: LeaderClientParts) {
    this.#ctx = ctx;
    this.#setup = setup;
    this.#o = o;
  }

  start(): void {
    const { stream, node, leader, leading } = this.#o;
    const tokenFile = this.#ctx.config.distribution.tokenFile;
    const kapi = this.#setup.kapi;
    const client = this.#client = new stream.dist!.DistributionClient({
      node: this.#setup.identity,
      leader: () => Promise.resolve(leader.address()),
      token: () => leading() ? Promise.resolve(stream.selfToken) : nodeToken(tokenFile, kapi),
      current: () => node.agent.current(),
      apply: (c) => node.agent.apply(c, "leader"),
      logger: this.#ctx.logger.with({ room: "node" }),
    });
    registerNodeMetrics(this.#ctx.registry, client);
    client.start();
  }

  stop(): Promise<void> | undefined {
    return this.#client?.stop();
  }

  /** The Lease says the leader moved. */
  leaderChanged(now: LeaderAddress | null): void {
    this.#client?.leaderChanged(now);
  }
}

/** The token this node proves itself with: the token file, else the kubeconfig's token. */
async function nodeToken(file: string, kapi: KubeApi): Promise<string> {
  try {
    return (await Deno.readTextFile(file)).trim();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return kapi.kc.getCurrentUser()?.token ?? "";
}

function registerNodeMetrics(registry: Registry, client: DistributionClient): void {
  registry.collect(
    "meshd_distribution_connected",
    "1 while this node holds a config stream to the leader.",
    [],
    () => [[[], client.connected ? 1 : 0]],
  );
  registry.collect(
    "meshd_distribution_updates_total",
    "Config updates this node received from the leader: snapshot, delta, or failed to apply.",
    ["kind"],
    () => [
      [["snapshot"], client.stats.snapshots],
      [["delta"], client.stats.deltas],
      [["failed"], client.stats.failures],
    ],
  );
  registry.collect(
    "meshd_distribution_connects_total",
    "Config streams this node opened to a leader.",
    [],
    () => [[[], client.stats.connects]],
  );
}

/** Resolves once `cond()` holds, checking every 50 ms, or when `until` settles. */
function waitUntil(cond: () => boolean, until: Promise<unknown>): Promise<void> {
  return new Promise((resolve) => {
    let done = false;
    until.then(() => done = true);
    const tick = () => {
      if (done || cond()) resolve();
      else setTimeout(tick, 50);
    };
    tick();
  });
}

/** `host:port`, with brackets for an IPv6 host. */
export function hostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
