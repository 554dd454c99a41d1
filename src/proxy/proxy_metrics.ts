import {
  type CounterChild,
  type GaugeChild,
  type HistogramChild,
  Registry,
} from "../observability/mod.ts";

/** The metric children of one service port, held by its route so counting costs an add. */
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
 * opened, a client that read nothing for `--write-timeout`, a forwarding loop, a retry over the
 * service's retry budget.
 */
export const DROP_REASONS = [
  "connection_limit",
  "source_limit",
  "accept_failed",
  "udp_flow_evicted",
  "udp_source_limit",
  "udp_socket_failed",
  "write_timeout",
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
  readonly #requests;
  readonly #responses;
  readonly #duration;
  readonly #bytesIn;
  readonly #bytesOut;
  readonly #open;
  readonly #denied;
  readonly #retries;
  readonly #ejections;
  readonly #dropped;
  readonly #drops = new Map<DropReason, CounterChild>();
  readonly #cache = new Map<string, RouteMetrics>();

  constructor(readonly registry: Registry = new Registry()) {
    const labels = ["service", "port", "protocol"];
    this.#requests = registry.counter(
      "meshd_requests_total",
      "HTTP requests received, and TCP connections or UDP flows opened, per service port.",
      labels,
    );
    this.#responses = registry.counter(
      "meshd_http_responses_total",
      "HTTP responses sent to clients, by status class.",
      [...labels, "code"],
    );
    this.#duration = registry.histogram(
      "meshd_request_duration_seconds",
      "Time from a request's head to the end of its response (HTTP), or a connection's life (TCP).",
      labels,
    );
    this.#bytesIn = registry.counter(
      "meshd_received_bytes_total",
      "Bytes received from clients (bodies for HTTP, payload for TCP and UDP).",
      labels,
    );
    this.#bytesOut = registry.counter(
      "meshd_sent_bytes_total",
      "Bytes sent back to clients (bodies for HTTP, payload for TCP and UDP).",
      labels,
    );
    this.#open = registry.gauge(
      "meshd_open_connections",
      "Client connections (TCP) or flows (UDP) open now, or HTTP requests in flight.",
      labels,
    );
    this.#denied = registry.counter(
      "meshd_denied_total",
      "Requests, connections or datagrams refused, by reason: acl, rate_limit, circuit_open, no_endpoint.",
      [...labels, "reason"],
    );
    this.#retries = registry.counter(
      "meshd_retries_total",
      "HTTP requests sent again to another endpoint after a failure.",
      labels,
    );
    this.#ejections = registry.counter(
      "meshd_endpoint_ejections_total",
      "Times an endpoint was taken out of rotation by outlier detection.",
      ["endpoint"],
    );
    this.#dropped = registry.counter(
      "meshd_dropped_total",
      "Connections, datagrams, requests or retries meshd dropped to protect itself, by reason: " +
        "connection_limit, source_limit, accept_failed, udp_flow_evicted, udp_socket_failed, " +
        "write_timeout, loop, retry_budget.",
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
    const key = `${service}\u0000${port}\u0000${protocol}`;
    let m = this.#cache.get(key);
    if (m) return m;
    const l = [service, String(port), protocol] as const;
    const denied = new Map<DenyReason, CounterChild>();
    m = {
      // Index by status / 100; there is no class 0, so slot 0 counts nothing anyone sees.
      responses: [
        { value: 0, inc() {} },
        ...[1, 2, 3, 4, 5].map((c) => this.#responses.with(...l, `${c}xx`)),
      ],
      requests: this.#requests.with(...l),
      duration: this.#duration.with(...l),
      bytesIn: this.#bytesIn.with(...l),
      bytesOut: this.#bytesOut.with(...l),
      open: this.#open.with(...l),
      retries: this.#retries.with(...l),
      denied: (reason) => {
        let c = denied.get(reason);
        if (!c) denied.set(reason, c = this.#denied.with(...l, reason));
        return c;
      },
    };
    this.#cache.set(key, m);
    return m;
  }

  /** Counts an ejection of `endpoint` (`address:port`). */
  ejected(endpoint: string): void {
    this.#ejections.with(endpoint).inc();
  }

  /** Drops the series of service ports no longer in the config. */
  retain(keep: Set<string>): void {
    const alive = (v: readonly string[]) => keep.has(`${v[0]}\u0000${v[1]}\u0000${v[2]}`);
    for (const k of this.#cache.keys()) if (!keep.has(k)) this.#cache.delete(k);
    for (
      const f of [
        this.#requests,
        this.#responses,
        this.#duration,
        this.#bytesIn,
        this.#bytesOut,
        this.#open,
        this.#denied,
        this.#retries,
      ]
    ) f.retain(alive);
  }

  /** The key {@linkcode retain} expects for a service port. */
  static key(service: string, port: number, protocol: string): string {
    return `${service}\u0000${port}\u0000${protocol}`;
  }
}
