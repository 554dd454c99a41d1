import type { HttpMatch, MeshAccessRule } from "../topology/mod.ts";

/** An HTTP request as access control and split matches see it. */
export interface RequestInfo {
  method: string;
  /** The path, without the query. */
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
 * Compiles a match. SMI's `pathRegex` and header values are regular expressions that must
 * match the whole value, so `/metrics` is that path only and `/api/.*` is everything under it.
 */
export function compileMatch(m: HttpMatch): CompiledMatch {
  const methods = m.methods.length === 0 || m.methods.includes("*")
    ? null
    : new Set(m.methods.map((x) => x.toUpperCase()));
  return {
    name: m.name,
    methods,
    path: m.pathRegex === "" ? null : new RegExp(`^(?:${m.pathRegex})$`),
    headers: Object.entries(m.headers).map(([k, v]) => [k.toLowerCase(), new RegExp(`^(?:${v})$`)]),
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

  #identity(source: string): string | undefined {
    return this.identities[source];
  }

  /** May `source` (an IP address) open a connection or send a datagram (TCP, UDP)? */
  checkL4(source: string): AccessDecision {
    if (this.open) return ALLOW_ALL;
    const sa = this.#identity(source);
    if (!sa) return this.#unknown(source);
    const destinations = new Set<string>();
    for (const r of this.#bySource.get(sa) ?? []) if (r.l4) destinations.add(r.destination);
    if (destinations.size > 0) return { allowed: true, destinations };
    return {
      allowed: false,
      reason: `no TrafficTarget with a TCPRoute lets ServiceAccount "${sa}" reach ${this.what}`,
    };
  }

  /** May `source` send this HTTP request? A TCPRoute rule allows any request. */
  checkHttp(source: string, req: RequestInfo): AccessDecision {
    if (this.open) return ALLOW_ALL;
    const sa = this.#identity(source);
    if (!sa) return this.#unknown(source);
    const destinations = new Set<string>();
    for (const r of this.#bySource.get(sa) ?? []) {
      if (destinations.has(r.destination)) continue;
      if (r.l4 || r.http.some((m) => matches(m, req))) destinations.add(r.destination);
    }
    if (destinations.size > 0) return { allowed: true, destinations };
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

const ALLOW_ALL: AccessDecision = { allowed: true, destinations: new Set() };
