import {
  type Counter,
  type CounterChild,
  type Gauge,
  type GaugeChild,
  type Histogram,
  type HistogramChild,
  Registry,
} from "../observability/mod.ts";

/**
 * The metric children of one service port, held by its route so counting costs an add. Each
 * series is made at its first use: a service port no traffic reached shows no series (1,000
 * services would otherwise hold about 11,000 children at zero).
 */
export interface RouteMetrics {
  /** Responses by status class: index 1..5 for 1xx..5xx. */
  responses: CounterChild[];
  requests: CounterChild;
  duration: HistogramChild;
  bytesIn: CounterChild;
  bytesOut: CounterChild;
  open: GaugeChild;
  retries: CounterChild;
  denied(reason: DenyReason): CounterChild;
}

/** Why traffic was refused. */
export type DenyReason = "acl" | "rate_limit" | "circuit_open" | "no_endpoint";

/**
 * Why meshd dropped traffic to protect itself: a connection over `--max-connections` or
 * `--max-connections-per-source`, a failed accept (such as EMFILE), a UDP flow evicted for
 * `--max-udp-flows` or `--max-udp-flows-per-listener`, a UDP flow of a source evicted for
 * `--max-udp-flows-per-source`, a UDP flow whose socket could not be
 * opened, a datagram meshd had no buffer space or memory to send on, a client that read nothing for `--write-timeout`, a response whose backend sent
 * nothing for `--stream-idle-timeout`, a forwarding loop, a retry over the service's retry
 * budget.
 */
export const DROP_REASONS = [
  "connection_limit",
  "source_limit",
  "accept_failed",
  "udp_flow_evicted",
  "udp_source_limit",
  "udp_socket_failed",
  "udp_send_failed",
  "write_timeout",
  "stream_idle_timeout",
  "loop",
  "retry_budget",
] as const;

/** One of {@linkcode DROP_REASONS}. */
export type DropReason = typeof DROP_REASONS[number];

/** Counts one drop. */
export type CountDrop = (reason: DropReason) => void;

/**
 * The proxy's metrics: per service port and protocol, plus endpoint ejections. Label values
 * are `service` (`namespace/name`), `port` and `protocol`.
 */
export class ProxyMetrics {
  readonly #families: RouteFamilies;
  readonly #ejections;
  readonly #dropped;
  readonly #drops = new Map<DropReason, CounterChild>();
  readonly #cache = new Map<string, LazyRouteMetrics>();

  constructor(readonly registry: Registry = new Registry()) {
    const labels = ["service", "port", "protocol"];
    const requests = registry.counter(
      "meshd_requests_total",
      "HTTP requests received, and TCP connections or UDP flows opened, per service port.",
      labels,
    );
    const responses = registry.counter(
      "meshd_http_responses_total",
      "HTTP responses sent to clients, by status class.",
      [...labels, "code"],
    );
    const duration = registry.histogram(
      "meshd_request_duration_seconds",
      "Time from a request's head to the end of its response (HTTP), or a connection's life (TCP).",
      labels,
    );
    const bytesIn = registry.counter(
      "meshd_received_bytes_total",
      "Bytes received from clients (bodies for HTTP, payload for TCP and UDP).",
      labels,
    );
    const bytesOut = registry.counter(
      "meshd_sent_bytes_total",
      "Bytes sent back to clients (bodies for HTTP, payload for TCP and UDP).",
      labels,
    );
    const open = registry.gauge(
      "meshd_open_connections",
      "Client connections (TCP) or flows (UDP) open now, or HTTP requests in flight.",
      labels,
    );
    const denied = registry.counter(
      "meshd_denied_total",
      "Requests, connections or datagrams refused, by reason: acl, rate_limit, circuit_open, no_endpoint.",
      [...labels, "reason"],
    );
    const retries = registry.counter(
      "meshd_retries_total",
      "HTTP requests sent again to another endpoint after a failure.",
      labels,
    );
    this.#families = { requests, responses, duration, bytesIn, bytesOut, open, denied, retries };
    this.#ejections = registry.counter(
      "meshd_endpoint_ejections_total",
      "Times an endpoint was taken out of rotation by outlier detection.",
      ["endpoint"],
    );
    this.#dropped = registry.counter(
      "meshd_dropped_total",
      "Connections, datagrams, requests or retries meshd dropped to protect itself, by reason: " +
        "connection_limit, source_limit, accept_failed, udp_flow_evicted, udp_socket_failed, " +
        "udp_send_failed, write_timeout, stream_idle_timeout, loop, retry_budget.",
      ["reason"],
    );
    // Every reason is a series from the start, at 0: a dashboard's rate() of drops then reads
    // 0 rather than nothing, and an alert on it works before the first drop.
    for (const reason of DROP_REASONS) this.#drops.set(reason, this.#dropped.with(reason));
  }

  /** Counts one drop; bound, so it can be handed around as a {@linkcode CountDrop}. */
  readonly drop: CountDrop = (reason) => {
    let c = this.#drops.get(reason);
    if (!c) this.#drops.set(reason, c = this.#dropped.with(reason));
    c.inc();
  };

  /** The children for one service port, the same object for as long as the port exists. */
  route(service: string, port: number, protocol: string): RouteMetrics {
    const key = ProxyMetrics.key(service, port, protocol);
    let m = this.#cache.get(key);
    if (!m) {
      this.#cache.set(
        key,
        m = new LazyRouteMetrics(this.#families, [service, String(port), protocol]),
      );
    }
    return m;
  }

  /** Counts an ejection of `endpoint` (`address:port`). */
  ejected(endpoint: string): void {
    this.#ejections.with(endpoint).inc();
  }

  /** Drops the series of service ports no longer in the config. */
  retain(keep: Set<string>): void {
    for (const k of [...this.#cache.keys()]) if (!keep.has(k)) this.forget(k);
  }

  /** Drops the series of one service port ({@linkcode ProxyMetrics.key}). */
  forget(key: string): void {
    const m = this.#cache.get(key);
    if (!m) return;
    this.#cache.delete(key);
    m.forget();
  }

  /** The key {@linkcode retain} expects for a service port. */
  static key(service: string, port: number, protocol: string): string {
    return `${service}\u0000${port}\u0000${protocol}`;
  }
}

/** The families of the per service port series. */
interface RouteFamilies {
  requests: Counter;
  responses: Counter;
  duration: Histogram;
  bytesIn: Counter;
  bytesOut: Counter;
  open: Gauge;
  denied: Counter;
  retries: Counter;
}

/** Counts nothing: slot 0 of `responses` (there is no status class 0). */
const NO_CLASS: CounterChild = { value: 0, inc() {} };

/** {@linkcode RouteMetrics} whose children are made at their first use. */
class LazyRouteMetrics implements RouteMetrics {
  readonly #f: RouteFamilies;
  /** `service`, `port`, `protocol`. */
  readonly #l: readonly [string, string, string];
  /** Set once the port left the config: later children count into no series. */
  #gone = false;
  #requests?: CounterChild;
  #responses?: CounterChild[];
  #duration?: HistogramChild;
  #bytesIn?: CounterChild;
  #bytesOut?: CounterChild;
  #open?: GaugeChild;
  #retries?: CounterChild;
  #denied?: Map<DenyReason, CounterChild>;

  constructor(families: RouteFamilies, labels: readonly [string, string, string]) {
    this.#f = families;
    this.#l = labels;
  }

  #child<C>(family: { with(...v: string[]): C; detached(): C }, ...extra: string[]): C {
    return this.#gone ? family.detached() : family.with(...this.#l, ...extra);
  }

  /**
   * A port's request, duration, byte, open and retry series appear together, at its first
   * request, connection or flow: a dashboard's rate of bytes or retries then reads 0 for a port
   * in use rather than nothing.
   */
  #group(): void {
    this.#requests = this.#child(this.#f.requests);
    this.#duration = this.#child(this.#f.duration);
    this.#bytesIn = this.#child(this.#f.bytesIn);
    this.#bytesOut = this.#child(this.#f.bytesOut);
    this.#open = this.#child(this.#f.open);
    this.#retries = this.#child(this.#f.retries);
  }

  get requests(): CounterChild {
    if (!this.#requests) this.#group();
    return this.#requests!;
  }
  /** Index by status / 100; the five classes appear together, at the first response. */
  get responses(): CounterChild[] {
    return this.#responses ??= [
      NO_CLASS,
      ...[1, 2, 3, 4, 5].map((c) => this.#child(this.#f.responses, `${c}xx`)),
    ];
  }
  get duration(): HistogramChild {
    if (!this.#duration) this.#group();
    return this.#duration!;
  }
  get bytesIn(): CounterChild {
    if (!this.#bytesIn) this.#group();
    return this.#bytesIn!;
  }
  get bytesOut(): CounterChild {
    if (!this.#bytesOut) this.#group();
    return this.#bytesOut!;
  }
  get open(): GaugeChild {
    if (!this.#open) this.#group();
    return this.#open!;
  }
  get retries(): CounterChild {
    if (!this.#retries) this.#group();
    return this.#retries!;
  }
  denied(reason: DenyReason): CounterChild {
    const d = this.#denied ??= new Map();
    let c = d.get(reason);
    if (!c) d.set(reason, c = this.#child(this.#f.denied, reason));
    return c;
  }

  /** Removes the series made so far; children made later count into none. */
  forget(): void {
    this.#gone = true;
    const l = this.#l;
    if (this.#requests) this.#f.requests.remove(...l);
    if (this.#responses) {
      for (const c of [1, 2, 3, 4, 5]) {
        this.#f.responses.remove(...l, `${c}xx`);
      }
    }
    if (this.#duration) this.#f.duration.remove(...l);
    if (this.#bytesIn) this.#f.bytesIn.remove(...l);
    if (this.#bytesOut) this.#f.bytesOut.remove(...l);
    if (this.#open) this.#f.open.remove(...l);
    if (this.#retries) this.#f.retries.remove(...l);
    for (const r of this.#denied?.keys() ?? []) this.#f.denied.remove(...l, r);
  }
}
