import type { Logger } from "../observability/mod.ts";
import { type AccessLog, failureReason, logUnrouted } from "./access_log.ts";
import type { RequestInfo } from "./access.ts";
import type { EndpointPool, EndpointState } from "./endpoint_pool.ts";
import { admit, checkBreaker, type LoopGuard, ProxyFailure, withoutOwn } from "./policy.ts";
import type { CountDrop } from "./proxy_metrics.ts";
import { RetryBudgets } from "./retry_budget.ts";
import { lookupHttpRoute, type Route, type RouteTable } from "./route_table.ts";
import {
  type BodyFraming,
  type BufReader,
  copyBody,
  encodeLatin1,
  getHeader,
  headerTokens,
  HttpParseError,
  isToken,
  type MessageHead,
  viaHas,
  writeAll,
  type Writer,
} from "./http1.ts";
import { normalizeTarget } from "./normalize_path.ts";
import { LogThrottle } from "./log_throttle.ts";
import { StreamIdleTimeout, UpstreamError } from "./upstream_error.ts";
import { type Connect, connectUpstream } from "./connect_upstream.ts";
import { forwardedFor } from "./forwarded_for.ts";
import { type Metered, meterEnd, meterStart } from "./request_meter.ts";
import { ClientGone, withRetries } from "./with_retries.ts";
import { type Fields, H2Connection, type H2Stream } from "./h2/connection.ts";
import { ERROR, errorName } from "./h2/frames.ts";

/** Options for {@linkcode H2Proxy}. */
export interface H2ProxyOptions {
  routes: () => RouteTable;
  pool: EndpointPool;
  logger: Logger;
  /** Opens backend connections. Default: `Deno.connect` over TCP. */
  connect?: Connect;
  /** Give up on a backend that has not accepted within this time (502). Default 5000 ms. */
  connectTimeoutMs?: number;
  /** Give up on a backend that has not sent response headers within this time (504). */
  responseTimeoutMs?: number;
  /** Counts retries refused by the retry budget. */
  drop?: CountDrop;
  /** Retry budgets per service, shared with HTTP/1. */
  budgets?: RetryBudgets;
  /**
   * Whether `address:port` is one of this meshd's own listeners: such endpoints are left out,
   * and a request that has only those is refused with a 508 (a forwarding loop).
   */
  isOwn?: (address: string, port: number) => boolean;
  /**
   * This meshd's name in `Via` (RFC 9110 §7.6.3), added to every request it forwards; a
   * request that has it already went around a loop (508), over HTTP/2 as over HTTP/1.
   */
  viaName?: string;
  /**
   * Close a client connection that has had no stream open for this long, as HTTP/1 closes one
   * idle between requests (a connection that only sent the preface held its slot for good).
   * Default 60 s.
   */
  clientIdleMs?: number;
  /**
   * Reset a stream whose backend sends no DATA for this long while its response body is
   * under way and the client takes what came (the endpoint is charged a failure). 0: no
   * limit. Default 5 min.
   */
  streamIdleTimeoutMs?: number;
  /** Streams one client connection may have open at once. Default 100. */
  maxConcurrentStreams?: number;
  /**
   * The log of streams no service answers (malformed, or an `:authority` of no service);
   * a routed stream is logged by its route's own log (`Route.log`).
   */
  accessLog?: AccessLog | null;
  /** `--request-id`: add `x-request-id` (a random UUID) to each request that has none. */
  requestId?: boolean;
}

/** One client stream: its metric state, and what its access log line says. */
interface StreamState extends Metered {
  /** The route that served it: the root, or the TrafficSplit backend chosen. */
  target: Route;
  /** The endpoint of the last try. */
  ep: EndpointState | null;
  tries: number;
  /** DATA bytes from the client and to it. */
  bytesIn: number;
  bytesOut: number;
  /** Why the stream ended without a whole response, when it did (`reason`, `detail`). */
  reason: string | undefined;
  detail: string | undefined;
}

/** One exchange in flight between a client stream and a backend stream, as its relays share it. */
interface Relay {
  client: H2Stream;
  up: H2Stream;
  ep: EndpointState;
  x: StreamState;
  /** The request had no body: it went out whole with its headers. */
  bodyless: boolean;
  /** The response's status; 0 until its headers come. */
  status: number;
  /** Ends the exchange with a status or a failure; only the first call counts. */
  settle: (v: number | UpstreamError | ProxyFailure) => void;
  /** Stops the response timeout. */
  cancelTimer: () => void;
  /** The response timeout, which the request body's progress pushes on. */
  body: BodyProgress;
  /**
   * The response body's `--stream-idle-timeout`, once its headers came: DATA either way pushes
   * it on (as Envoy's `stream_idle_timeout` counts both), so a gRPC stream the client keeps
   * feeding is not cut while its backend waits for more of it.
   */
  idle: Deadline | null;
}

/** A 5xx a client can repeat at will: one warning per status and reason per 10 s. */
const FAIL_LOG = new LogThrottle();

// Connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2); `te` is kept when it is
// "trailers", which gRPC sends.
const H2_DROP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
  "http2-settings",
  "host",
]);

// HTTP/1.1 fields that do not carry over to HTTP/2 (RFC 9110 §7.6.1, RFC 9113 §8.2.2).
const H1_ONLY = new Set([...H2_DROP, "te", "trailer", "proxy-authenticate", "proxy-authorization"]);

/** The interim response meshd sends an HTTP/1.1 client that expects one (see fromHttp1). */
const CONTINUE = encodeLatin1("HTTP/1.1 100 Continue\r\n\r\n");

/** How often deadlines (response timeouts, idle clients) are checked. */
const SWEEP_MS = 50;
/** `--stream-idle-timeout`'s default, as Envoy's `stream_idle_timeout`. */
const STREAM_IDLE_MS = 300_000;

/** An HTTP/1 request to a service whose scheme is h2c ({@linkcode H2Proxy.fromHttp1}). */
export interface Http1ToH2 {
  /** The checked request head. */
  req: MessageHead;
  framing: BodyFraming;
  /** The client connection's reader, positioned at the request body. */
  reader: BufReader;
  /** Where the HTTP/1 response goes. */
  client: Writer;
  /** The client's address, for X-Forwarded-For and Forwarded. */
  peer: string;
  /** The route the Host names (its metrics count the request) and the one serving it. */
  root: Route;
  target: Route;
  /** The target's endpoints the request may go to. */
  candidates: EndpointState[];
  /** Whether the client went away; no retry is made for nobody. */
  gone?: () => boolean;
  /** Count the request's and the response's body bytes; default the root route's counters. */
  cin?: { inc(n: number): void };
  cout?: { inc(n: number): void };
  /** Told of each try's endpoint, for the access log. */
  onTry?: (ep: EndpointState) => void;
}

/** One chunk of a chunked body (RFC 9112 §7.1): size line, data, CRLF. */
function chunkOf(data: Uint8Array): Uint8Array {
  const size = encodeLatin1(`${data.length.toString(16)}\r\n`);
  const framed = new Uint8Array(size.length + data.length + 2);
  framed.set(size);
  framed.set(data, size.length);
  framed.set([13, 10], size.length + data.length);
  return framed;
}

interface Backend {
  /** Set once connected. */
  conn: H2Connection | null;
  ready: Promise<H2Connection>;
}

/** A response that is awaited: what to do if it has not come by `deadline`. */
interface Deadline {
  deadline: number;
  expire: () => void;
}

/**
 * An HTTP/1 request body on its way to an h2c backend: while it is sent, the response deadline
 * counts from its last progress, and a body that stops coming is the client's stall (408), not
 * the backend's (as `BodyToBackend` does for HTTP/1 backends).
 */
interface BodyProgress {
  /** The response deadline, once armed. */
  timer: Deadline | null;
  /** A write to the backend is under way (or failed): the copy waits on the backend. */
  writing: boolean;
  /** The body was copied to its end. */
  sent: boolean;
}

// gRPC status codes for the failures the proxy answers itself.
const GRPC_STATUS: Record<number, number> = {
  400: 13, // INTERNAL
  403: 7, // PERMISSION_DENIED
  404: 12, // UNIMPLEMENTED
  429: 14, // UNAVAILABLE
  502: 14,
  503: 14,
  504: 4, // DEADLINE_EXCEEDED
};

/** Reason phrases for HTTP/1.x status lines (RFC 9110 §15); others go without one. */
const REASONS: Record<number, string> = {
  200: "OK",
  201: "Created",
  202: "Accepted",
  204: "No Content",
  206: "Partial Content",
  301: "Moved Permanently",
  302: "Found",
  303: "See Other",
  304: "Not Modified",
  307: "Temporary Redirect",
  308: "Permanent Redirect",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  409: "Conflict",
  410: "Gone",
  413: "Content Too Large",
  415: "Unsupported Media Type",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

/**
 * HTTP/2 over cleartext (prior knowledge), including gRPC, on meshd's own frame layer
 * (`h2/connection.ts`): requests are routed by `:authority` through the same policy as
 * HTTP/1.1 and sent to services with scheme `h2c` over one multiplexed connection per
 * endpoint, which has its own SETTINGS and flow control. Bodies stream both ways within the
 * flow-control windows of both sides; trailers (gRPC status) are passed back.
 *
 * The HTTP entrypoint hands over a client connection when it sees the HTTP/2 preface, so both
 * versions share one port.
 */
export class H2Proxy {
  readonly #opts: H2ProxyOptions;
  readonly #clients = new Set<H2Connection>();
  readonly #backends = new Map<string, Backend>();
  readonly #budgets: RetryBudgets;
  readonly #deadlines = new Set<Deadline>();
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #closed = false;
  /** Set by {@linkcode H2Proxy.drain}. */
  #draining = false;
  readonly #onBudgetSpent = (): void => this.#opts.drop?.("retry_budget");
  readonly #guard: LoopGuard;

  constructor(options: H2ProxyOptions) {
    this.#opts = options;
    this.#budgets = options.budgets ?? new RetryBudgets();
    this.#guard = {
      isOwn: options.isOwn,
      drop: options.drop ?? (() => {}),
      logger: options.logger,
    };
  }

  /**
   * Serves an HTTP/2 client on `conn`. `early` holds the bytes already read, starting with the
   * preface; `peer` is the client's address (the only thing access control trusts). Resolves
   * when the connection ends.
   */
  adopt(conn: Deno.TcpConn, early: Uint8Array, peer: string): Promise<void> {
    if (this.#closed) {
      try {
        conn.close();
      } catch { /* closed */ }
      return Promise.resolve();
    }
    try {
      conn.setNoDelay(true);
    } catch { /* closed */ }
    const logger = this.#opts.logger;
    const peerPort = (conn.remoteAddr as Deno.NetAddr).port;
    const client: H2Connection = new H2Connection(conn, {
      role: "server",
      maxConcurrentStreams: this.#opts.maxConcurrentStreams,
      onStream: (stream, fields) => {
        this.#onStream(stream, fields, peer, peerPort).catch((e) => {
          const said = FAIL_LOG.take("stream failed");
          if (said) logger.warn("h2 stream failed", { error: String(e), ...said });
          stream.reset(ERROR.INTERNAL_ERROR);
        });
      },
      onClose: (error) => {
        this.#clients.delete(client);
        // A hostile or broken client: one line at debug, never a stack.
        if (error && logger.enabled("debug")) {
          logger.debug("h2 client connection failed", {
            client: peer,
            error: `${errorName(error.code)}: ${error.message}`,
          });
        }
      },
    }, early);
    this.#clients.add(client);
    // Accepted before a drain, its preface read after: no new streams here either.
    if (this.#draining) client.drain();
    this.#startSweeper();
    return client.done;
  }

  #startSweeper(): void {
    if (this.#sweeper !== undefined) return;
    // One timer for every deadline and idle client, rather than one per request.
    this.#sweeper = setInterval(() => this.#sweep(), SWEEP_MS);
    Deno.unrefTimer(this.#sweeper); // never keeps the process alive on its own
  }

  #sweep(): void {
    const now = Date.now(); // a coarse clock serves deadlines checked every SWEEP_MS
    for (const d of this.#deadlines) {
      if (now >= d.deadline) {
        this.#deadlines.delete(d);
        d.expire();
      }
    }
    const idleMs = this.#opts.clientIdleMs ?? 60_000;
    for (const c of this.#clients) {
      // GOAWAY; with no stream open the connection ends at once.
      if (c.streams === 0 && now - c.idleSince >= idleMs) c.drain();
    }
  }

  /**
   * Sends every client connection GOAWAY (a drain before this process leaves): the streams in
   * flight finish, then each connection ends, and the clients open their next streams on a new
   * connection, to whoever listens on the port then. A client adopted from now on gets it too.
   */
  drain(): void {
    this.#draining = true;
    for (const c of this.#clients) c.drain();
  }

  /** Closes every client and backend connection, each with a GOAWAY first. */
  close(): void {
    this.#closed = true;
    for (const c of this.#clients) c.close();
    this.#clients.clear();
    for (const b of this.#backends.values()) b.ready.then((c) => c.close(), () => {});
    this.#backends.clear();
    for (const d of this.#deadlines) d.expire();
    this.#deadlines.clear();
    clearInterval(this.#sweeper);
    this.#sweeper = undefined;
  }

  /** Closes backend connections to endpoints that are in no route any more. */
  dropIdle(keep: Set<string>): void {
    for (const [key, b] of this.#backends) {
      if (keep.has(key)) continue;
      this.#backends.delete(key);
      // GOAWAY: streams in flight finish, then the connection closes.
      b.ready.then((c) => c.drain(), () => {});
    }
  }

  /** This meshd's `Via` entry for a request received over `protocol` ("2", "1.1"), if named. */
  #via(protocol: string): string | null {
    const name = this.#opts.viaName;
    return name === undefined ? null : `${protocol} ${name}`;
  }

  /** Answers one client stream: routes it, forwards it, then counts and logs it. */
  async #onStream(
    stream: H2Stream,
    fields: Fields,
    peer: string,
    peerPort: number,
  ): Promise<void> {
    const grpc = (fieldOf(fields, "content-type") ?? "").startsWith("application/grpc");
    const root = this.#routeOf(stream, fields, grpc, peer, peerPort);
    if (!root) return;
    // The stream's metric state, counted by meterStart/meterEnd as HTTP/1 counts a request.
    const x: StreamState = {
      root,
      started: 0,
      status: 0,
      network: false,
      local: false,
      breakerChecked: false,
      target: root,
      ep: null,
      tries: 0,
      bytesIn: 0,
      bytesOut: 0,
      reason: undefined,
      detail: undefined,
    };
    const log = root.log;
    const requestId = this.#requestId(fields, log !== null);
    meterStart(x);
    try {
      x.status = await this.#forward(stream, fields, peer, x);
    } catch (e) {
      if (e instanceof ClientGone) {
        x.status = 499; // the stream is gone: nobody to answer
        x.reason = "client_gone";
        return;
      }
      if (!(e instanceof ProxyFailure)) {
        x.reason = "error";
        x.detail = String(e);
        throw e;
      }
      x.status = e.status;
      x.network = e.network;
      x.local = e.local;
      x.reason = failureReason(e);
      x.detail = e.message;
      this.#fail(stream, e, grpc);
    } finally {
      meterEnd(x);
      if (log !== null) logStream(log, x, fields, peer, peerPort, requestId);
    }
  }

  /** The route a stream's request goes to, or none once a 400 or 404 is answered and logged. */
  #routeOf(
    stream: H2Stream,
    fields: Fields,
    grpc: boolean,
    peer: string,
    peerPort: number,
  ): Route | undefined {
    let malformed = checkH2Request(fields);
    if (malformed === null) {
      // Access rules match the path meshd forwards: one normal form, or 400.
      try {
        setField(fields, ":path", normalizeTarget(fieldOf(fields, ":path")!));
      } catch (e) {
        if (!(e instanceof HttpParseError)) throw e;
        malformed = e.message;
      }
    }
    const authority = fieldOf(fields, ":authority") ?? fieldOf(fields, "host") ?? "";
    const root = malformed === null ? lookupHttpRoute(this.#opts.routes(), authority) : null;
    if (root) return root;
    // RFC 9113 §8.1.1: a malformed request is answered here, never forwarded.
    const f = malformed !== null
      ? new ProxyFailure(400, `Bad request: ${malformed}`)
      : new ProxyFailure(404, `No mesh service answers to "${authority}"`);
    this.#fail(stream, f, grpc);
    const log = this.#opts.accessLog;
    if (log) {
      logUnrouted(log, {
        source: peer,
        sourcePort: peerPort,
        method: fieldOf(fields, ":method"),
        authority: authority || undefined,
        target: fieldOf(fields, ":path"),
        failure: f,
      });
    }
    return undefined;
  }

  /** The request's `x-request-id`, added first when meshd adds ids; read only when `logged`. */
  #requestId(fields: Fields, logged: boolean): string | undefined {
    let requestId: string | undefined;
    if (this.#opts.requestId) {
      requestId = fieldOf(fields, "x-request-id");
      if (requestId === undefined) fields.push(["x-request-id", requestId = crypto.randomUUID()]);
    } else if (logged) requestId = fieldOf(fields, "x-request-id");
    return requestId;
  }

  /** Forwards a routed stream to an endpoint, with retries; resolves with the status sent. */
  async #forward(
    stream: H2Stream,
    fields: Fields,
    peer: string,
    x: StreamState,
  ): Promise<number> {
    const root = x.root;
    const viaName = this.#opts.viaName;
    const via = fieldOf(fields, "via");
    if (viaName !== undefined && via !== undefined && viaHas([["via", via]], viaName)) {
      this.#opts.drop?.("loop");
      throw new ProxyFailure(
        508,
        `Forwarding loop: the request to service "${root.key}" came through this meshd ` +
          `already (Via "${viaName}")`,
      );
    }
    x.breakerChecked = checkBreaker(root);
    const admitted = admit(root, peer, requestInfo(fields));
    const target = admitted.target;
    x.target = target;
    const candidates = withoutOwn(admitted, this.#guard);
    if (target.service.scheme !== "h2c") {
      throw new ProxyFailure(
        502,
        `Service "${target.key}" has scheme ${target.service.scheme}; ` +
          `HTTP/2 clients reach services with scheme h2c only`,
      );
    }
    const out = requestHeaders(fields, peer, this.#via("2"));
    const { value, ep } = await withRetries((ep) => this.#exchange(stream, out, ep, x), {
      pool: this.#opts.pool,
      root,
      target,
      candidates,
      budget: this.#budgets.of(target.key),
      onBudgetSpent: this.#onBudgetSpent,
      gone: () => stream.closed,
    });
    // The exchange ended with the response: the endpoint's request in flight is over.
    ep.inflight--;
    return value;
  }

  /** A request body that made no progress within the response timeout (a 408). */
  #bodyStalled(): ProxyFailure {
    return new ProxyFailure(
      408,
      `Request body from the client made no progress for ${
        this.#opts.responseTimeoutMs ?? 30_000
      } ms`,
    );
  }

  /** A backend that sent no response headers within the response timeout (a 504). */
  #timedOut(): UpstreamError {
    return new UpstreamError("timed out", {
      requestSent: true,
      timeoutMs: this.#opts.responseTimeoutMs ?? 30_000,
    });
  }

  /**
   * Calls `expire` unless the returned function is called within the response timeout; a
   * request body's `progress` may push the deadline on.
   */
  #deadline(expire: () => void, progress?: BodyProgress): () => void {
    const d: Deadline = {
      deadline: Date.now() + (this.#opts.responseTimeoutMs ?? 30_000),
      expire,
    };
    if (progress) progress.timer = d;
    this.#deadlines.add(d);
    this.#startSweeper();
    return () => this.#deadlines.delete(d);
  }

  /**
   * The `--stream-idle-timeout` deadline of a response body from `ep`, unarmed (its deadline
   * is Infinity until a wait on the backend sets it), or none when the flag is 0. When it
   * passes it counts the drop, charges the endpoint a failure (a backend that stops mid-body is
   * failing, as Envoy counts it against its upstream) and calls `cut`; unless `held` says the
   * backend is held back by the client, and then it waits as long again. Remove it from
   * {@linkcode H2Proxy.#deadlines} when the body ends.
   */
  #streamIdle(ep: EndpointState, cut: () => void, held?: () => boolean): Deadline | null {
    const ms = this.#opts.streamIdleTimeoutMs ?? STREAM_IDLE_MS;
    if (ms <= 0) return null;
    const d: Deadline = {
      deadline: Infinity,
      expire: () => {
        if (held?.()) {
          d.deadline = Date.now() + ms;
          this.#deadlines.add(d);
          return;
        }
        this.#opts.drop?.("stream_idle_timeout");
        this.#opts.pool.failure(ep);
        if (this.#opts.logger.enabled("debug")) {
          this.#opts.logger.debug("h2 backend sent nothing of its response; cut", {
            endpoint: ep.key,
            timeoutMs: ms,
          });
        }
        cut();
      },
    };
    this.#deadlines.add(d);
    this.#startSweeper();
    return d;
  }

  /** A backend stream for `out` on `ep` at once, when connected and with a slot free. */
  #openNow(ep: EndpointState, out: Fields, end: boolean): H2Stream | null {
    const conn = this.#backends.get(ep.key)?.conn;
    return conn && !conn.closing ? conn.tryRequest(out, end) : null;
  }

  /** Opens a backend stream for `out` on `ep`, or throws an {@linkcode UpstreamError}. */
  async #open(ep: EndpointState, out: Fields, end: boolean): Promise<H2Stream> {
    const conn = await this.#backend(ep);
    try {
      // A backend whose stream slots never free up fails the request in the response timeout.
      return await conn.request(out, end, this.#opts.responseTimeoutMs ?? 30_000);
    } catch (e) {
      if (conn.closing && this.#backends.get(ep.key)?.conn === conn) this.#backends.delete(ep.key);
      throw new UpstreamError((e as Error).message, { requestSent: false });
    }
  }

  /** One request on one endpoint; resolves with the status once the response has ended. */
  async #exchange(
    client: H2Stream,
    out: Fields,
    ep: EndpointState,
    x: StreamState,
  ): Promise<number> {
    x.ep = ep;
    x.tries++;
    // No body at all: the request goes out whole, and may be retried if refused.
    const bodyless = client.remoteEnded && !client.hasData;
    // Without an await when it can: the request's frames then leave in the same write as the
    // others read with it.
    const up = this.#openNow(ep, out, bodyless) ?? await this.#open(ep, out, bodyless);
    if (client.closed) {
      up.reset(ERROR.CANCEL);
      x.reason = "client_gone";
      return 499; // the client went away while we connected
    }
    return await new Promise<number>((resolve, reject) => {
      let settled = false;
      const settle = (v: number | UpstreamError | ProxyFailure): void => {
        if (settled) return;
        settled = true;
        cancelTimer();
        if (typeof v === "number") resolve(v);
        else reject(v);
      };
      const body: BodyProgress = { timer: null, writing: false, sent: bodyless };
      const cancelTimer = this.#deadline(() => {
        // Before the reset's own close. The backend took all the client sent: its stall.
        const stalled = !client.remoteEnded && !up.backlogged;
        settle(stalled ? this.#bodyStalled() : this.#timedOut());
        up.reset(ERROR.CANCEL);
      }, body);
      const r: Relay = {
        client,
        up,
        ep,
        x,
        bodyless,
        status: 0,
        settle,
        cancelTimer,
        body,
        idle: null,
      };
      this.#relayResponse(r);
      this.#relayRequest(r);
      if (!bodyless) client.replay();
    });
  }

  /** Sends the backend's response on to the client, settling the exchange when it ends. */
  #relayResponse(r: Relay): void {
    const { client, up, ep, x, bodyless, settle } = r;
    const m = x.root.metrics;
    const pool = this.#opts.pool;
    const idleMs = this.#opts.streamIdleTimeoutMs ?? STREAM_IDLE_MS;
    const cut = (): void => {
      x.reason = "stream_idle_timeout";
      x.detail = `The endpoint sent nothing of the response body for ${idleMs} ms`;
      up.reset(ERROR.CANCEL); // and so the client's stream (onClose)
    };
    up.onHeaders = (h, end) => {
      if (r.status === 0) {
        r.cancelTimer();
        r.status = Number(fieldOf(h, ":status"));
        if (!(r.status >= 200 && r.status <= 599)) {
          up.reset(ERROR.PROTOCOL_ERROR);
          settle(
            new UpstreamError(`bad :status "${fieldOf(h, ":status")}"`, { requestSent: true }),
          );
          return;
        }
        if (r.status >= 500) pool.failure(ep);
        else pool.success(ep);
        if (!end) {
          // A client that does not take what came holds the backend back by flow control:
          // that is the client's stall, not the backend's.
          const idle = this.#streamIdle(ep, cut, () => client.backlogged);
          if (idle !== null) idle.deadline = Date.now() + idleMs;
          r.idle = idle;
        }
      }
      client.sendHeaders(responseHeaders(h), end);
    };
    up.onData = (chunk, end) => {
      // One field per DATA frame: the sweep compares it with its clock.
      if (r.idle !== null) r.idle.deadline = Date.now() + idleMs;
      m.bytesOut.inc(chunk.length);
      x.bytesOut += chunk.length;
      client.sendData(chunk, end, up);
    };
    up.onClose = (code) => {
      if (r.idle !== null) this.#deadlines.delete(r.idle);
      if (r.status === 0) {
        if (client.closed && client.code !== ERROR.NO_ERROR) {
          x.reason = "client_gone";
          settle(499);
        } else {
          settle(
            new UpstreamError(`stream closed before a response (${errorName(code)})`, {
              requestSent: !(up.refused && bodyless),
            }),
          );
        }
        return;
      }
      if (code !== ERROR.NO_ERROR) {
        // Reset mid-response: the client's stream is reset too.
        if (x.reason === undefined) {
          x.reason = "reset";
          x.detail = `The endpoint reset the stream mid-response (${errorName(code)})`;
        }
        client.reset(code === ERROR.REFUSED_STREAM ? ERROR.INTERNAL_ERROR : code);
      } else if (!client.remoteEnded) {
        // RFC 9113 §8.1: the response is complete; the rest of the request is not needed.
        client.reset(ERROR.NO_ERROR);
      }
      settle(r.status);
    };
  }

  /** Sends the rest of the client's request on to the backend, and its reset or leaving. */
  #relayRequest(r: Relay): void {
    const { client, up, x, settle } = r;
    const m = x.root.metrics;
    const timer = r.body.timer;
    const ms = this.#opts.responseTimeoutMs ?? 30_000;
    const idleMs = this.#opts.streamIdleTimeoutMs ?? STREAM_IDLE_MS;
    client.onData = (chunk, end) => {
      m.bytesIn.inc(chunk.length);
      x.bytesIn += chunk.length;
      up.sendData(chunk, end, client);
      // While the body comes, the response deadline counts from its last progress.
      if (r.status === 0 && timer !== null) timer.deadline = Date.now() + ms;
      else if (r.idle !== null) r.idle.deadline = Date.now() + idleMs;
    };
    client.onHeaders = (trailers, end) => up.sendHeaders(trailers, end);
    client.onClose = (code) => {
      if (code === ERROR.NO_ERROR && client.localEnded) return; // done
      // The client reset or left: nothing more goes upstream.
      up.reset(ERROR.CANCEL);
      if (x.reason === undefined) {
        x.reason = r.status === 0 ? "client_gone" : "reset";
        x.detail = `The client reset the stream (${errorName(code)})`;
      }
      if (r.status === 0) settle(499); // the client cancelled: no fault of the endpoint
    };
  }

  /** The connection to an endpoint, connecting it if there is none. */
  #backend(ep: EndpointState): Promise<H2Connection> {
    const have = this.#backends.get(ep.key);
    if (have && !have.conn?.closing) return have.ready;
    const b: Backend = { conn: null, ready: Promise.resolve(null as unknown as H2Connection) };
    const forget = (): void => {
      if (this.#backends.get(ep.key) === b) this.#backends.delete(ep.key);
    };
    b.ready = (async () => {
      let tcp: Deno.Conn;
      try {
        // Nagle off; one made after the deadline is closed, never leaked.
        tcp = await connectUpstream(ep, {
          connect: this.#opts.connect,
          timeoutMs: this.#opts.connectTimeoutMs,
        });
      } catch (e) {
        forget();
        throw e;
      }
      if (this.#closed) {
        forget();
        try {
          tcp.close();
        } catch { /* closed */ }
        throw new UpstreamError("proxy is closing", { requestSent: false });
      }
      const conn = new H2Connection(tcp, { role: "client", onClose: forget });
      b.conn = conn;
      return conn;
    })();
    b.ready.catch(() => {});
    this.#backends.set(ep.key, b);
    return b.ready;
  }

  /**
   * An HTTP/1.x request to a service with scheme h2c: sent as HTTP/2, and the response written
   * back as HTTP/1.1 (chunked, with trailers) or HTTP/1.0 (closed at the end).
   */
  async fromHttp1(r: Http1ToH2): Promise<{ status: number; keepAlive: boolean }> {
    const { req, target } = r;
    const connTokens = headerTokens(req.headers, "connection");
    // RFC 9110 §10.1.1: such a client waits for 100 Continue before it sends its body, and an
    // h2c backend's interim responses are not passed on, so meshd answers it, as Envoy does by
    // default (the request has passed access control by now); the backend is not asked.
    const continued = r.framing.kind !== "none" && req.minor === 1 &&
      getHeader(req.headers, "expect")?.toLowerCase() === "100-continue";
    if (continued) await writeAll(r.client, CONTINUE);
    const out = this.#h2Fields(r, connTokens, continued);
    const clientClose = connTokens.includes("close") ||
      (req.minor === 0 && !connTokens.includes("keep-alive"));
    const { value, ep } = await withRetries((ep) => this.#h1Exchange(r, ep, out, clientClose), {
      pool: this.#opts.pool,
      root: r.root,
      target,
      candidates: r.candidates,
      budget: this.#budgets.of(target.key),
      onBudgetSpent: this.#onBudgetSpent,
      gone: r.gone,
    });
    // The exchange ended with the response: the endpoint's request in flight is over.
    ep.inflight--;
    return value;
  }

  /** The HTTP/2 request fields of an HTTP/1 request: pseudo-fields, then regular ones. */
  #h2Fields(r: Http1ToH2, connTokens: string[], continued: boolean): Fields {
    const { req } = r;
    const incoming: Fields = [];
    for (const [k, v] of req.headers) {
      const l = k.toLowerCase();
      if (H1_ONLY.has(l) || connTokens.includes(l) || (continued && l === "expect")) continue;
      incoming.push([l, v]);
    }
    const regular = requestHeaders(incoming, r.peer, this.#via(`1.${req.minor}`));
    return [
      [":method", req.method],
      [":scheme", "http"],
      [":authority", getHeader(req.headers, "host") ?? r.target.key],
      [":path", req.target],
      ...regular,
    ];
  }

  /** One try of an HTTP/1 request on `ep`: the stream, its body, then the response back. */
  async #h1Exchange(
    r: Http1ToH2,
    ep: EndpointState,
    out: Fields,
    clientClose: boolean,
  ): Promise<{ status: number; keepAlive: boolean }> {
    r.onTry?.(ep);
    const cin = r.cin ?? r.root.metrics.bytesIn;
    const bodyless = r.framing.kind === "none";
    const up = this.#openNow(ep, out, bodyless) ?? await this.#open(ep, out, bodyless);
    let trailers: Fields | null = null;
    // A request body that breaks its own framing ends the exchange with 400.
    let badBody: HttpParseError | undefined;
    const ms = this.#opts.responseTimeoutMs ?? 30_000;
    const body: BodyProgress = { timer: null, writing: false, sent: bodyless };
    const toBackend: Writer = {
      write: async (p) => {
        body.writing = true;
        const n = await up.write(p);
        body.writing = false; // not on a failure: see BodyProgress.writing
        return n;
      },
    };
    const bodyDone = bodyless
      ? Promise.resolve(true)
      : copyBody(r.reader, toBackend, r.framing, true, (n) => {
        cin.inc(n);
        if (body.timer) body.timer.deadline = Date.now() + ms;
      }).then(
        (ok) => {
          body.sent = ok;
          up.end();
          return ok;
        },
        (e) => {
          if (e instanceof HttpParseError) badBody = e;
          up.reset(ERROR.CANCEL);
          return false;
        },
      );
    let h: Fields;
    try {
      h = await this.#responseOf(up, bodyless, (t) => trailers = t, body);
    } catch (e) {
      // A 408: the body's copy waits on a client that sends nothing, and ends with the
      // client connection, which the answer closes. Any other failure may be retried: the
      // copy must be over before another one reads the client.
      if (e instanceof ProxyFailure) throw e;
      await bodyDone;
      if (badBody) throw new ProxyFailure(400, `Bad request: ${badBody.message}`);
      throw e;
    }
    const status = Number(fieldOf(h, ":status"));
    if (status >= 500) this.#opts.pool.failure(ep);
    else this.#opts.pool.success(ep);
    let stalled = false;
    const idle = this.#streamIdle(ep, () => {
      stalled = true;
      up.reset(ERROR.CANCEL);
    });
    let open: boolean;
    try {
      open = await this.#toHttp1(r, up, { status, h, trailers: () => trailers, clientClose }, idle);
    } finally {
      if (idle !== null) this.#deadlines.delete(idle);
    }
    // The deadline passed (and reset the stream): the HTTP/1 client's response is cut.
    if (stalled) {
      throw new StreamIdleTimeout(this.#opts.streamIdleTimeoutMs ?? STREAM_IDLE_MS, status);
    }
    return { status, keepAlive: open && await bodyDone };
  }

  /**
   * Writes an HTTP/2 response to the HTTP/1 client: its head, its body (chunked for HTTP/1.1
   * when it has no length, with the trailers after), and says whether the client connection
   * may stay open: not when the response ends it, nor when the backend reset the stream
   * mid-response.
   */
  async #toHttp1(
    r: Http1ToH2,
    up: H2Stream,
    res: { status: number; h: Fields; trailers: () => Fields | null; clientClose: boolean },
    idle: Deadline | null,
  ): Promise<boolean> {
    const { req } = r;
    const { status } = res;
    const noBody = req.method === "HEAD" || status === 204 || status === 304;
    const length = fieldOf(res.h, "content-length");
    const chunked = !noBody && length === undefined && req.minor === 1;
    const closeAfter = res.clientClose || (!noBody && length === undefined && !chunked);
    let head = `HTTP/1.${req.minor === 0 ? 0 : 1} ${status} ${REASONS[status] ?? ""}\r\n`;
    head += fieldLines(responseHeaders(res.h));
    if (chunked) head += "transfer-encoding: chunked\r\n";
    head += closeAfter ? "connection: close\r\n\r\n" : "\r\n";
    const cout = r.cout ?? r.root.metrics.bytesOut;
    try {
      await writeAll(r.client, encodeLatin1(head));
      const ms = this.#opts.streamIdleTimeoutMs ?? STREAM_IDLE_MS;
      for (;;) {
        // Each wait on the backend is held to --stream-idle-timeout; a write to a client that
        // is slow to take it is not (that is --write-timeout's).
        if (idle !== null) idle.deadline = Date.now() + ms;
        const chunk = await up.read();
        if (idle !== null) idle.deadline = Infinity;
        if (chunk === null) break;
        if (noBody || chunk.length === 0) continue;
        cout.inc(chunk.length);
        await writeAll(r.client, chunked ? chunkOf(chunk) : chunk);
      }
    } catch (e) {
      // A client gone mid-response: cancel the backend stream.
      up.reset(ERROR.CANCEL);
      throw e;
    }
    // The backend reset the stream mid-response: the HTTP/1 client's connection ends.
    if (up.code !== ERROR.NO_ERROR) return false;
    if (chunked) {
      const t = res.trailers();
      await writeAll(r.client, encodeLatin1(`0\r\n${fieldLines(t ? trailerFields(t) : [])}\r\n`));
    }
    return !closeAfter;
  }

  /** The response headers of `up`, or an {@linkcode UpstreamError} (504 after the timeout). */
  #responseOf(
    up: H2Stream,
    bodyless: boolean,
    onTrailers: (t: Fields) => void,
    body?: BodyProgress,
  ): Promise<Fields> {
    return new Promise((resolve, reject) => {
      const cancel = this.#deadline(() => {
        // Before the reset's own close. The backend took all the client sent: its stall.
        reject(body && !body.sent && !body.writing ? this.#bodyStalled() : this.#timedOut());
        up.reset(ERROR.CANCEL);
      }, body);
      let response = true;
      up.onHeaders = (h) => {
        if (!response) return onTrailers(h);
        response = false;
        cancel();
        resolve(h);
      };
      up.onClose = (code) => {
        cancel();
        reject(
          new UpstreamError(`stream closed before a response (${errorName(code)})`, {
            requestSent: !(up.refused && bodyless),
          }),
        );
      };
    });
  }

  #fail(stream: H2Stream, f: ProxyFailure, grpc: boolean): void {
    const level = f.status >= 500 ? "warn" : "debug";
    if (this.#opts.logger.enabled(level)) {
      const said = level === "debug" ? {} : FAIL_LOG.take(`${f.status} ${f.message.slice(0, 200)}`);
      if (said) {
        this.#opts.logger[level]("h2 request failed", {
          status: f.status,
          reason: f.message,
          ...said,
        });
      }
    }
    if (stream.closed) return;
    if (stream.headersSent) {
      stream.reset(ERROR.INTERNAL_ERROR);
      return;
    }
    const extra: Fields = Object.entries(f.extraHeaders).map(([k, v]) => [
      k.toLowerCase(),
      String(v),
    ]);
    if (grpc) {
      // A gRPC client reads the outcome from grpc-status (a trailers-only response).
      stream.sendHeaders([
        [":status", "200"],
        ["content-type", "application/grpc"],
        ["grpc-status", String(GRPC_STATUS[f.status] ?? 2)],
        ["grpc-message", encodeURIComponent(f.message)],
        ["x-meshd-error", f.code],
        ...extra,
      ], true);
    } else {
      stream.sendHeaders([
        [":status", String(f.status)],
        ["content-type", "text/plain; charset=utf-8"],
        ["x-meshd-error", f.code],
        ...extra,
      ], false);
      stream.sendData(new TextEncoder().encode(f.message + "\n"), true);
    }
    // The request's body (if any) is not read: the stream is done.
    if (!stream.remoteEnded && !stream.closed && !stream.pending) stream.reset(ERROR.NO_ERROR);
  }
}

/** The path of a request's fields, without the query. */
function pathOf(fields: Fields): string | undefined {
  const target = fieldOf(fields, ":path");
  const q = target?.indexOf("?") ?? -1;
  return q >= 0 ? target!.slice(0, q) : target;
}

/** Writes the access log line of one HTTP/2 stream, at its end. */
function logStream(
  log: AccessLog,
  x: StreamState,
  fields: Fields,
  peer: string,
  peerPort: number,
  requestId: string | undefined,
): void {
  const durationMs = performance.now() - x.started;
  log.write({
    start: Date.now() - durationMs,
    source: peer,
    sourcePort: peerPort,
    protocol: "http",
    service: x.root.key,
    backend: x.target === x.root ? undefined : x.target.key,
    endpoint: x.ep?.key,
    method: fieldOf(fields, ":method"),
    authority: fieldOf(fields, ":authority") ?? fieldOf(fields, "host"),
    path: pathOf(fields),
    requestId,
    status: x.status,
    reason: x.reason,
    detail: x.detail,
    durationMs,
    bytesIn: x.bytesIn,
    bytesOut: x.bytesOut,
    retries: Math.max(0, x.tries - 1),
  });
}

/** The value of `name` in `fields` (several joined with ", ", cookies with "; "), if any. */
function fieldOf(fields: Fields, name: string): string | undefined {
  let v: string | undefined;
  for (const [k, x] of fields) {
    if (k !== name) continue;
    v = v === undefined ? x : `${v}${name === "cookie" ? "; " : ", "}${x}`;
  }
  return v;
}

/** Sets the first `name` in `fields` to `value`. */
function setField(fields: Fields, name: string, value: string): void {
  for (const f of fields) {
    if (f[0] === name) {
      f[1] = value;
      return;
    }
  }
}

const PSEUDO = new Map([[":method", 1], [":scheme", 2], [":path", 4], [":authority", 8]]);
// RFC 9113 §8.2.2: fields that are specific to one HTTP/1.1 connection make a request malformed.
const CONNECTION_SPECIFIC = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);
const BAD_VALUE = /[\r\n\0]|^[ \t]|[ \t]$/;

/**
 * Why an HTTP/2 request is malformed (RFC 9113 §8.1.1), or `null`: names not lower case or with
 * characters outside token, connection-specific fields, `te` other than `trailers`, CR, LF or
 * NUL or edge whitespace in a value (§8.2.1), unknown, repeated, missing or misplaced
 * pseudo-headers (§8.3), a `:path` that is not origin-form (§8.3.1), and a Host that names
 * another authority than `:authority`.
 */
export function checkH2Request(fields: Fields): string | null {
  let seen = 0; // a bit per pseudo-header
  let regular = false;
  for (const [name, value] of fields) {
    const pseudo = name.charCodeAt(0) === 58; // ":"
    if (pseudo) {
      const bit = PSEUDO.get(name);
      if (bit === undefined) return `unknown pseudo-header "${name.slice(0, 40)}"`;
      if (regular) return `pseudo-header "${name}" after a regular field`;
      if (seen & bit) return `pseudo-header "${name}" appears twice`;
      seen |= bit;
    } else regular = true;
    const bare = pseudo ? name.slice(1) : name;
    if (!isToken(bare) || bare !== bare.toLowerCase()) {
      return `field name "${name.slice(0, 40)}" is not a lower-case token`;
    }
    if (CONNECTION_SPECIFIC.has(name)) return `connection-specific field "${name}"`;
    if (BAD_VALUE.test(value)) {
      return `field "${name}" has a CR, LF, NUL or edge whitespace in its value`;
    }
  }
  const te = fieldOf(fields, "te");
  if (te !== undefined && te.toLowerCase() !== "trailers") {
    return `te "${te.slice(0, 40)}" is not "trailers"`;
  }
  const method = fieldOf(fields, ":method");
  const path = fieldOf(fields, ":path");
  if (method === undefined || !isToken(method)) return "no valid :method";
  if (method === "CONNECT") return "method CONNECT is not supported";
  if (fieldOf(fields, ":scheme") === undefined) return "no :scheme";
  if (path === undefined || !(path.startsWith("/") || (path === "*" && method === "OPTIONS"))) {
    return `:path "${(path ?? "").slice(0, 60)}" is not an absolute path`;
  }
  if (/[^\x21-\x7e]|#/.test(path)) {
    return `:path "${path.slice(0, 60)}" has a character not allowed`;
  }
  const authority = fieldOf(fields, ":authority");
  const host = fieldOf(fields, "host");
  if (authority === undefined && host === undefined) return "no :authority or Host";
  if (
    authority !== undefined && host !== undefined && host.toLowerCase() !== authority.toLowerCase()
  ) {
    return `Host "${host.slice(0, 60)}" differs from :authority`;
  }
  return null;
}

function requestInfo(fields: Fields): RequestInfo {
  const target = fieldOf(fields, ":path") ?? "/";
  const q = target.indexOf("?");
  return {
    method: fieldOf(fields, ":method") ?? "GET",
    path: q >= 0 ? target.slice(0, q) : target,
    header: (name) => fieldOf(fields, name) ?? null,
  };
}

/**
 * The fields forwarded for a request: connection-specific ones dropped, `:authority` from
 * Host if missing, and X-Forwarded-For, Forwarded and Via appended to.
 */
function requestHeaders(fields: Fields, peer: string, via: string | null): Fields {
  const out: Fields = [];
  const regular: Fields = [];
  for (const f of fields) {
    const k = f[0];
    if (H2_DROP.has(k) || k === "x-forwarded-for" || k === "forwarded" || k === "via") continue;
    if (k === "te" && f[1].toLowerCase() !== "trailers") continue;
    (k.startsWith(":") ? out : regular).push(f);
  }
  const host = fieldOf(fields, "host");
  if (host !== undefined && fieldOf(fields, ":authority") === undefined) {
    out.push([":authority", host]);
  }
  // Appended, never trusted: access control uses the connection's address alone.
  // An empty value counts as none, as before the shared helper.
  const fwd = forwardedFor({
    xForwardedFor: fieldOf(fields, "x-forwarded-for") || null,
    forwarded: fieldOf(fields, "forwarded") || null,
  }, peer);
  regular.push(["x-forwarded-for", fwd.xForwardedFor], ["forwarded", fwd.forwarded]);
  // RFC 9110 §7.6.3: a proxy appends itself to Via; meshd also finds loops by it.
  const had = fieldOf(fields, "via");
  if (via !== null) regular.push(["via", had ? `${had}, ${via}` : via]);
  else if (had !== undefined) regular.push(["via", had]);
  for (const f of regular) out.push(f);
  return out;
}

function responseHeaders(fields: Fields): Fields {
  const out: Fields = [];
  for (const f of fields) if (!H2_DROP.has(f[0])) out.push(f);
  return out;
}

/**
 * The trailer fields passed to an HTTP/1.1 client: as {@linkcode responseHeaders}, and never
 * Content-Length (RFC 9110 §6.5.1: framing fields are not for trailers; a client that merges
 * trailers into the head would read it, and meshd's HTTP/1 side refuses it from a backend).
 */
function trailerFields(fields: Fields): Fields {
  return responseHeaders(fields).filter((f) => f[0] !== "content-length");
}

/** Header lines for an HTTP/1.1 head or trailer section (pseudo-headers left out). */
function fieldLines(fields: Fields): string {
  let s = "";
  for (const [k, v] of fields) if (!k.startsWith(":")) s += `${k}: ${v}\r\n`;
  return s;
}
