import type { MeshEndpoint } from "../topology/mod.ts";

/** Passive outlier detection: when an endpoint is taken out of rotation, and for how long. */
export interface OutlierOptions {
  /** Failures in a row (connect errors, resets, 5xx from a retried request) that eject. */
  consecutiveFailures: number;
  /** First ejection time; each further ejection in a row lasts one more of these. */
  baseEjectionMs: number;
  /** The longest an ejection lasts. */
  maxEjectionMs: number;
}

/** Defaults close to Envoy's: 5 failures in a row, 30 s growing to 5 min. */
export const DEFAULT_OUTLIER: OutlierOptions = {
  consecutiveFailures: 5,
  baseEjectionMs: 30_000,
  maxEjectionMs: 300_000,
};

/** What the proxy knows about one backend address, across config versions. */
export class EndpointState {
  /** Requests or connections sent and not finished. */
  inflight = 0;
  /** Failures since the last success. */
  failures = 0;
  /** Ejected until this time (ms since the epoch); 0 when in rotation. */
  ejectedUntil = 0;
  /** Ejections in a row, which lengthen the next one. */
  ejections = 0;
  /** Sequence number of the last pick, to break ties in favour of the least recent. */
  lastPick = 0;
  /** Routes of the table in force that list it (the route table's count). */
  routes = 0;

  /**
   * @param key `address:port`, bracketed for IPv6 ({@linkcode endpointKey}): the pool's key,
   * the same string.
   */
  constructor(readonly address: string, readonly port: number, readonly key: string) {}
}

/** `address:port`, with IPv6 addresses in brackets. */
export function endpointKey(address: string, port: number): string {
  return address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
}

/** Options for {@linkcode EndpointPool}. */
export interface EndpointPoolOptions {
  outlier?: Partial<OutlierOptions>;
  /** Uniform random in [0, 1); a test seam. Default `Math.random`. */
  random?: () => number;
  /** The clock in ms; a test seam. Default `Date.now`. */
  now?: () => number;
  /** Told when an endpoint is ejected or comes back. */
  onEject?: (state: EndpointState, ms: number) => void;
}

/**
 * The state of every backend endpoint, and the choice between them: power of two choices by
 * outstanding requests, with passive outlier detection.
 *
 * Two ready endpoints are drawn at random and the one with fewer requests in flight wins
 * (ties go to the one picked least recently, so an idle service still spreads evenly). An
 * endpoint that fails `consecutiveFailures` times in a row is left out for a while that grows
 * with each ejection in a row; when every candidate is ejected, they are all used again
 * rather than failing every request (Envoy's panic threshold, at its simplest).
 *
 * @example
 * ```ts
 * const pool = new EndpointPool();
 * const candidates = config.services[0].ports[0].endpoints.filter((e) => e.ready)
 *   .map((e) => pool.state(e));
 * const chosen = pool.pick(candidates);
 * ```
 */
export class EndpointPool {
  readonly #states = new Map<string, EndpointState>();
  readonly #outlier: OutlierOptions;
  readonly #random: () => number;
  readonly #now: () => number;
  readonly #onEject?: (state: EndpointState, ms: number) => void;
  /** Endpoints in no config any more that had requests in flight when they left it. */
  readonly #lingering = new Set<EndpointState>();
  #seq = 0;

  constructor(options: EndpointPoolOptions = {}) {
    this.#outlier = { ...DEFAULT_OUTLIER, ...options.outlier };
    this.#random = options.random ?? Math.random;
    this.#now = options.now ?? Date.now;
    this.#onEject = options.onEject;
  }

  /** The state of an endpoint, created on first sight and kept across config versions. */
  state(ep: Pick<MeshEndpoint, "address" | "port">): EndpointState {
    const key = endpointKey(ep.address, ep.port);
    let s = this.#states.get(key);
    if (!s) this.#states.set(key, s = new EndpointState(ep.address, ep.port, key));
    return s;
  }

  /** Forgets endpoints that are in no config any more and have nothing in flight. */
  retain(keys: Set<string>): void {
    for (const [k, s] of this.#states) if (!keys.has(k) && s.inflight === 0) this.#states.delete(k);
    this.#lingering.clear();
    for (const [k, s] of this.#states) if (!keys.has(k)) this.#lingering.add(s);
  }

  /**
   * Forgets the endpoints of `gone` (keys no config lists now) that are not in `live` and have
   * nothing in flight; those still busy are looked at again at each call, until they are idle.
   * What {@linkcode retain} does, at the cost of what changed.
   */
  forget(gone: Iterable<string>, live: ReadonlySet<string>): void {
    for (const s of this.#lingering) {
      if (live.has(s.key) || this.#states.get(s.key) !== s) this.#lingering.delete(s);
      else if (s.inflight === 0) {
        this.#lingering.delete(s);
        this.#states.delete(s.key);
      }
    }
    for (const k of gone) {
      const s = this.#states.get(k);
      if (!s || live.has(k)) continue;
      if (s.inflight === 0) this.#states.delete(k);
      else this.#lingering.add(s);
    }
  }

  /** How many endpoints it keeps state for. */
  get size(): number {
    return this.#states.size;
  }

  /** Whether `s` is ejected now. */
  ejected(s: EndpointState): boolean {
    return s.ejectedUntil > this.#now();
  }

  /** Picks one of `candidates`, or `null` when there are none. Does not count it in flight. */
  pick(candidates: readonly EndpointState[]): EndpointState | null {
    const n = candidates.length;
    if (n === 0) return null;
    let pool = candidates;
    const now = this.#now();
    let anyEjected = false;
    for (let i = 0; i < n; i++) {
      if (candidates[i]!.ejectedUntil > now) {
        anyEjected = true;
        break;
      }
    }
    if (anyEjected) {
      const live = candidates.filter((c) => c.ejectedUntil <= now);
      if (live.length > 0) pool = live;
    }
    let chosen: EndpointState;
    if (pool.length === 1) chosen = pool[0]!;
    else {
      const i = Math.floor(this.#random() * pool.length);
      let j = Math.floor(this.#random() * (pool.length - 1));
      if (j >= i) j++;
      const a = pool[i]!;
      const b = pool[j]!;
      chosen = a.inflight < b.inflight
        ? a
        : b.inflight < a.inflight
        ? b
        : a.lastPick <= b.lastPick
        ? a
        : b;
    }
    chosen.lastPick = ++this.#seq;
    return chosen;
  }

  /** Records a success: the failure streak ends, and a returning endpoint is forgiven. */
  success(s: EndpointState): void {
    s.failures = 0;
    if (s.ejections > 0 && s.ejectedUntil <= this.#now()) s.ejections = 0;
  }

  /** Records a failure; returns true when it ejected the endpoint. */
  failure(s: EndpointState): boolean {
    // Requests that were already in flight when it was ejected say nothing new.
    if (s.ejectedUntil > this.#now()) return false;
    s.failures++;
    if (s.failures < this.#outlier.consecutiveFailures) return false;
    s.failures = 0;
    s.ejections++;
    const ms = Math.min(this.#outlier.baseEjectionMs * s.ejections, this.#outlier.maxEjectionMs);
    s.ejectedUntil = this.#now() + ms;
    this.#onEject?.(s, ms);
    return true;
  }
}
