import { parseBreakerExpression } from "./circuit_breaker.ts";
import { abbreviate } from "./errors.ts";
import type { Scheme, ServiceMeshOptions, TrafficType } from "./objects.ts";

/**
 * Annotation prefixes, most specific first. `mesh.traefik.io/` and `maesh.containo.us/` are
 * read so Services written for Traefik Mesh move over unchanged; `meshd.io/` wins when a key
 * is set under several prefixes.
 */
export const ANNOTATION_PREFIXES = ["meshd.io/", "mesh.traefik.io/", "maesh.containo.us/"] as const;

/** One annotation that could not be parsed. */
export interface AnnotationProblem {
  /** The full annotation key as written, such as `mesh.traefik.io/retry-attempts`. */
  key: string;
  message: string;
}

/** The result of {@linkcode parseServiceAnnotations}: options, or the problems found. */
export type AnnotationResult =
  | { ok: true; options: ServiceMeshOptions }
  | { ok: false; problems: AnnotationProblem[] };

/**
 * The most `retry-attempts` a Service may ask for. Each retry is one more request to a
 * backend that is failing already; a higher value is refused, like any bad annotation.
 */
export const MAX_RETRY_ATTEMPTS = 10;

const TRAFFIC_TYPES: readonly TrafficType[] = ["http", "tcp", "udp"];
const SCHEMES: readonly Scheme[] = ["http", "https", "h2c"];

/**
 * Reads the mesh annotations of a Service. `what` names the Service in messages
 * (`Service "shop/web"`).
 *
 * @example
 * ```ts
 * const r = parseServiceAnnotations({ "meshd.io/traffic-type": "tcp" }, 'Service "a/b"');
 * // r.ok === true, r.options.trafficType === "tcp"
 * ```
 */
export function parseServiceAnnotations(
  annotations: Record<string, string>,
  what: string,
): AnnotationResult {
  const r = new AnnotationReader(annotations, what);
  const options: ServiceMeshOptions = {};
  const trafficType = r.choice("traffic-type", TRAFFIC_TYPES, TRAFFIC_TYPES_EXPECTED);
  if (trafficType !== undefined) options.trafficType = trafficType;
  const scheme = r.choice("scheme", SCHEMES, "http, https or h2c");
  if (scheme !== undefined) options.scheme = scheme;
  const retries = r.integer("retry-attempts", 0, MAX_RETRY_ATTEMPTS);
  if (retries !== undefined) options.retryAttempts = retries;
  const accessLog = r.choice("access-log", ["true", "false"], '"true" or "false"');
  if (accessLog !== undefined) options.accessLog = accessLog === "true";
  const cb = r.lookup("circuit-breaker-expression");
  if (cb) {
    try {
      options.circuitBreaker = { expression: cb.value, expr: parseBreakerExpression(cb.value) };
    } catch (e) {
      const why = e instanceof SyntaxError ? e.message : String(e);
      r.bad(cb.key, cb.value, `a circuit-breaker expression (${why})`);
    }
  }
  const average = r.integer("ratelimit-average", 1);
  const burst = r.integer("ratelimit-burst", 1);
  if (average !== undefined) {
    options.rateLimit = { average, burst: burst ?? 1 };
  } else if (burst !== undefined) {
    const key = r.lookup("ratelimit-burst")!.key;
    r.problems.push({
      key,
      message: `Cannot use annotation "${key}" on ${what}: ratelimit-burst needs ratelimit-average`,
    });
  }
  return r.problems.length > 0 ? { ok: false, problems: r.problems } : { ok: true, options };
}

const TRAFFIC_TYPES_EXPECTED = TRAFFIC_TYPES.join(", ").replace(/, (\w+)$/, " or $1");

/** Reads one Service's annotations under any prefix, and collects what it cannot parse. */
class AnnotationReader {
  readonly problems: AnnotationProblem[] = [];
  readonly #annotations: Record<string, string>;
  readonly #what: string;

  constructor(annotations: Record<string, string>, what: string) {
    this.#annotations = annotations;
    this.#what = what;
  }

  /** The annotation `name` under the most specific prefix that has it, its value trimmed. */
  lookup(name: string): { key: string; value: string } | undefined {
    for (const prefix of ANNOTATION_PREFIXES) {
      const key = prefix + name;
      const value = this.#annotations[key];
      if (value !== undefined) return { key, value: value.trim() };
    }
    return undefined;
  }

  /** Records that `key`'s `value` is not the `expected` one. */
  bad(key: string, value: string, expected: string): void {
    this.problems.push({
      key,
      message: `Cannot parse annotation "${key}" on ${this.#what}: value is "${
        abbreviate(value)
      }", expected ${expected}`,
    });
  }

  /** One of `allowed`, matched without regard to case. */
  choice<T extends string>(name: string, allowed: readonly T[], expected: string): T | undefined {
    const a = this.lookup(name);
    if (!a) return undefined;
    const v = a.value.toLowerCase();
    if ((allowed as readonly string[]).includes(v)) return v as T;
    this.bad(a.key, a.value, expected);
    return undefined;
  }

  /** A whole number from `min` (to `max`, when given). */
  integer(name: string, min: number, max?: number): number | undefined {
    const a = this.lookup(name);
    if (!a) return undefined;
    const n = Number(a.value);
    if (
      !/^\d+$/.test(a.value) || n < min || !Number.isSafeInteger(n) ||
      (max !== undefined && n > max)
    ) {
      this.bad(
        a.key,
        a.value,
        max === undefined ? `an integer >= ${min}` : `an integer from ${min} to ${max}`,
      );
      return undefined;
    }
    return n;
  }
}
