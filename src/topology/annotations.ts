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
  const problems: AnnotationProblem[] = [];
  const options: ServiceMeshOptions = {};
  const lookup = (name: string): { key: string; value: string } | undefined => {
    for (const prefix of ANNOTATION_PREFIXES) {
      const key = prefix + name;
      const value = annotations[key];
      if (value !== undefined) return { key, value: value.trim() };
    }
    return undefined;
  };
  const bad = (key: string, value: string, expected: string): void => {
    problems.push({
      key,
      message: `Cannot parse annotation "${key}" on ${what}: value is "${
        abbreviate(value)
      }", expected ${expected}`,
    });
  };
  const integer = (name: string, min: number, max?: number): number | undefined => {
    const a = lookup(name);
    if (!a) return undefined;
    const n = Number(a.value);
    if (
      !/^\d+$/.test(a.value) || n < min || !Number.isSafeInteger(n) ||
      (max !== undefined && n > max)
    ) {
      bad(
        a.key,
        a.value,
        max === undefined ? `an integer >= ${min}` : `an integer from ${min} to ${max}`,
      );
      return undefined;
    }
    return Number(a.value);
  };

  const tt = lookup("traffic-type");
  if (tt) {
    const v = tt.value.toLowerCase();
    if ((TRAFFIC_TYPES as readonly string[]).includes(v)) options.trafficType = v as TrafficType;
    else bad(tt.key, tt.value, TRAFFIC_TYPES.join(", ").replace(/, (\w+)$/, " or $1"));
  }
  const scheme = lookup("scheme");
  if (scheme) {
    const v = scheme.value.toLowerCase();
    if ((SCHEMES as readonly string[]).includes(v)) options.scheme = v as Scheme;
    else bad(scheme.key, scheme.value, "http, https or h2c");
  }
  const retries = integer("retry-attempts", 0, MAX_RETRY_ATTEMPTS);
  if (retries !== undefined) options.retryAttempts = retries;

  const accessLog = lookup("access-log");
  if (accessLog) {
    const v = accessLog.value.toLowerCase();
    if (v === "true" || v === "false") options.accessLog = v === "true";
    else bad(accessLog.key, accessLog.value, '"true" or "false"');
  }

  const cb = lookup("circuit-breaker-expression");
  if (cb) {
    try {
      options.circuitBreaker = { expression: cb.value, expr: parseBreakerExpression(cb.value) };
    } catch (e) {
      const why = e instanceof SyntaxError ? e.message : String(e);
      bad(cb.key, cb.value, `a circuit-breaker expression (${why})`);
    }
  }

  const average = integer("ratelimit-average", 1);
  const burst = integer("ratelimit-burst", 1);
  if (average !== undefined) {
    options.rateLimit = { average, burst: burst ?? 1 };
  } else if (burst !== undefined) {
    const a = lookup("ratelimit-burst")!;
    problems.push({
      key: a.key,
      message:
        `Cannot use annotation "${a.key}" on ${what}: ratelimit-burst needs ratelimit-average`,
    });
  }
  return problems.length > 0 ? { ok: false, problems } : { ok: true, options };
}
