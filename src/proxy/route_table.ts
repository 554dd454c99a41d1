import type { MeshConfig, MeshPort, MeshService } from "../topology/mod.ts";
import { type BreakerTiming, CircuitBreaker } from "./breaker.ts";
import { AccessPolicy, type CompiledMatch, compileMatch } from "./access.ts";
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
  /** Ready endpoints, in the config's order. */
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
}

/** Everything the proxy looks up per request or connection, built once per config. */
export interface RouteTable {
  version: number;
  /** HTTP routes by `host:port`, and by bare `host` where that is unambiguous. */
  http: Map<string, Route>;
  /** TCP routes by proxy listen port. */
  tcp: Map<number, Route>;
  /** UDP routes by proxy listen port. */
  udp: Map<number, Route>;
  /** Every endpoint key in the config, so state for the others can be dropped. */
  endpointKeys: Set<string>;
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
   * Routes of the last build by port object, to reuse for ports that did not change: configs
   * keep the objects of unchanged services (`applyDelta`, `buildMeshConfig`), so a one-endpoint
   * change rebuilds one route, not ten thousand.
   */
  routes: WeakMap<MeshPort, CachedRoute>;
  /** Builds so far; a cached route is reused only by the build right after the one it was in. */
  builds: number;
  /**
   * Other domains HTTP services answer to besides the config's, such as Traefik Mesh's
   * `traefik.mesh` and `maesh`, so its clients move over without edits.
   */
  domainAliases: readonly string[];
}

/** A route kept for reuse, with what it was built from. */
export interface CachedRoute {
  route: Route;
  service: MeshService;
  identities: string;
  endpointKeys: string[];
  build: number;
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
    routes: options.routes ?? new WeakMap(),
    builds: options.builds ?? 0,
    domainAliases: options.domainAliases ?? [],
  };
}

/**
 * Builds the lookup tables for a config.
 *
 * An HTTP service port is reached as `<service>.<namespace>.<domain>:<port>`, and under each
 * of `state.domainAliases` too; a Host header without a port means port 80, or the service's
 * only HTTP port when it has no port 80.
 */
export function buildRouteTable(
  config: MeshConfig,
  state: RouteState = newRouteState(),
): RouteTable {
  const http = new Map<string, Route>();
  const tcp = new Map<number, Route>();
  const udp = new Map<number, Route>();
  const endpointKeys = new Set<string>();
  const trim = (d: string) => d.toLowerCase().replace(/^\.+|\.+$/g, "");
  const domain = trim(config.domain);
  const domains = [domain, ...state.domainAliases.map(trim).filter((d) => d && d !== domain)];
  const byPort = new Map<string, Route>();
  const routes: Route[] = [];
  const buckets = new Map<string, TokenBucket>();
  const breakers = new Map<string, CircuitBreaker>();
  const build = ++state.builds;
  // Access policies read the identity table: a route is reused only while it is the same.
  const identities = JSON.stringify(config.identities);

  for (const service of config.services) {
    const serviceKey = `${service.namespace}/${service.name}`;
    let breaker: CircuitBreaker | null = null;
    if (service.circuitBreaker) {
      const { expression, expr } = service.circuitBreaker;
      const old = state.breakers.get(serviceKey);
      breaker = old && old.expression === expression
        ? old
        : new CircuitBreaker(expression, expr, state.breakerTiming, state.now);
      breakers.set(serviceKey, breaker);
    }
    for (const port of service.ports) {
      const key = `${serviceKey}:${port.port}`;
      let rateLimit: TokenBucket | null = null;
      if (service.rateLimit) {
        const { average, burst } = service.rateLimit;
        const old = state.buckets.get(key);
        rateLimit = old && old.rate === average && old.burst === burst
          ? old
          : new TokenBucket(average, burst, state.now);
        buckets.set(key, rateLimit);
      }
      const cached = state.routes.get(port);
      if (
        cached && cached.build === build - 1 && cached.service === service &&
        cached.identities === identities && cached.route.rateLimit === rateLimit &&
        cached.route.breaker === (port.protocol === "http" ? breaker : null)
      ) {
        // The same port of the same service as in the last build: its endpoint states are
        // still in the pool (that build kept them), so the route is reused whole.
        cached.build = build;
        for (const k of cached.endpointKeys) endpointKeys.add(k);
        cached.route.split = null;
        routes.push(cached.route);
        byPort.set(`${serviceKey}:${port.port}/${port.protocol}`, cached.route);
        continue;
      }
      const keys: string[] = [];
      const ready: Candidate[] = [];
      for (const ep of port.endpoints) {
        const s = state.pool.state(ep);
        endpointKeys.add(s.key);
        keys.push(s.key);
        if (ep.ready) ready.push({ state: s, serviceAccount: ep.serviceAccount });
      }
      const route: Route = {
        key,
        serviceKey,
        service,
        port,
        ready,
        readyStates: ready.map((c) => c.state),
        access: new AccessPolicy(
          `${port.protocol.toUpperCase()} port ${port.port} of service "${serviceKey}"`,
          port.access,
          config.identities,
        ),
        split: null,
        rateLimit,
        breaker: port.protocol === "http" ? breaker : null,
        metrics: state.metrics.route(serviceKey, port.port, port.protocol),
      };
      routes.push(route);
      byPort.set(`${serviceKey}:${port.port}/${port.protocol}`, route);
      state.routes.set(port, { route, service, identities, endpointKeys: keys, build });
    }
  }
  state.buckets.clear();
  for (const [k, b] of buckets) state.buckets.set(k, b);
  state.breakers.clear();
  for (const [k, b] of breakers) state.breakers.set(k, b);

  // Splits resolve to the backends' routes for the same port: one hop, never re-entering.
  for (const r of routes) {
    const s = r.port.split;
    if (!s) continue;
    const backends: [Route, number][] = [];
    for (const b of s.backends) {
      const target = byPort.get(
        `${r.service.namespace}/${b.service}:${r.port.port}/${r.port.protocol}`,
      );
      if (target) backends.push([target, b.weight]);
    }
    if (backends.length === 0) continue;
    r.split = {
      name: s.name,
      matches: s.matches.map(compileMatch),
      backends: new WeightedChooser(backends),
    };
  }

  for (const r of routes) {
    if (r.port.protocol === "http") {
      const httpPorts = r.service.ports.filter((p) => p.protocol === "http");
      for (const d of domains) {
        const host = `${r.service.name}.${r.service.namespace}.${d}`;
        http.set(`${host}:${r.port.port}`, r);
        if (r.port.port === 80 || (httpPorts.length === 1 && !http.has(host))) http.set(host, r);
      }
    } else if (r.port.listenPort !== null) {
      (r.port.protocol === "tcp" ? tcp : udp).set(r.port.listenPort, r);
    }
  }
  return { version: config.version, http, tcp, udp, endpointKeys };
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
  return port ? table.http.get(`${host}:${port}`) : table.http.get(host);
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
