import type { PromSample } from "./prom_text.ts";
import { compareNames } from "../topology/mod.ts";

/** One node's `/metrics`, read at the start and at the end of the window. */
export interface MetricsWindow {
  before: readonly PromSample[];
  after: readonly PromSample[];
}

/** The golden signals of one service port over a window, summed over every node. */
export interface ServiceStat {
  /** `namespace/name` */
  service: string;
  port: number;
  protocol: string;
  /** Requests (HTTP), connections (TCP) or flows (UDP) in the window. */
  requests: number;
  /** `requests` per second. */
  rps: number;
  /** Share of HTTP responses that were not 5xx; null with no responses (or TCP, UDP). */
  successRate: number | null;
  /** Quantiles of the duration in seconds (an HTTP exchange, a TCP connection's life). */
  p50: number | null;
  p95: number | null;
  p99: number | null;
  /** How many nodes served some of it. */
  nodes: number;
}

const REQUESTS = "meshd_requests_total";
const RESPONSES = "meshd_http_responses_total";
const BUCKETS = "meshd_request_duration_seconds_bucket";

function key(s: PromSample, without = ""): string {
  return `${s.name}{${
    Object.keys(s.labels).filter((k) => k !== without).sort().map((k) => `${k}=${s.labels[k]}`)
      .join(",")
  }}`;
}

/**
 * How much each counter grew on one node: after minus before; a counter that went down was
 * reset (meshd restarted), so it grew by what it reads now, as Prometheus's `increase()` has
 * it. A series new in `after` grew by its value.
 */
export function counterIncrease(w: MetricsWindow, names: readonly string[]): PromSample[] {
  const wanted = new Set(names);
  const before = new Map<string, number>();
  for (const s of w.before) if (wanted.has(s.name)) before.set(key(s), s.value);
  const out: PromSample[] = [];
  for (const s of w.after) {
    if (!wanted.has(s.name)) continue;
    const b = before.get(key(s));
    const grew = b === undefined ? s.value : s.value >= b ? s.value - b : s.value;
    out.push({ name: s.name, labels: s.labels, value: grew });
  }
  return out;
}

/**
 * The `q` quantile from cumulative buckets (`le` → count), interpolated within its bucket as
 * PromQL's `histogram_quantile()` does; in the `+Inf` bucket, the highest finite bound. Null
 * without observations.
 */
export function bucketQuantile(q: number, buckets: ReadonlyMap<number, number>): number | null {
  const bounds = [...buckets.keys()].sort((a, b) => a - b);
  const total = buckets.get(Infinity) ?? (bounds.length ? buckets.get(bounds.at(-1)!)! : 0);
  if (!(total > 0)) return null;
  const rank = q * total;
  let prevBound = 0;
  let prevCount = 0;
  for (const b of bounds) {
    const c = buckets.get(b)!;
    if (c >= rank) {
      if (b === Infinity) return prevBound;
      if (c === prevCount) return b;
      return prevBound + (b - prevBound) * (rank - prevCount) / (c - prevCount);
    }
    prevBound = b;
    prevCount = c;
  }
  return prevBound;
}

/**
 * Per service port, the golden signals over `seconds`: success rate, rate and latency
 * quantiles, from each node's counters and histogram buckets read twice. Sorted by service.
 *
 * @example
 * ```ts
 * const rows = goldenSignals([{ before: parsePromText(a), after: parsePromText(b) }], 30);
 * ```
 */
export function goldenSignals(nodes: readonly MetricsWindow[], seconds: number): ServiceStat[] {
  const rows = new Map<
    string,
    ServiceStat & { ok: number; all: number; le: Map<number, number> }
  >();
  const row = (l: Record<string, string>) => {
    const k = `${l["service"]}\u0000${l["port"]}\u0000${l["protocol"]}`;
    let r = rows.get(k);
    if (!r) {
      r = {
        service: l["service"] ?? "",
        port: Number(l["port"] ?? 0),
        protocol: l["protocol"] ?? "",
        requests: 0,
        rps: 0,
        successRate: null,
        p50: null,
        p95: null,
        p99: null,
        nodes: 0,
        ok: 0,
        all: 0,
        le: new Map(),
      };
      rows.set(k, r);
    }
    return r;
  };
  for (const w of nodes) {
    const served = new Set<ReturnType<typeof row>>();
    for (const s of counterIncrease(w, [REQUESTS, RESPONSES, BUCKETS])) {
      if (s.labels["service"] === undefined) continue;
      const r = row(s.labels);
      if (s.name === REQUESTS) {
        r.requests += s.value;
        if (s.value > 0) served.add(r);
      } else if (s.name === RESPONSES) {
        r.all += s.value;
        if (s.labels["code"] !== "5xx") r.ok += s.value;
      } else {
        const le = s.labels["le"] === "+Inf" ? Infinity : Number(s.labels["le"]);
        if (!Number.isNaN(le)) r.le.set(le, (r.le.get(le) ?? 0) + s.value);
      }
    }
    for (const r of served) r.nodes++;
  }
  return [...rows.values()].map(({ ok, all, le, ...r }) => ({
    ...r,
    rps: seconds > 0 ? r.requests / seconds : 0,
    successRate: all > 0 ? ok / all : null,
    p50: bucketQuantile(0.5, le),
    p95: bucketQuantile(0.95, le),
    p99: bucketQuantile(0.99, le),
  })).sort((a, b) =>
    compareNames(a.service, b.service) || a.port - b.port ||
    compareNames(a.protocol, b.protocol)
  );
}

/** A duration for a table: `0.4ms`, `12ms`, `1.25s`; `-` for none. */
export function formatSeconds(s: number | null): string {
  if (s === null) return "-";
  const ms = s * 1000;
  if (ms < 10) return `${ms.toFixed(1)}ms`;
  if (ms < 1000) return `${Math.round(ms)}ms`;
  return `${s.toFixed(2)}s`;
}

/** `meshd stat`'s table, one row per service port, columns aligned. */
export function formatStatTable(rows: readonly ServiceStat[], windowSeconds: number): string {
  if (rows.length === 0) {
    return `No service traffic metrics on any node (window ${windowSeconds}s)\n`;
  }
  const table = [
    ["SERVICE", "PORT", "PROTO", "SUCCESS", "RPS", "P50", "P95", "P99", "NODES"],
    ...rows.map((r) => [
      r.service,
      String(r.port),
      r.protocol,
      r.successRate === null ? "-" : `${(r.successRate * 100).toFixed(2)}%`,
      r.rps.toFixed(1),
      formatSeconds(r.p50),
      formatSeconds(r.p95),
      formatSeconds(r.p99),
      String(r.nodes),
    ]),
  ];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((t) => t[i]!.length)));
  return table.map((t) =>
    t.map((c, i) => i >= 3 && i !== 8 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)).join("  ")
      .trimEnd()
  ).join("\n") + "\n";
}
