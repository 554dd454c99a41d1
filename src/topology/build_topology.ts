import type {
  Diagnostic,
  MeshAccessRule,
  MeshEndpoint,
  MeshPort,
  MeshService,
  MeshSplit,
} from "./mesh_config.ts";
import {
  type EndpointSlice,
  type HttpMatch,
  type HttpRouteGroup,
  type MeshObject,
  objectKey,
  type Pod,
  type Service,
  type ServicePort,
  type TcpRoute,
  type TrafficSplit,
  type TrafficTarget,
  type TrafficType,
} from "./objects.ts";
import { compareAddresses } from "./compare_addresses.ts";
import { compareNames } from "./compare_names.ts";

/** Options for {@linkcode buildTopology}. */
export interface BuildTopologyOptions {
  /** Traffic type of Services without a `traffic-type` annotation. Default `http`. */
  defaultTrafficType?: "http" | "tcp";
  /** Enforce SMI access control: deny by default, TrafficTargets let traffic in. */
  acl?: boolean;
  /** Namespaces whose Services, TrafficSplits and TrafficTargets are left out of the mesh. */
  ignoredNamespaces?: readonly string[];
  /**
   * Objects that exist but could not be read, by `Kind/namespace/name`, with why: a reference
   * to one says so instead of "does not exist".
   */
  unreadable?: Readonly<Record<string, string>>;
  /** The results of the last build to reuse where the objects are the same; see {@linkcode TopologyCache}. */
  cache?: TopologyCache;
}

/** A service port before the proxy's listen port is chosen. */
export type TopologyPort = Omit<MeshPort, "listenPort">;
/** A service as resolved from the objects. */
export type TopologyService = Omit<MeshService, "ports"> & { ports: TopologyPort[] };

/** The mesh as the objects describe it: services with their endpoints, splits and access. */
export interface Topology {
  acl: boolean;
  /** Sorted by namespace, then name. */
  services: TopologyService[];
  identities: Record<string, string>;
  /** Everything the builder skipped or could not resolve, in a stable order. */
  diagnostics: Diagnostic[];
}

/** Records a diagnostic about `obj`; `warn` unless told otherwise. */
type Warn = (obj: MeshObject, message: string, level?: "info" | "warn") => void;
/** Says why a referenced object is absent: it does not exist, or it could not be read. */
type Missing = (kind: string, key: string) => string;

const byKey = <T extends MeshObject>(objs: T[]): Map<string, T> =>
  new Map(objs.map((o) => [`${o.meta.namespace}/${o.meta.name}`, o]));

/**
 * Builds the {@linkcode Topology} from decoded objects. Pure: the same objects always give the
 * same topology. A reference that cannot be resolved is skipped with a diagnostic; it never
 * fails the whole build.
 *
 * @example
 * ```ts
 * const topology = buildTopology(objects, { acl: true, ignoredNamespaces: ["kube-system"] });
 * ```
 */
export function buildTopology(
  objects: readonly MeshObject[],
  options: BuildTopologyOptions = {},
): Topology {
  const acl = options.acl ?? false;
  const ignored = new Set(options.ignoredNamespaces ?? []);
  const diagnostics: Diagnostic[] = [];
  const warn: Warn = (obj, message, level = "warn") => {
    diagnostics.push({ level, object: objectKey(obj), source: obj.source, message });
  };
  const missing: Missing = (kind, key) => {
    const why = options.unreadable?.[`${kind}/${key}`];
    return why === undefined
      ? `${kind} "${key}" does not exist`
      : `${kind} "${key}" exists but could not be read (${why})`;
  };

  const of = byKind(objects);
  const inMesh = <T extends MeshObject>(objs: T[]): T[] =>
    objs.filter((o) => !ignored.has(o.meta.namespace));

  const services = inMesh(of("Service")).sort(compareMeta);
  const pods = of("Pod");
  const ends: EndpointIndex = {
    slicesByService: slicesByService(of("EndpointSlice").sort(compareMeta), warn),
    podByKey: byKey(pods),
    podByIp: new Map(pods.filter((p) => p.podIP).map((p) => [p.podIP!, p])),
  };
  const identities = podIdentities(pods);
  const fallback = options.defaultTrafficType ?? "http";
  const cache = options.cache?.next(pods, fallback);
  const splits = inMesh(of("TrafficSplit")).sort(compareMeta);
  // Splits and access are resolved on the ports below, by changing them. With neither, nothing
  // changes them, so a service resolved before is given as the very object it was last time:
  // the next step keeps its MeshService without comparing the two.
  const untouched = !acl && splits.length === 0;
  const result: TopologyService[] = [];
  for (const svc of services) {
    const slices = ends.slicesByService.get(`${svc.meta.namespace}/${svc.meta.name}`) ?? [];
    let built = cache?.get(svc, slices);
    if (built) diagnostics.push(...built.diagnostics);
    else {
      const mark = diagnostics.length;
      const service = topologyService(svc, slices, ends, fallback, warn);
      built = { service, diagnostics: diagnostics.slice(mark) };
      cache?.set(svc, slices, built);
    }
    // Fresh ports where splits or access may be resolved on them below.
    const s = built.service;
    if (s && untouched) result.push(built.plain ??= fresh(s, acl));
    else if (s) result.push(fresh(s, acl));
  }
  const groups = byKey(of("HTTPRouteGroup"));
  // Without a split there is nothing to look up: no index of every service is built.
  if (splits.length > 0) {
    applySplits(
      splits,
      new Map(result.map((s) => [`${s.namespace}/${s.name}`, s])),
      byKey(services),
      groups,
      warn,
      missing,
    );
  }
  if (acl) {
    applyAccess(
      inMesh(of("TrafficTarget")).sort(compareMeta),
      result,
      groups,
      byKey(of("TCPRoute")),
      warn,
      missing,
    );
  }
  return { acl, services: result, identities, diagnostics };
}

/** The objects of one kind, from {@linkcode byKind}. */
type OfKind = <K extends MeshObject["kind"]>(kind: K) => Extract<MeshObject, { kind: K }>[];

/** The objects by kind, sorted into lists in one pass (seven filters over 20,000 cost more). */
function byKind(objects: readonly MeshObject[]): OfKind {
  const kinds = new Map<string, MeshObject[]>();
  for (const o of objects) {
    const list = kinds.get(o.kind);
    if (list) list.push(o);
    else kinds.set(o.kind, [o]);
  }
  return <K extends MeshObject["kind"]>(kind: K) =>
    (kinds.get(kind) ?? []) as Extract<MeshObject, { kind: K }>[];
}

/** Where a Service port finds its endpoints: its slices, and the Pods they name. */
interface EndpointIndex {
  /** Slices by their Service's `namespace/name`. */
  slicesByService: Map<string, EndpointSlice[]>;
  podByKey: Map<string, Pod>;
  podByIp: Map<string, Pod>;
}

/** `slices` by the `namespace/name` of the Service each belongs to, skipping unusable ones. */
function slicesByService(slices: EndpointSlice[], warn: Warn): Map<string, EndpointSlice[]> {
  const out = new Map<string, EndpointSlice[]>();
  for (const s of slices) {
    if (!s.serviceName) {
      warn(s, 'EndpointSlice has no "kubernetes.io/service-name" label and belongs to no Service');
      continue;
    }
    if (s.addressType === "FQDN") {
      warn(s, "EndpointSlice with addressType FQDN is not supported; skipped");
      continue;
    }
    const k = `${s.meta.namespace}/${s.serviceName}`;
    out.set(k, [...(out.get(k) ?? []), s]);
  }
  return out;
}

/**
 * The ServiceAccount (`namespace/name`) of each Pod IP. An IP that running Pods of several
 * ServiceAccounts share (hostNetwork Pods on one node) has them all, sorted and joined by `,`:
 * a source there is let in when any of them is, as Traefik Mesh lets in each Pod IP of a
 * TrafficTarget's sources, whatever else runs at that address.
 */
function podIdentities(pods: Pod[]): Record<string, string> {
  const byIp = new Map<string, Set<string>>();
  for (const p of [...pods].sort(compareMeta)) {
    // Only running pods own their address; a finished pod's IP may be reused.
    if (p.podIP && (p.phase === "Running" || p.phase === "Pending")) {
      const sa = `${p.meta.namespace}/${p.serviceAccountName}`;
      const at = byIp.get(p.podIP);
      if (at) at.add(sa);
      else byIp.set(p.podIP, new Set([sa]));
    }
  }
  const identities: Record<string, string> = {};
  for (const [ip, sas] of byIp) identities[ip] = [...sas].sort().join(",");
  return identities;
}

/**
 * One Service with its ports' endpoints, before splits and access; null (with a diagnostic)
 * when no port is usable.
 */
function topologyService(
  svc: Service,
  slices: EndpointSlice[],
  ends: EndpointIndex,
  fallback: "http" | "tcp",
  warn: Warn,
): TopologyService | null {
  if (svc.ports.length === 0) {
    warn(svc, "Service has no ports; skipped");
    return null;
  }
  const ports: TopologyPort[] = [];
  for (const sp of svc.ports) {
    const protocol = portProtocol(svc, sp, fallback, warn);
    if (!protocol) continue;
    ports.push({
      name: sp.name,
      port: sp.port,
      protocol,
      endpoints: resolveEndpoints(sp, slices, ends.podByKey, ends.podByIp, warn),
      split: null,
      access: null,
    });
  }
  if (ports.length === 0) return null;
  return {
    name: svc.meta.name,
    namespace: svc.meta.namespace,
    clusterIP: svc.clusterIP,
    scheme: svc.mesh.scheme ?? "http",
    retryAttempts: svc.mesh.retryAttempts ?? 0,
    circuitBreaker: svc.mesh.circuitBreaker ?? null,
    rateLimit: svc.mesh.rateLimit ?? null,
    // Only when annotated: the flag decides for the rest, on each node.
    ...(svc.mesh.accessLog !== undefined ? { accessLog: svc.mesh.accessLog } : {}),
    ports,
  };
}

/** What one Service resolved to, and what was said about it on the way. */
interface ResolvedService {
  service: TopologyService | null;
  diagnostics: Diagnostic[];
  /** `service` with fresh ports and no split or access, while no build has splits or ACL. */
  plain?: TopologyService;
}

/** `s` with ports of its own, no split and no access yet. */
function fresh(s: TopologyService, acl: boolean): TopologyService {
  return { ...s, ports: s.ports.map((p) => ({ ...p, split: null, access: acl ? [] : null })) };
}

/**
 * What the last build resolved each Service to, given again while the objects it came from
 * are the same objects: the Service, its EndpointSlices (in order) and every Pod. A provider
 * that keeps the objects of unchanged resources (the kube provider does, by resourceVersion)
 * then resolves only what changed: at 10,000 services, one changed endpoint resolves one
 * service, and the next step ({@linkcode buildMeshConfig}) finds the others equal by
 * reference. Splits and access are resolved on every build, from all the objects. Pass the
 * same cache to each build ({@linkcode BuildTopologyOptions.cache}).
 */
export class TopologyCache {
  /**
   * By the Service object, weakly: a provider that makes new objects for each load (the file
   * provider) lets go of the old ones, and their entries go with them.
   */
  #entries = new WeakMap<Service, { slices: EndpointSlice[]; built: ResolvedService }>();
  #pods: readonly Pod[] = [];
  #trafficType = "";

  /** Starts a build: drops everything when a Pod or the default traffic type changed. */
  next(pods: readonly Pod[], trafficType: string): this {
    const samePods = pods.length === this.#pods.length && pods.every((p, i) => p === this.#pods[i]);
    if (!samePods || trafficType !== this.#trafficType) this.#entries = new WeakMap();
    this.#pods = pods;
    this.#trafficType = trafficType;
    return this;
  }

  /** What `svc` resolved to last time, if it and its slices are the objects they were. */
  get(svc: Service, slices: EndpointSlice[]): ResolvedService | undefined {
    const e = this.#entries.get(svc);
    if (!e || e.slices.length !== slices.length || e.slices.some((s, i) => s !== slices[i])) {
      return undefined;
    }
    return e.built;
  }

  /** Keeps what `svc` with `slices` resolved to. */
  set(svc: Service, slices: EndpointSlice[], built: ResolvedService): void {
    this.#entries.set(svc, { slices, built });
  }
}

/** What a TrafficTarget without rules allows: every HTTP request. */
const ANY_REQUEST: HttpMatch = { name: "(no rules)", methods: [], pathRegex: "", headers: {} };

function hasCondition(m: HttpMatch): boolean {
  return m.pathRegex !== "" || Object.keys(m.headers).length > 0 ||
    (m.methods.length > 0 && !m.methods.includes("*"));
}

function compareMeta(a: MeshObject, b: MeshObject): number {
  return compareNames(a.meta.namespace, b.meta.namespace) || compareNames(a.meta.name, b.meta.name);
}

function portProtocol(
  svc: Service,
  sp: ServicePort,
  fallback: "http" | "tcp",
  warn: Warn,
): TrafficType | null {
  const label = `port ${sp.name ? `"${sp.name}" ` : ""}${sp.port}`;
  if (sp.protocol === "SCTP") {
    warn(svc, `${label} is SCTP, which the mesh does not carry; skipped`);
    return null;
  }
  const tt = svc.mesh.trafficType;
  if (sp.protocol === "UDP") {
    if (tt && tt !== "udp") warn(svc, `${label} is UDP; traffic-type "${tt}" does not apply to it`);
    return "udp";
  }
  if (tt === "udp") {
    warn(svc, `${label} is TCP but traffic-type is "udp"; skipped`);
    return null;
  }
  return tt ?? fallback;
}

function resolveEndpoints(
  sp: ServicePort,
  slices: EndpointSlice[],
  podByKey: Map<string, Pod>,
  podByIp: Map<string, Pod>,
  warn: Warn,
): MeshEndpoint[] {
  const seen = new Map<string, MeshEndpoint>();
  for (const slice of slices) {
    // The EndpointSlice controller names each slice port after the Service port, and resolves
    // a named targetPort to a number per Pod. Hand-written slices may use the targetPort name.
    const match = slice.ports.find((p) => p.name === sp.name && p.protocol === sp.protocol) ??
      (typeof sp.targetPort === "string"
        ? slice.ports.find((p) => p.name === sp.targetPort && p.protocol === sp.protocol)
        : undefined);
    if (!match) {
      if (slice.endpoints.length > 0) {
        warn(
          slice,
          `EndpointSlice has no port for Service port ${sp.name ? `"${sp.name}"` : sp.port}`,
        );
      }
      continue;
    }
    for (const ep of slice.endpoints) {
      for (const address of ep.addresses) {
        const pod =
          (ep.podName ? podByKey.get(`${slice.meta.namespace}/${ep.podName}`) : undefined) ??
            podByIp.get(address);
        const id = `${address}:${match.port}`;
        const prev = seen.get(id);
        // Slices may repeat an endpoint while they are being rebalanced; keep the readier one.
        if (prev && (prev.ready || !ep.ready)) continue;
        seen.set(id, {
          address,
          port: match.port,
          ready: ep.ready,
          serving: ep.serving,
          terminating: ep.terminating,
          nodeName: ep.nodeName ?? pod?.nodeName ?? null,
          serviceAccount: pod ? `${pod.meta.namespace}/${pod.serviceAccountName}` : null,
        });
      }
    }
  }
  return [...seen.values()].sort((a, b) =>
    compareAddresses(a.address, b.address) || a.port - b.port
  );
}

function resolveMatches(
  owner: MeshObject,
  ns: string,
  name: string,
  wanted: string[],
  groups: Map<string, HttpRouteGroup>,
  warn: Warn,
  missing: Missing,
): HttpMatch[] | null {
  const group = groups.get(`${ns}/${name}`);
  if (!group) {
    warn(owner, missing("HTTPRouteGroup", `${ns}/${name}`));
    return null;
  }
  // SMI access: a rule with no `matches` takes every match of the group.
  if (wanted.length === 0) return group.matches;
  const out: HttpMatch[] = [];
  for (const w of wanted) {
    const m = group.matches.find((x) => x.name === w);
    if (m) out.push(m);
    else warn(owner, `HTTPRouteGroup "${ns}/${name}" has no match named "${w}"`);
  }
  return out;
}

/** What the TrafficSplits are resolved against. */
interface SplitContext {
  /** The mesh's services by `namespace/name`; a split writes its ports' `split`. */
  services: Map<string, TopologyService>;
  /** Every Service declared, in the mesh or not. */
  declared: Map<string, Service>;
  groups: Map<string, HttpRouteGroup>;
  warn: Warn;
  missing: Missing;
}

/** A split's backend that can take traffic. */
type SplitBackend = { svc: TopologyService; weight: number };

function applySplits(
  splits: TrafficSplit[],
  services: Map<string, TopologyService>,
  declared: Map<string, Service>,
  groups: Map<string, HttpRouteGroup>,
  warn: Warn,
  missing: Missing,
): void {
  const ctx: SplitContext = { services, declared, groups, warn, missing };
  const taken = new Map<string, string>();
  const edges = new Map<string, string[]>();
  for (const split of splits) {
    const rootKey = `${split.meta.namespace}/${split.service}`;
    const root = services.get(rootKey);
    if (!root) {
      warn(split, `root Service "${rootKey}" is not in the mesh; split ignored`);
      continue;
    }
    const owner = taken.get(rootKey);
    if (owner) {
      // Two splits for one root cannot both apply; the first by name wins, deterministically.
      warn(split, `Service "${rootKey}" already has TrafficSplit "${owner}"; this one is ignored`);
      continue;
    }
    const matches = splitMatches(split, ctx);
    if (!matches) {
      warn(split, "split ignored because a match it names is missing");
      continue;
    }
    const backends = splitBackends(split, ctx);
    if (backends.length === 0) {
      warn(split, "no usable backend with a weight above 0; split ignored");
      continue;
    }
    taken.set(rootKey, `${split.meta.namespace}/${split.meta.name}`);
    edges.set(rootKey, backends.map((b) => `${b.svc.namespace}/${b.svc.name}`));
    splitPorts(split, root, matches, backends, warn);
  }
  // Splits never nest: a request goes to an endpoint of the chosen backend in one hop, so a
  // cycle cannot loop. It is still almost certainly a mistake, so say so.
  for (const cycle of findCycles(edges)) {
    const split = splits.find((s) => `${s.meta.namespace}/${s.service}` === cycle[0]);
    if (split) {
      warn(
        split,
        `splits form a cycle (${cycle.join(" -> ")}); splits do not nest, each applies in one hop`,
      );
    }
  }
}

/** The HTTP matches a split names, or null when one of its groups is missing. */
function splitMatches(split: TrafficSplit, ctx: SplitContext): HttpMatch[] | null {
  const ns = split.meta.namespace;
  let matches: HttpMatch[] = [];
  let broken = false;
  for (const m of split.matches) {
    const found = resolveMatches(split, ns, m.name, [], ctx.groups, ctx.warn, ctx.missing);
    if (!found) broken = true;
    else matches = matches.concat(found);
  }
  return broken ? null : matches;
}

/** The backends of a split that are in the mesh and weigh more than 0. */
function splitBackends(split: TrafficSplit, ctx: SplitContext): SplitBackend[] {
  const backends: SplitBackend[] = [];
  for (const b of split.backends) {
    const key = `${split.meta.namespace}/${b.service}`;
    if (b.service === split.service) {
      ctx.warn(split, `backend "${b.service}" is the root service itself; ignored`);
      continue;
    }
    const svc = ctx.services.get(key);
    if (!svc) {
      ctx.warn(
        split,
        `backend ${
          ctx.declared.has(key)
            ? `Service "${key}" is not in the mesh`
            : ctx.missing("Service", key)
        }; skipped`,
      );
      continue;
    }
    if (b.weight === 0) continue;
    backends.push({ svc, weight: b.weight });
  }
  return backends;
}

/** Sets the split on each port of `root` that some backend exposes too. */
function splitPorts(
  split: TrafficSplit,
  root: TopologyService,
  matches: HttpMatch[],
  backends: SplitBackend[],
  warn: Warn,
): void {
  const rootKey = `${root.namespace}/${root.name}`;
  const name = `${split.meta.namespace}/${split.meta.name}`;
  for (const port of root.ports) {
    if (matches.length > 0 && port.protocol !== "http") continue;
    // A backend that does not expose the root's port gets nothing on that port. (Traefik
    // Mesh refuses the whole split then; meshd splits among the backends that have it.)
    const usable = backends.filter((b) =>
      b.svc.ports.some((p) => p.port === port.port && p.protocol === port.protocol)
    );
    if (usable.length === 0) {
      warn(split, `no backend exposes port ${port.port} of "${rootKey}"; that port is not split`);
      continue;
    }
    for (const b of backends) {
      if (usable.includes(b)) continue;
      warn(
        split,
        `backend Service "${b.svc.namespace}/${b.svc.name}" does not expose port ${port.port} ` +
          `(${port.protocol}) of "${rootKey}"; it gets no traffic on that port`,
      );
    }
    port.split = {
      name,
      matches,
      backends: usable.map((b) => ({ service: b.svc.name, weight: b.weight })),
    } satisfies MeshSplit;
  }
}

function findCycles(edges: Map<string, string[]>): string[][] {
  const cycles: string[][] = [];
  const state = new Map<string, "open" | "done">();
  const visit = (node: string, path: string[]): void => {
    state.set(node, "open");
    for (const next of edges.get(node) ?? []) {
      if (state.get(next) === "open") cycles.push([...path.slice(path.indexOf(next)), node, next]);
      else if (!state.has(next)) visit(next, [...path, node]);
    }
    state.set(node, "done");
  };
  for (const node of [...edges.keys()].sort()) if (!state.has(node)) visit(node, []);
  return cycles.map((c) => c.filter((n, i) => i === 0 || n !== c[i - 1]));
}

function applyAccess(
  targets: TrafficTarget[],
  services: TopologyService[],
  groups: Map<string, HttpRouteGroup>,
  tcpRoutes: Map<string, TcpRoute>,
  warn: Warn,
  missing: Missing,
): void {
  for (const tt of targets) {
    const ns = tt.meta.namespace;
    const dest = `${tt.destination.namespace}/${tt.destination.name}`;
    let http: HttpMatch[] = [];
    let l4 = false;
    for (const rule of tt.rules) {
      if (rule.kind === "TCPRoute") {
        if (tcpRoutes.has(`${ns}/${rule.name}`)) l4 = true;
        else warn(tt, missing("TCPRoute", `${ns}/${rule.name}`));
      } else {
        http = http.concat(
          resolveMatches(tt, ns, rule.name, rule.matches, groups, warn, missing) ?? [],
        );
      }
    }
    if (tt.rules.length === 0) {
      // SMI access v1alpha2 requires rules, and says nothing of a target without them. Traefik
      // Mesh routes such a target by Host alone: its sources may send any HTTP request to the
      // destination. Users' objects were written against that, so meshd reads it the same way;
      // TCP and UDP still need a TCPRoute rule, as there.
      http = [ANY_REQUEST];
      warn(
        tt,
        `TrafficTarget has no rules: its sources may send any HTTP request to ServiceAccount ` +
          `"${dest}" (as Traefik Mesh reads it); TCP and UDP need a TCPRoute rule`,
        "info",
      );
    } else {
      // Traefik Mesh builds its rule from the matches that have a condition and drops those
      // without one, unless none has: then the rule is the Host alone. A condition-less match
      // beside others therefore allows nothing more there, and here.
      const conditioned = http.filter(hasCondition);
      if (conditioned.length > 0 && conditioned.length < http.length) {
        const names = http.filter((m) => !hasCondition(m)).map((m) => `"${m.name}"`).join(", ");
        warn(
          tt,
          `match ${names} has no pathRegex, methods or headers and allows nothing beside matches ` +
            `that have them (as in Traefik Mesh); remove it, or the other matches to allow all`,
        );
        http = conditioned;
      }
    }
    const rule: MeshAccessRule = {
      trafficTarget: `${ns}/${tt.meta.name}`,
      destination: dest,
      sources: tt.sources.map((s) => `${s.namespace}/${s.name}`).sort(),
      http,
      l4,
    };
    let applied = false;
    for (const svc of services) {
      for (const port of svc.ports) {
        // SMI: the destination is every Pod running as the ServiceAccount, and `port`, when
        // set, narrows it to that port of those Pods.
        const eps = port.endpoints.filter((e) => e.serviceAccount === dest);
        if (eps.length === 0) continue;
        if (tt.destination.port !== null && !eps.some((e) => e.port === tt.destination.port)) {
          continue;
        }
        port.access!.push(rule);
        applied = true;
      }
    }
    if (!applied) {
      const where = tt.destination.port === null ? "" : ` on port ${tt.destination.port}`;
      warn(tt, `no service port has endpoints running as ServiceAccount "${dest}"${where}`);
    }
  }
}
