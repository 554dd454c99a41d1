/**
 * Prometheus metrics without a dependency: counters, gauges and histograms with labels,
 * rendered in the text exposition format (version 0.0.4).
 *
 * Hot paths hold a child (`counter.with("web.shop", "80")`) and call `inc()` on it: one
 * property add per event, no label lookup.
 */

import { compareNames } from "../topology/mod.ts";

/** One set of label values, in the order the metric's label names were declared. */
export type LabelValues = readonly string[];

interface Family {
  readonly name: string;
  readonly help: string;
  readonly type: "counter" | "gauge" | "histogram";
  render(out: string[]): void;
  snapshot(): FamilySnapshot;
}

/**
 * One metric family as plain data (structured-cloneable), so the registries of several proxy
 * workers add up to one `/metrics`: see {@linkcode renderSnapshots}.
 */
export interface FamilySnapshot {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  /** How the same series of several workers combine: added, or the largest (a state). */
  merge: "sum" | "max";
  /** A histogram's bucket bounds. */
  bounds?: number[];
  /**
   * Each series: its label pairs (escaped, no braces) and its value; for a histogram, the
   * per-bucket (not cumulative) counts, then count and sum.
   */
  series: [labels: string, value: number, buckets?: number[], sum?: number][];
}

/** A counter child: one label set. */
export interface CounterChild {
  inc(n?: number): void;
  readonly value: number;
}

/** A gauge child: one label set. */
export interface GaugeChild {
  set(v: number): void;
  inc(n?: number): void;
  dec(n?: number): void;
  readonly value: number;
}

/** A histogram child: one label set. */
export interface HistogramChild {
  observe(v: number): void;
  readonly count: number;
  readonly sum: number;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function formatNumber(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

function braced(labels: string): string {
  return labels ? `{${labels}}` : "";
}

function labelText(names: readonly string[], values: LabelValues, extra = ""): string {
  const parts = names.map((n, i) => `${n}="${escapeLabel(values[i] ?? "")}"`);
  if (extra) parts.push(extra);
  return parts.length === 0 ? "" : `{${parts.join(",")}}`;
}

abstract class LabelledFamily<C> implements Family {
  abstract readonly type: "counter" | "gauge" | "histogram";
  /**
   * Children by their label values joined with NUL (what `retain` splits again; a Service name
   * holds no NUL). `labels` is the children's label pairs,
   * escaped, without braces: rendered once, not at every scrape (1,000 services make about 27,000
   * lines, and building each line's labels again took most of a scrape's garbage).
   */
  readonly #children = new Map<string, { labels: string; child: C }>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
  ) {
    if (!NAME.test(name)) throw new TypeError(`Invalid metric name "${name}"`);
    for (const l of labelNames) {
      if (!LABEL.test(l) || l.startsWith("__") || l === "le") {
        throw new TypeError(`Invalid label name "${l}" on metric "${name}"`);
      }
    }
  }

  protected abstract create(): C;
  /** Appends a child's lines; `labels` is its label pairs without braces ("" for none). */
  protected abstract renderChild(out: string[], labels: string, child: C): void;

  /** The child for these label values, created on first use. */
  with(...values: string[]): C {
    if (values.length !== this.labelNames.length) {
      throw new TypeError(
        `Metric "${this.name}" takes ${this.labelNames.length} label value(s), got ${values.length}`,
      );
    }
    const key = values.join("\u0000");
    let entry = this.#children.get(key);
    if (!entry) {
      entry = {
        labels: this.labelNames.map((n, i) => `${n}="${escapeLabel(values[i]!)}"`).join(","),
        child: this.create(),
      };
      this.#children.set(key, entry);
    }
    return entry.child;
  }

  /**
   * A child of no series: counts what is given and is never rendered. For a series dropped
   * while something still holds its owner (a request in flight on a removed service).
   */
  detached(): C {
    return this.create();
  }

  /** Drops the child for these label values (a service that is gone). */
  remove(...values: string[]): void {
    this.#children.delete(values.join("\u0000"));
  }

  /** Drops every child whose label values fail `keep`. */
  retain(keep: (values: LabelValues) => boolean): void {
    for (const k of this.#children.keys()) {
      const values = this.labelNames.length === 0 ? [] : k.split("\u0000");
      if (!keep(values)) this.#children.delete(k);
    }
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`);
    out.push(`# TYPE ${this.name} ${this.type}`);
    const keys = [...this.#children.keys()].sort(compareNames);
    for (const k of keys) {
      const e = this.#children.get(k)!;
      this.renderChild(out, e.labels, e.child);
    }
  }

  /** A child's value as a snapshot series. */
  protected abstract seriesOf(labels: string, child: C): FamilySnapshot["series"][number];

  snapshot(): FamilySnapshot {
    const series: FamilySnapshot["series"] = [];
    for (const e of this.#children.values()) series.push(this.seriesOf(e.labels, e.child));
    return { name: this.name, help: this.help, type: this.type, merge: "sum", series };
  }
}

class CounterImpl implements CounterChild {
  value = 0;
  inc(n = 1): void {
    this.value += n;
  }
}

/** A monotonically growing count. */
export class Counter extends LabelledFamily<CounterChild> {
  readonly type = "counter" as const;
  protected create(): CounterChild {
    return new CounterImpl();
  }
  protected renderChild(out: string[], labels: string, c: CounterChild): void {
    out.push(`${this.name}${braced(labels)} ${formatNumber(c.value)}`);
  }
  protected seriesOf(labels: string, c: CounterChild): FamilySnapshot["series"][number] {
    return [labels, c.value];
  }
}

class GaugeImpl implements GaugeChild {
  value = 0;
  set(v: number): void {
    this.value = v;
  }
  inc(n = 1): void {
    this.value += n;
  }
  dec(n = 1): void {
    this.value -= n;
  }
}

/** A value that goes up and down. */
export class Gauge extends LabelledFamily<GaugeChild> {
  readonly type = "gauge" as const;
  protected create(): GaugeChild {
    return new GaugeImpl();
  }
  protected renderChild(out: string[], labels: string, g: GaugeChild): void {
    out.push(`${this.name}${braced(labels)} ${formatNumber(g.value)}`);
  }
  protected seriesOf(labels: string, g: GaugeChild): FamilySnapshot["series"][number] {
    return [labels, g.value];
  }
}

class HistogramImpl implements HistogramChild {
  readonly counts: Float64Array;
  count = 0;
  sum = 0;
  constructor(readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length);
  }
  observe(v: number): void {
    this.count++;
    this.sum += v;
    const b = this.bounds;
    // Buckets are few (about a dozen); a linear scan beats a binary search at this size.
    for (let i = 0; i < b.length; i++) {
      if (v <= b[i]!) {
        this.counts[i]!++;
        return;
      }
    }
  }
}

/** Latency buckets in seconds, from 0.5 ms to 10 s. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
];

/** A distribution in cumulative buckets. */
export class Histogram extends LabelledFamily<HistogramChild> {
  readonly type = "histogram" as const;
  readonly #bounds: readonly number[];
  /** Each bucket's `le` pair and closing brace. */
  readonly #le: readonly string[];

  constructor(
    name: string,
    help: string,
    labelNames: readonly string[],
    bounds: readonly number[] = LATENCY_BUCKETS,
  ) {
    super(name, help, labelNames);
    for (let i = 1; i < bounds.length; i++) {
      if (!(bounds[i]! > bounds[i - 1]!)) {
        throw new TypeError(`Buckets of "${name}" must grow strictly`);
      }
    }
    this.#bounds = bounds;
    this.#le = bounds.map((b) => `le="${formatNumber(b)}"}`);
  }
  protected create(): HistogramChild {
    return new HistogramImpl(this.#bounds);
  }
  protected renderChild(out: string[], labels: string, child: HistogramChild): void {
    const h = child as HistogramImpl;
    const bucket = `${this.name}_bucket{${labels ? `${labels},` : ""}`;
    let cumulative = 0;
    for (let i = 0; i < h.bounds.length; i++) {
      cumulative += h.counts[i]!;
      out.push(`${bucket}${this.#le[i]} ${cumulative}`);
    }
    out.push(`${bucket}le="+Inf"} ${h.count}`);
    const own = braced(labels);
    out.push(`${this.name}_sum${own} ${formatNumber(h.sum)}`);
    out.push(`${this.name}_count${own} ${h.count}`);
  }
  protected seriesOf(labels: string, child: HistogramChild): FamilySnapshot["series"][number] {
    const h = child as HistogramImpl;
    return [labels, h.count, [...h.counts], h.sum];
  }
  override snapshot(): FamilySnapshot {
    return { ...super.snapshot(), bounds: [...this.#bounds] };
  }
}

/** A gauge whose values are read when scraped. */
class CollectedGauge implements Family {
  readonly type = "gauge" as const;
  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
    readonly collect: () => Iterable<[LabelValues, number]>,
    readonly merge: "sum" | "max" = "sum",
  ) {
    if (!NAME.test(name)) throw new TypeError(`Invalid metric name "${name}"`);
  }
  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`);
    out.push(`# TYPE ${this.name} gauge`);
    for (const [values, v] of this.collect()) {
      out.push(`${this.name}${labelText(this.labelNames, values)} ${formatNumber(v)}`);
    }
  }
  snapshot(): FamilySnapshot {
    const series: FamilySnapshot["series"] = [];
    for (const [values, v] of this.collect()) {
      series.push([labelText(this.labelNames, values).slice(1, -1), v]);
    }
    return { name: this.name, help: this.help, type: "gauge", merge: this.merge, series };
  }
}

/** Options of {@linkcode Registry.collect}. */
export interface CollectOptions {
  /**
   * How the gauge's series from several proxy workers combine: `sum` (default; counts such as
   * open connections) or `max` (a state, such as a circuit breaker's, where the worst wins).
   */
  merge?: "sum" | "max";
}

/**
 * The set of metrics one process exposes at `/metrics`.
 *
 * @example
 * ```ts
 * const registry = new Registry();
 * const requests = registry.counter("meshd_http_requests_total", "Requests.", ["service"]);
 * requests.with("shop/web:80").inc();
 * const text = registry.render();
 * ```
 */
export class Registry {
  readonly #families = new Map<string, Family>();

  #add<F extends Family>(f: F): F {
    if (this.#families.has(f.name)) throw new TypeError(`Metric "${f.name}" is registered twice`);
    this.#families.set(f.name, f);
    return f;
  }

  /** Registers a counter. */
  counter(name: string, help: string, labelNames: readonly string[] = []): Counter {
    return this.#add(new Counter(name, help, labelNames));
  }

  /** Registers a gauge. */
  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge {
    return this.#add(new Gauge(name, help, labelNames));
  }

  /** Registers a histogram; buckets default to {@linkcode LATENCY_BUCKETS}. */
  histogram(
    name: string,
    help: string,
    labelNames: readonly string[] = [],
    buckets?: readonly number[],
  ): Histogram {
    return this.#add(new Histogram(name, help, labelNames, buckets));
  }

  /** Registers a gauge computed at scrape time. */
  collect(
    name: string,
    help: string,
    labelNames: readonly string[],
    collect: () => Iterable<[LabelValues, number]>,
    options: CollectOptions = {},
  ): void {
    this.#add(new CollectedGauge(name, help, labelNames, collect, options.merge));
  }

  /** Every family's values as plain data, for {@linkcode renderSnapshots}. */
  snapshot(): FamilySnapshot[] {
    return [...this.#families.values()].map((f) => f.snapshot());
  }

  /** The text exposition format, families in registration order. */
  render(): string {
    const out: string[] = [];
    for (const f of this.#families.values()) f.render(out);
    return out.join("\n") + "\n";
  }
}

/** The Content-Type of {@linkcode Registry.render}'s output. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/**
 * Renders the registries of several workers as one: each series once, its values added over
 * the workers (histogram buckets, sums and counts alike), or the largest for a family that
 * merges by `max`. Families keep the order they first appear in.
 *
 * @example
 * ```ts
 * const text = renderSnapshots([a.snapshot(), b.snapshot()]);
 * ```
 */
export function renderSnapshots(sets: readonly (readonly FamilySnapshot[])[]): string {
  const families = new Map<
    string,
    { f: FamilySnapshot; series: Map<string, { value: number; buckets?: number[]; sum: number }> }
  >();
  for (const set of sets) {
    for (const f of set) {
      let entry = families.get(f.name);
      if (!entry) families.set(f.name, entry = { f, series: new Map() });
      const max = entry.f.merge === "max";
      for (const [labels, value, buckets, sum] of f.series) {
        const s = entry.series.get(labels);
        if (!s) {
          entry.series.set(labels, { value, buckets: buckets && [...buckets], sum: sum ?? 0 });
          continue;
        }
        s.value = max ? Math.max(s.value, value) : s.value + value;
        s.sum += sum ?? 0;
        if (s.buckets && buckets) {
          for (let i = 0; i < s.buckets.length; i++) s.buckets[i]! += buckets[i] ?? 0;
        }
      }
    }
  }
  const out: string[] = [];
  for (const { f, series } of families.values()) {
    out.push(`# HELP ${f.name} ${escapeHelp(f.help)}`);
    out.push(`# TYPE ${f.name} ${f.type}`);
    const keys = [...series.keys()].sort(compareNames);
    for (const labels of keys) {
      const s = series.get(labels)!;
      if (f.type !== "histogram") {
        out.push(`${f.name}${braced(labels)} ${formatNumber(s.value)}`);
        continue;
      }
      const bucket = `${f.name}_bucket{${labels ? `${labels},` : ""}`;
      let cumulative = 0;
      (f.bounds ?? []).forEach((b, i) => {
        cumulative += s.buckets?.[i] ?? 0;
        out.push(`${bucket}le="${formatNumber(b)}"} ${cumulative}`);
      });
      out.push(`${bucket}le="+Inf"} ${s.value}`);
      out.push(`${f.name}_sum${braced(labels)} ${formatNumber(s.sum)}`);
      out.push(`${f.name}_count${braced(labels)} ${s.value}`);
    }
  }
  return out.length === 0 ? "" : out.join("\n") + "\n";
}
