import { type MeshConfig, type MeshPort, type MeshService, sameJson } from "../topology/mod.ts";
import { type BreakerTiming, CircuitBreaker } from "./breaker.ts";
import { AccessPolicy, type CompiledMatch, compileMatch } from "./access.ts";
import type { AccessLog } from "./access_log.ts";
import { EndpointPool, type EndpointState } from "./endpoint_pool.ts";
import { ProxyMetrics, type RouteMetrics } from "./proxy_metrics.ts";
import { TokenBucket } from "./token_bucket.ts";
import { WeightedChooser } from "./weighted.ts";

/** A ready endpoint of a route, with the ServiceAccount it runs as (for access control). */
export interface Candidate {
  state: EndpointState;
  serviceAccount: string | null;
}

/** A TrafficSplit on a route, resolved to the backends' own routes for the same port. */
export interface RouteSplit {
  name: string;
  /** When not empty, only matching HTTP requests are split; the rest use the root's endpoints. */
  matches: CompiledMatch[];
  backends: WeightedChooser<Route>;
}

/** One service port the proxy can send traffic to, with everything a request needs. */
export interface Route {
  /** `namespace/name:port`, also the key of state that outlives a config version. */
  key: string;
  /** `namespace/name`. */
  serviceKey: string;
  service: MeshService;
  port: MeshPort;
  /**
   * Ready endpoints with their ServiceAccounts, in the config's order, when access control
   * narrows them (empty on an open port, which needs only `readyStates`).
   */
  ready: Candidate[];
  /** `ready`'s states, for the common case where access control does not narrow them. */
  readyStates: EndpointState[];
  /** Who may use this port (open when ACL is off). */
  access: AccessPolicy;
  split: RouteSplit | null;
  rateLimit: TokenBucket | null;
  /** The service's circuit breaker (HTTP only), shared by its HTTP ports. */
  breaker: CircuitBreaker | null;
  metrics: RouteMetrics;
  /**
   * Where its requests, connections and flows are logged; null when they are not (decided
   * when the route is built, so a route that does not log pays one field test).
   */
  log: AccessLog | null;
}

/** Everything the proxy looks up per request or connection, built once per config. */
export interface RouteTable {
  version: number;
  /**
   * HTTP services by `<name>.<namespace>`: one entry a service, whatever the domains (see
   * {@linkcode lookupHttpRoute}).
   */
  http: Map<string, HttpHost>;
  /** The mesh domain, then its aliases, each with a leading dot. */
  domains: readonly string[];
  /** TCP routes by proxy listen port. */
  tcp: Map<number, Route>;
  /** UDP routes by proxy listen port. */
  udp: Map<number, Route>;
  /**
   * Every endpoint key in the config, so state for the others can be dropped. Like the maps,
   * the same set as the last build's, updated in place.
   */
  endpointKeys: Set<string>;
}

/** The HTTP ports of one service. */
export interface HttpHost {
  /** Its HTTP routes, in the config's order. */
  ports: Route[];
  /** The route of a Host without a port: port 80, or the only HTTP port; else null. */
  bare: Route | null;
}

/** State that outlives one config version; the proxy holds one and passes it to each build. */
export interface RouteState {
  pool: EndpointPool;
  metrics: ProxyMetrics;
  /** Rate limit buckets by route key; kept while the limit is unchanged. */
  buckets: Map<string, TokenBucket>;
  /** Circuit breakers by service key; kept while the expression is unchanged. */
  breakers: Map<string, CircuitBreaker>;
  breakerTiming: Partial<BreakerTiming>;
  /** The clock in ms. */
  now: () => number;
  /**
   * Other domains HTTP services answer to besides the config's, such as Traefik Mesh's
   * `traefik.mesh` and `maesh`, so its clients move over without edits.
   */
  domainAliases: readonly string[];
  /** The access log (`--access-log`, read with each Service's annotation); none when absent. */
  accessLog: AccessLog | null;
  /**
   * The last build, which the next one patches: configs keep the objects of unchanged services
   * (`applyDelta`, `buildMeshConfig`), so a one-endpoint change rebuilds the routes of one
   * service and touches the tables, endpoint states and metrics of that service alone.
   */
  last: LastBuild | null;
}

/** What one service contributed to the last build. */
interface ServiceRoutes {
  service: MeshService;
  routes: Route[];
  /** The state of each of its endpoints, once per route that lists it. */
  endpoints: EndpointState[];
}

/** The last build of a {@linkcode RouteState}. */
interface LastBuild {
  table: RouteTable;
  /** The config's service list, to find unchanged services by position first. */
  services: readonly MeshService[];
  byService: Map<string, ServiceRoutes>;
  /** The config's identity table, as copied into `identities`. */
  configIdentities: Readonly<Record<string, string>>;
  /**
   * The identity table every access policy reads, updated in place when the config's changes
   * (policies look a source up per request), so an identity change rebuilds no route.
   */
  identities: Record<string, string>;
  /** Routes that have a TrafficSplit, resolved again when any service changes. */
  splitRoots: Set<Route>;
}

/** A fresh {@linkcode RouteState}. */
export function newRouteState(options: Partial<RouteState> = {}): RouteState {
  return {
    pool: options.pool ?? new EndpointPool(),
    metrics: options.metrics ?? new ProxyMetrics(),
    buckets: options.buckets ?? new Map(),
    breakers: options.breakers ?? new Map(),
    breakerTiming: options.breakerTiming ?? {},
    now: options.now ?? Date.now,
    domainAliases: options.domainAliases ?? [],
    accessLog: options.accessLog ?? null,
    last: options.last ?? null,
  };
}

/** What a build dropped, for the caller to let go of. */
export interface RouteTableChanges {
  /** Endpoint keys no route lists any more. */
  endpointKeys: string[];
  /** {@linkcode ProxyMetrics.key}s of service ports that are gone. */
  metricKeys: string[];
  /** Services built again (new or changed). */
  built: number;
}

/**
 * Builds the lookup tables for a config, patching the last build of `state`: only services
 * whose object changed are built again. The maps (and `endpointKeys`) of the last build's
 * table are updated in place and shared by the new one: the proxy reads only the table in
 * force, and switches to the new one in the same step.
 *
 * An HTTP service port is reached as `<service>.<namespace>.<domain>:<port>`, and under each
 * of `state.domainAliases` too; a Host header without a port means port 80, or the service's
 * only HTTP port when it has no port 80.
 */
export function buildRouteTable(
  config: MeshConfig,
  state: RouteState = newRouteState(),
): RouteTable {
  return buildRouteTableWithChanges(config, state).table;
}

/** {@linkcode buildRouteTable}, with what the build dropped. */
export function buildRouteTableWithChanges(
  config: MeshConfig,
  state: RouteState,
): { table: RouteTable; changes: RouteTableChanges } {
  const last = state.last;
  const byService = last?.byService ?? new Map<string, ServiceRoutes>();
  const { changed, gone } = diffServices(config.services, last?.services ?? [], byService);
  const identities = last?.identities ?? {};
  if (state.accessLog) state.accessLog.identities = identities;
  // The new routes first: what may throw runs before any table changes.
  const built = changed.map(([key, s]) => serviceRoutes(key, s, state, identities));

  const domains = tableDomains(config.domain, state.domainAliases);
  const table: RouteTable = last ? { ...last.table, version: config.version, domains } : {
    version: config.version,
    domains,
    http: new Map(),
    tcp: new Map(),
    udp: new Map(),
    endpointKeys: new Set(),
  };
  const patch: TablePatch = {
    table,
    byService,
    splitRoots: last?.splitRoots ?? new Set<Route>(),
    state,
    released: [],
    droppedMetrics: new Set(),
  };
  // Out with what changed or went, all of it first: a listen port may move from one service
  // to another in one version. Then in with the new and changed services.
  for (const key of gone) removeService(patch, key);
  for (const [key] of changed) removeService(patch, key);
  changed.forEach(([key, service], i) => addService(patch, key, service, built[i]!));
  const changes: RouteTableChanges = {
    endpointKeys: releaseEndpoints(patch.released, table.endpointKeys),
    metricKeys: [...patch.droppedMetrics],
    built: changed.length,
  };

  // Splits resolve to the backends' routes for the same port: one hop, never re-entering. A
  // split whose backends are the routes it had keeps its chooser (and its place in the
  // rotation).
  if (changed.length > 0 || gone.length > 0) {
    for (const r of patch.splitRoots) resolveSplit(r, byService);
  }
  // The identity table last: every access policy, old and new, reads this one object.
  if (last?.configIdentities !== config.identities) syncIdentities(identities, config.identities);

  state.last = {
    table,
    services: config.services,
    byService,
    configIdentities: config.identities,
    identities,
    splitRoots: patch.splitRoots,
  };
  return { table, changes };
}

/** The mesh domain, then each alias not equal to it, each with a leading dot. */
function tableDomains(domain: string, aliases: readonly string[]): string[] {
  const trim = (d: string) => d.toLowerCase().replace(/^\.+|\.+$/g, "");
  const main = trim(domain);
  return [main, ...aliases.map(trim).filter((d) => d && d !== main)].map((d) => `.${d}`);
}

/**
 * The services to build again (new or changed), and the keys of those gone. Unchanged services
 * are found by position first: a delta replaces a service where it stands. A service equal to
 * the last build's in a new object (a snapshot after a reconnect, a config read from disk)
 * keeps its routes, pointed at the new object so the old config can go.
 */
function diffServices(
  services: readonly MeshService[],
  previous: readonly MeshService[],
  byService: Map<string, ServiceRoutes>,
): { changed: [string, MeshService][]; gone: string[] } {
  const changed: [string, MeshService][] = [];
  const sameList = services.length === previous.length;
  let sameKeys = sameList;
  for (let i = 0; i < services.length; i++) {
    const s = services[i]!;
    if (sameList && previous[i] === s) continue;
    const key = `${s.namespace}/${s.name}`;
    const was = byService.get(key);
    if (was && was.service !== s && sameJson(was.service, s)) {
      was.service = s;
      was.routes.forEach((r, j) => {
        r.service = s;
        r.port = s.ports[j]!;
      });
    } else if (was?.service !== s) changed.push([key, s]);
    const p = previous[i];
    if (sameKeys && (!p || `${p.namespace}/${p.name}` !== key)) sameKeys = false;
  }
  const gone: string[] = [];
  if (!sameKeys) {
    const now = new Set<string>();
    for (const s of services) now.add(`${s.namespace}/${s.name}`);
    for (const k of byService.keys()) if (!now.has(k)) gone.push(k);
  }
  return { changed, gone };
}

/** One build's changes to the last table, and what they let go of. */
interface TablePatch {
  table: RouteTable;
  byService: Map<string, ServiceRoutes>;
  splitRoots: Set<Route>;
  state: RouteState;
  /** The endpoint states of the routes taken out, once per route that listed them. */
  released: EndpointState[];
  /** Metric keys of the ports taken out and not put back. */
  droppedMetrics: Set<string>;
}

/** Takes a service's hosts, ports, buckets and breaker out of the table. */
function removeService(patch: TablePatch, key: string): void {
  const { table, byService, state } = patch;
  const was = byService.get(key);
  if (!was) return;
  byService.delete(key);
  table.http.delete(`${was.service.name}.${was.service.namespace}`);
  for (const r of was.routes) {
    patch.splitRoots.delete(r);
    patch.droppedMetrics.add(ProxyMetrics.key(key, r.port.port, r.port.protocol));
    const l4 = r.port.protocol === "tcp" ? table.tcp : r.port.protocol === "udp" ? table.udp : null;
    if (l4 && r.port.listenPort !== null && l4.get(r.port.listenPort) === r) {
      l4.delete(r.port.listenPort);
    }
    state.buckets.delete(r.key);
  }
  state.breakers.delete(key);
  patch.released.push(...was.endpoints);
}

/** Puts a service's built routes in the table: its host, listen ports, buckets and breaker. */
function addService(
  patch: TablePatch,
  key: string,
  service: MeshService,
  { routes, endpoints, breaker }: ReturnType<typeof serviceRoutes>,
): void {
  const { table, state } = patch;
  if (breaker) state.breakers.set(key, breaker);
  let host: HttpHost | null = null;
  for (const r of routes) {
    patch.droppedMetrics.delete(ProxyMetrics.key(key, r.port.port, r.port.protocol));
    if (r.rateLimit) state.buckets.set(r.key, r.rateLimit);
    if (r.port.split) patch.splitRoots.add(r);
    if (r.port.protocol === "http") {
      if (!host) {
        table.http.set(`${service.name}.${service.namespace}`, host = { ports: [], bare: null });
      }
      host.ports.push(r);
    } else if (r.port.listenPort !== null) {
      (r.port.protocol === "tcp" ? table.tcp : table.udp).set(r.port.listenPort, r);
    }
  }
  if (host) {
    host.bare = host.ports.find((r) => r.port.port === 80) ??
      (host.ports.length === 1 ? host.ports[0]! : null);
  }
  for (const e of endpoints) if (e.routes++ === 0) table.endpointKeys.add(e.key);
  patch.byService.set(key, { service, routes, endpoints });
}

/** Counts the released states down; returns the keys no route lists any more. */
function releaseEndpoints(released: EndpointState[], endpointKeys: Set<string>): string[] {
  const keys: string[] = [];
  for (const e of released) {
    if (--e.routes > 0) continue;
    endpointKeys.delete(e.key);
    keys.push(e.key);
  }
  return keys;
}

/** Makes `identities` equal to the config's, in place: every access policy reads it. */
function syncIdentities(
  identities: Record<string, string>,
  wanted: Readonly<Record<string, string>>,
): void {
  for (const ip of Object.keys(identities)) {
    if (!Object.hasOwn(wanted, ip)) delete identities[ip];
  }
  for (const [ip, sa] of Object.entries(wanted)) {
    if (identities[ip] !== sa) identities[ip] = sa;
  }
}

/** The routes of one service's ports, and the states of their endpoints. */
function serviceRoutes(
  serviceKey: string,
  service: MeshService,
  state: RouteState,
  identities: Readonly<Record<string, string>>,
): { routes: Route[]; endpoints: EndpointState[]; breaker: CircuitBreaker | null } {
  let breaker: CircuitBreaker | null = null;
  if (service.circuitBreaker) {
    const { expression, expr } = service.circuitBreaker;
    const old = state.breakers.get(serviceKey);
    breaker = old && old.expression === expression
      ? old
      : new CircuitBreaker(expression, expr, state.breakerTiming, state.now);
  }
  const routes: Route[] = [];
  const endpoints: EndpointState[] = [];
  for (const port of service.ports) {
    const key = `${serviceKey}:${port.port}`;
    let rateLimit: TokenBucket | null = null;
    if (service.rateLimit) {
      const { average, burst } = service.rateLimit;
      const old = state.buckets.get(key);
      rateLimit = old && old.rate === average && old.burst === burst
        ? old
        : new TokenBucket(average, burst, state.now);
    }
    const open = port.access === null;
    const ready: Candidate[] = open ? NONE : [];
    const readyStates: EndpointState[] = [];
    for (const ep of port.endpoints) {
      const s = state.pool.state(ep);
      endpoints.push(s);
      if (!ep.ready) continue;
      readyStates.push(s);
      if (!open) ready.push({ state: s, serviceAccount: ep.serviceAccount });
    }
    routes.push({
      key,
      serviceKey,
      service,
      port,
      ready,
      readyStates,
      // An open port never explains a refusal: one policy serves them all.
      access: open ? OPEN : new AccessPolicy(
        `${port.protocol.toUpperCase()} port ${port.port} of service "${serviceKey}"`,
        port.access,
        identities,
      ),
      split: null,
      rateLimit,
      breaker: port.protocol === "http" ? breaker : null,
      metrics: state.metrics.route(serviceKey, port.port, port.protocol),
      log: state.accessLog?.forService(service) ?? null,
    });
  }
  return { routes, endpoints, breaker };
}

/** `ready` of an open port. */
const NONE: Candidate[] = [];
Object.freeze(NONE);
/** The access policy of every port without access control. */
const OPEN = new AccessPolicy("an open port", null, {});

/** The backends each split root was last resolved to. */
const resolved = new WeakMap<Route, [Route, number][]>();

/** Resolves the TrafficSplit of `root` against the routes in force. */
function resolveSplit(root: Route, byService: Map<string, ServiceRoutes>): void {
  const s = root.port.split!;
  const backends: [Route, number][] = [];
  for (const b of s.backends) {
    const target = byService.get(`${root.service.namespace}/${b.service}`)?.routes.find((r) =>
      r.port.port === root.port.port && r.port.protocol === root.port.protocol
    );
    if (target) backends.push([target, b.weight]);
  }
  const was = resolved.get(root);
  if (
    was && was.length === backends.length &&
    was.every(([r, w], i) => backends[i]![0] === r && backends[i]![1] === w)
  ) return;
  resolved.set(root, backends);
  root.split = backends.length === 0 ? null : {
    name: s.name,
    matches: s.matches.map(compileMatch),
    backends: new WeightedChooser(backends),
  };
}

/** Finds the route for a Host header (`name.ns.mesh`, `name.ns.mesh:8080`, any case). */
export function lookupHttpRoute(table: RouteTable, hostHeader: string | null): Route | undefined {
  if (!hostHeader) return undefined;
  let host = hostHeader.trim().toLowerCase();
  let port = "";
  const colon = host.lastIndexOf(":");
  if (colon > 0 && host.indexOf("]", colon) < 0) {
    port = host.slice(colon + 1);
    host = host.slice(0, colon);
    if (!/^\d+$/.test(port)) return undefined;
  }
  if (host.endsWith(".")) host = host.slice(0, -1); // a fully qualified name may end with a dot
  // `<name>.<namespace>` (neither holds a dot) then one of the domains.
  const dot = host.indexOf(".");
  const end = dot < 0 ? -1 : host.indexOf(".", dot + 1);
  if (end < 0) return undefined;
  const tail = host.length - end;
  let known = false;
  for (const d of table.domains) {
    if (d.length === tail && host.endsWith(d)) {
      known = true;
      break;
    }
  }
  if (!known) return undefined;
  const h = table.http.get(host.slice(0, end));
  if (!h) return undefined;
  if (!port) return h.bare ?? undefined;
  if (port.length > 1 && port.charCodeAt(0) === 48) return undefined; // "080" names none
  const n = Number(port);
  for (const r of h.ports) if (r.port.port === n) return r;
  return undefined;
}

/**
 * The endpoints a request may use on `route`: all ready ones, or, with access control, those
 * running as a ServiceAccount the source was allowed to reach.
 */
export function candidatesFor(route: Route, destinations: Set<string>): EndpointState[] {
  if (route.access.open) return route.readyStates;
  const out: EndpointState[] = [];
  for (const c of route.ready) {
    if (c.serviceAccount !== null && destinations.has(c.serviceAccount)) out.push(c.state);
  }
  return out;
}
