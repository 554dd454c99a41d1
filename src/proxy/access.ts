import {
  type HttpMatch,
  identitiesAt,
  type MeshAccessRule,
  pathRegexSource,
  userRegex,
} from "../topology/mod.ts";

/** An HTTP request as access control and split matches see it. */
export interface RequestInfo {
  method: string;
  /**
   * The path, without the query, in the normal form `normalizeTarget` gives it at the
   * entrypoint (dot segments removed, unreserved escapes decoded): the path the backend serves,
   * so `/public/../admin` never passes as `/public`.
   */
  path: string;
  /** A header's value, or `null`; names are given lower-case. */
  header(name: string): string | null;
}

/** An {@linkcode HttpMatch} with its regular expressions compiled. */
export interface CompiledMatch {
  name: string;
  methods: Set<string> | null;
  path: RegExp | null;
  headers: [string, RegExp][];
}

/**
 * Compiles a match the way Traefik Mesh reads SMI, since the objects users bring were written
 * against it (the SMI text says neither whether a regular expression is anchored nor how):
 *
 * - `pathRegex` is a prefix: Traefik Mesh builds ``PathPrefix(`/{path:<regex>}`)`` with the
 *   regex's leading `/` trimmed, so `/metrics` allows `/metrics`, `/metrics/x` and also
 *   `/metricsfoo`. The regex sits in a group after the `/`, so `/a|/b` allows `/a…` and `//b…`
 *   but not `/b`, as there.
 * - Header values are unanchored regular expressions (`HeadersRegexp`): `t|True` matches `true`.
 * - Both run on V8's linear-time engine when it is on (as in every launch of meshd), as Go's
 *   regexp, which Traefik Mesh uses, runs in linear time: a client cannot stall meshd with a
 *   path or header that makes a pattern backtrack.
 * - `methods` empty or holding `*` allows any method; others are compared upper-cased.
 */
export function compileMatch(m: HttpMatch): CompiledMatch {
  const methods = m.methods.length === 0 || m.methods.includes("*")
    ? null
    : new Set(m.methods.map((x) => x.toUpperCase()));
  return {
    name: m.name,
    methods,
    path: m.pathRegex === "" ? null : userRegex(pathRegexSource(m.pathRegex)),
    headers: Object.entries(m.headers).map(([k, v]) => [k.toLowerCase(), userRegex(v)]),
  };
}

/** Whether `req` satisfies `m`: its method, its path and every header it names. */
export function matches(m: CompiledMatch, req: RequestInfo): boolean {
  if (m.methods && !m.methods.has(req.method)) return false;
  if (m.path && !m.path.test(req.path)) return false;
  for (const [name, re] of m.headers) {
    const v = req.header(name);
    if (v === null || !re.test(v)) return false;
  }
  return true;
}

/** The outcome of an access check. */
export type AccessDecision =
  | {
    allowed: true; /** ServiceAccounts whose endpoints the source may reach. */
    destinations: Set<string>;
  }
  | { allowed: false; reason: string };

interface CompiledRule {
  trafficTarget: string;
  destination: string;
  l4: boolean;
  http: CompiledMatch[];
}

/**
 * The access rules of one service port, compiled. `null` rules (ACL off) allow everything;
 * an empty list denies everything. The source is identified only by its address, through
 * `identities`; nothing the client sends can change who it is.
 */
export class AccessPolicy {
  readonly #bySource = new Map<string, CompiledRule[]>();

  constructor(
    readonly what: string,
    rules: readonly MeshAccessRule[] | null,
    readonly identities: Readonly<Record<string, string>>,
  ) {
    this.open = rules === null;
    for (const r of rules ?? []) {
      const compiled: CompiledRule = {
        trafficTarget: r.trafficTarget,
        destination: r.destination,
        l4: r.l4,
        http: r.http.map(compileMatch),
      };
      for (const s of r.sources) {
        const list = this.#bySource.get(s) ?? [];
        list.push(compiled);
        this.#bySource.set(s, list);
      }
    }
  }

  /** True when ACL is off for this port. */
  readonly open: boolean;

  /** May `source` (an IP address) open a connection or send a datagram (TCP, UDP)? */
  checkL4(source: string): AccessDecision {
    if (this.open) return ALLOW_ALL;
    // One ServiceAccount, or several for an address Pods of more than one share (see
    // `MeshConfig.identities`): the common case makes no list.
    const entry = this.identities[source];
    if (entry === undefined) return this.#unknown(source);
    if (!entry.includes(",")) return this.#l4As(entry);
    return anyOf(source, identitiesAt(entry).map((sa) => this.#l4As(sa)));
  }

  /** May `source` send this HTTP request? A TCPRoute rule allows any request. */
  checkHttp(source: string, req: RequestInfo): AccessDecision {
    if (this.open) return ALLOW_ALL;
    const entry = this.identities[source];
    if (entry === undefined) return this.#unknown(source);
    if (!entry.includes(",")) return this.#httpAs(entry, req);
    return anyOf(source, identitiesAt(entry).map((sa) => this.#httpAs(sa, req)));
  }

  /** {@linkcode AccessPolicy.checkL4} for a source running as `sa`. */
  #l4As(sa: string): AccessDecision {
    const destinations = new Set<string>();
    const rules = this.#bySource.get(sa) ?? [];
    for (const r of rules) if (r.l4) destinations.add(r.destination);
    if (destinations.size > 0) return { allowed: true, destinations };
    if (rules.length > 0) {
      return {
        allowed: false,
        reason: `${namedBy(rules)} ServiceAccount "${sa}" as a source, but no TCPRoute rule, ` +
          `so no connection to ${this.what}`,
      };
    }
    return {
      allowed: false,
      reason: `no TrafficTarget with a TCPRoute lets ServiceAccount "${sa}" reach ${this.what}`,
    };
  }

  /** {@linkcode AccessPolicy.checkHttp} for a source running as `sa`. */
  #httpAs(sa: string, req: RequestInfo): AccessDecision {
    const destinations = new Set<string>();
    const rules = this.#bySource.get(sa) ?? [];
    for (const r of rules) {
      if (destinations.has(r.destination)) continue;
      if (r.l4 || r.http.some((m) => matches(m, req))) destinations.add(r.destination);
    }
    if (destinations.size > 0) return { allowed: true, destinations };
    if (rules.length > 0) {
      return {
        allowed: false,
        reason: `${namedBy(rules)} ServiceAccount "${sa}" as a source, but none of ` +
          `${
            new Set(rules.map((r) => r.trafficTarget)).size === 1 ? "its" : "their"
          } rules matches ${req.method} ${req.path} ` +
          `to ${this.what}`,
      };
    }
    return {
      allowed: false,
      reason:
        `no TrafficTarget lets ServiceAccount "${sa}" send ${req.method} ${req.path} to ${this.what}`,
    };
  }

  #unknown(source: string): AccessDecision {
    return {
      allowed: false,
      reason:
        `source ${source} is not a known Pod, so no TrafficTarget can let it reach ${this.what}`,
    };
  }
}

/**
 * The decision for an address Pods of several ServiceAccounts share: allowed to the
 * destinations any of them may reach, else denied with each one's reason.
 */
function anyOf(source: string, each: AccessDecision[]): AccessDecision {
  const destinations = new Set<string>();
  const reasons: string[] = [];
  for (const d of each) {
    if (d.allowed) { for (const x of d.destinations) destinations.add(x); }
    else reasons.push(d.reason);
  }
  if (destinations.size > 0) return { allowed: true, destinations };
  return {
    allowed: false,
    reason: `Pods of ${each.length} ServiceAccounts share ${source}, and none may: ` +
      reasons.join("; "),
  };
}

/** `TrafficTarget "ns/a" names` or `TrafficTargets "ns/a", "ns/b" name`. */
function namedBy(rules: readonly CompiledRule[]): string {
  const names = [...new Set(rules.map((r) => `"${r.trafficTarget}"`))];
  return names.length === 1
    ? `TrafficTarget ${names[0]} names`
    : `TrafficTargets ${names.join(", ")} name`;
}

const ALLOW_ALL: AccessDecision = { allowed: true, destinations: new Set() };
