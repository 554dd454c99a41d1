import type { Logger } from "../observability/mod.ts";
import { acceptLoop } from "./accept_loop.ts";
import { ClientSource } from "./client_source.ts";
import type { ConnectionLimiter } from "./conn_limiter.ts";
import type { RequestInfo } from "./access.ts";
import { type AccessLog, failureReason, logUnrouted } from "./access_log.ts";
import type { EndpointPool, EndpointState } from "./endpoint_pool.ts";
import {
  type BodyFraming,
  bodyFraming,
  BufReader,
  copyBody,
  encodeLatin1,
  encodeLatin1Into,
  getHeader,
  H2_PREFACE_HEAD,
  headerTokens,
  HttpParseError,
  type MessageHead,
  parseRequestHead,
  parseResponseHead,
  type Reader,
  viaHas,
  writeAll,
  type Writer,
} from "./http1.ts";
import { checkRequest } from "./http1_validate.ts";
// HTTP/2 (meshd's own frame layer, src/proxy/h2/; 1.4-4.4 MiB more resident once loaded,
// measured) loads on first use: an h2c client's preface or a service whose scheme is h2c.
// Only the type is imported here.
import type { H2Proxy } from "./h2_proxy.ts";
import { admit, checkBreaker, type LoopGuard, ProxyFailure, withoutOwn } from "./policy.ts";
import { LogThrottle } from "./log_throttle.ts";
import type { CountDrop } from "./proxy_metrics.ts";
import { type Metered, meterEnd, meterStart } from "./request_meter.ts";
import { RetryBudgets } from "./retry_budget.ts";
import { lookupHttpRoute, type Route, type RouteTable } from "./route_table.ts";
import { type Connect, connectUpstream } from "./connect_upstream.ts";
import { forwardedFor } from "./forwarded_for.ts";
import { UpstreamError } from "./upstream_error.ts";
import { ClientGone, withRetries } from "./with_retries.ts";

/** Options for {@linkcode HttpProxy}. */
export interface HttpProxyOptions {
  hostname: string;
  /** Sets SO_REUSEPORT, so a successor meshd can bind the port before this one leaves. */
  reusePort?: boolean;
  port: number;
  /** The route table in force, read per request so a reload applies at once. */
  routes: () => RouteTable;
  pool: EndpointPool;
  logger: Logger;
  connect?: Connect;
  /** Give up on a backend that has not accepted within this time (502). Default 5000 ms. */
  connectTimeoutMs?: number;
  /** Give up on a backend that has not sent a response head within this time (504). Default 30 s. */
  responseTimeoutMs?: number;
  /** Extra CA certificates (PEM) that backends of https services may be signed by. */
  caCerts?: string[];
  /** Close a client connection idle between requests for this long. Default 60 s. */
  clientIdleMs?: number;
  /** Close a client connection a write to which makes no progress for this long. Default 60 s. */
  writeTimeoutMs?: number;
  /** Caps on client connections, shared with the TCP listeners; none when absent. */
  limiter?: ConnectionLimiter;
  /** Counts what the proxy drops to protect itself. */
  drop?: CountDrop;
  /** Whether `address:port` is one of this meshd's own TCP listeners (a forwarding loop). */
  isOwn?: (address: string, port: number) => boolean;
  /** This meshd's name in `Via` (RFC 9110 §7.6.3); a request that has it already is a loop. */
  viaName?: string;
  /** Retry budgets per service, shared with HTTP/2. */
  budgets?: RetryBudgets;
  /**
   * Accept only once this resolves (the first config applied): connections made before wait
   * in the listen backlog. Resolve it before {@linkcode HttpProxy.close}. Default: at once.
   */
  acceptFrom?: Promise<void>;
  /** `--request-id`: add `x-request-id` (a random UUID) to each request that has none. */
  requestId?: boolean;
  /** The log of requests no service answers (404, 400); routed ones use `Route.log`. */
  accessLog?: AccessLog | null;
}

const MAX_HEAD = 64 * 1024;
/** The first size of a client connection's read buffer. */
const CLIENT_BUFFER = 4 * 1024;
const MAX_IDLE_PER_ENDPOINT = 256;
const UPSTREAM_IDLE_MS = 30_000;
/** Responses up to this size, when already read, go out in one write with their head. */
const COALESCE_LIMIT = 64 * 1024;
const SWEEP_MS = 100;
/** Draining, how long a client connection may sit idle between requests before it is closed. */
const DRAIN_IDLE_MS = 1000;
/**
 * A 5xx a client can repeat at will (a forged Via, a service with no endpoint): one warning
 * per status and reason per 10 s; `meshd_responses_total` counts each.
 */
const FAIL_LOG = new LogThrottle();

// RFC 9110 §7.6.1: connection-specific fields a proxy must not forward, plus the ones named
// in Connection. Transfer-Encoding is re-added by the proxy when it frames the body.
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "proxy-authenticate",
  "proxy-authorization",
]);

/**
 * By length, whether a field name may be hop-by-hop, X-Forwarded-For or Forwarded: a name of
 * any other length is forwarded as it is, without lower-casing it to look it up.
 */
const SPECIAL_LENGTH: boolean[] = [];
for (const name of [...HOP_BY_HOP, "x-forwarded-for", "forwarded"]) {
  SPECIAL_LENGTH[name.length] = true;
}

// RFC 9110 §9.2.2: methods a client expects may be repeated.
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]);

/** A connection to a backend: TCP, or TLS for services with scheme https. */
type Conn = Deno.TcpConn | Deno.TlsConn;

interface Upstream {
  conn: Conn;
  reader: BufReader;
  key: string;
  idleSince: number;
  /** In the idle pool, with a read pending that must return nothing while it is there. */
  idle: boolean;
  /** The deadline of the response head awaited on it, reused by each request it carries. */
  waiting: Waiting;
  /**
   * Takes it out of the idle pool and closes it, if it is still there: made once per
   * connection, for the read it keeps pending while idle, rather than once per request.
   */
  unpool: () => void;
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
  508: "Loop Detected",
};

/**
 * A response head being waited for, or a write to a client; the sweeper closes the connection
 * when its deadline passes.
 */
interface Waiting {
  deadline: number;
  conn: Deno.Conn;
  timedOut: boolean;
  /** Told when the deadline closed the connection. */
  onTimeout?: () => void;
}

/** What one request's exchange ended with. */
interface Outcome {
  status: number;
  /** Whether the client connection stays open for the next request. */
  keepAlive: boolean;
}

/**
 * One HTTP/1 request on its way through the proxy: what it is, where it came from and goes,
 * and what its tries have made so far. One object per request instead of arguments passed
 * down each step.
 */
interface Http1Request extends Metered {
  /** The checked head, in the form routed and forwarded. */
  req: MessageHead;
  framing: BodyFraming;
  /** The client connection's reader, positioned at the request body. */
  reader: BufReader;
  client: Deno.TcpConn;
  /** The client's address: the source for access control and X-Forwarded-For. */
  peer: string;
  /** The route the Host names; its metrics count the request. */
  root: Route;
  /** The route whose endpoints serve it (the root, or a split backend); set by admit. */
  target: Route;
  /** The endpoints it may go to; set by admit. */
  candidates: EndpointState[];
  /** The head sent to the backend. */
  head?: Uint8Array;
  /** The client's timed writer. */
  cw?: Writer;
  /** The response head of the successful try. */
  response?: MessageHead;
  /** Resolves when the request body was copied (true) or not (false). */
  bodyDone?: Promise<boolean>;
  /** The request body broke its own framing. */
  badBody?: HttpParseError;
  /** The endpoint of the last try. */
  ep?: EndpointState;
  /** Tries made so far. */
  tries: number;
  /** Counts the request body's bytes: the route's counter, and this request's when logged. */
  cin: ByteCounter;
  /** Counts the response body's bytes, likewise. */
  cout: ByteCounter;
  /** The request and response body bytes, counted when the request is logged. */
  bytesIn: number;
  bytesOut: number;
}

/** What counts bytes copied. */
interface ByteCounter {
  inc(n: number): void;
}

/**
 * The HTTP/1.1 entrypoint: routes each request by its Host header to a mesh service port,
 * applies its traffic policy (rate limit, split, access control), and forwards it to a ready
 * endpoint chosen by the endpoint pool, streaming bodies both ways and keeping connections
 * alive on both sides. `Upgrade` (WebSocket) is passed through.
 */
export class HttpProxy {
  readonly #opts: HttpProxyOptions;
  readonly #listener: Deno.TcpListener;
  readonly #clients = new Set<Deno.Conn>();
  readonly #idle = new Map<string, Upstream[]>();
  readonly #waiting = new Set<Waiting>();
  readonly #idleClients = new Map<Deno.Conn, number>();
  readonly #sweeper: ReturnType<typeof setInterval>;
  readonly #done: Promise<void>;
  /** The HTTP/2 side, once something needed it. */
  #h2: Promise<H2Proxy> | null = null;
  #h2Loaded: H2Proxy | null = null;
  readonly #drop: CountDrop;
  readonly #budgets: RetryBudgets;
  /** The watch on each client connection (see {@linkcode ClientSource}). */
  readonly #sources = new WeakMap<Deno.Conn, ClientSource>();
  /** The timed writer of each client connection, made once rather than per request. */
  readonly #writers = new WeakMap<Deno.Conn, Writer>();
  /** Set by {@linkcode HttpProxy.drain}: every response closes its connection. */
  #draining = false;
  readonly #guard: LoopGuard;
  readonly #onBudgetSpent = (): void => this.#drop("retry_budget");

  /** Binds the port; throws if it cannot. */
  constructor(options: HttpProxyOptions) {
    this.#opts = options;
    this.#drop = options.drop ?? (() => {});
    this.#budgets = options.budgets ?? new RetryBudgets();
    this.#guard = { isOwn: options.isOwn, drop: this.#drop, logger: options.logger };
    this.#listener = Deno.listen({
      hostname: options.hostname,
      port: options.port,
      transport: "tcp",
      ...(options.reusePort ? { reusePort: true } : {}),
    });
    // One timer for every deadline, rather than one per request.
    this.#sweeper = setInterval(() => this.#sweep(), SWEEP_MS);
    this.#sweeper.unref(); // never keeps the process alive on its own
    this.#done = (options.acceptFrom ?? Promise.resolve()).then(() => this.#accept());
  }

  /** The HTTP/2 side, loaded and made the first time it is asked for. */
  #http2(): Promise<H2Proxy> {
    this.#h2 ??= import("./h2_proxy.ts").then(({ H2Proxy }) => {
      const options = this.#opts;
      this.#h2Loaded = new H2Proxy({
        routes: options.routes,
        pool: options.pool,
        logger: options.logger,
        connect: options.connect,
        connectTimeoutMs: options.connectTimeoutMs,
        responseTimeoutMs: options.responseTimeoutMs,
        drop: this.#drop,
        budgets: this.#budgets,
        isOwn: options.isOwn,
        viaName: options.viaName,
        clientIdleMs: options.clientIdleMs,
        accessLog: options.accessLog,
        requestId: options.requestId,
      });
      return this.#h2Loaded;
    });
    return this.#h2;
  }

  /** The bound address. */
  get addr(): Deno.NetAddr {
    return this.#listener.addr;
  }

  /** Client connections open now. */
  get open(): number {
    return this.#clients.size;
  }

  /**
   * Stops accepting and lets the connections open now finish: each response from now on says
   * `connection: close` and ends its connection, and a connection idle between requests for
   * {@linkcode DRAIN_IDLE_MS} is closed (a client may be sending its next request on one that
   * just went idle), so the clients open their next connection to whoever listens then.
   */
  async drain(): Promise<void> {
    this.#draining = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    await this.#done;
  }

  /** Stops accepting and closes every connection. */
  async close(): Promise<void> {
    clearInterval(this.#sweeper);
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    await this.#done;
    for (const c of this.#clients) closeQuietly(c);
    for (const list of this.#idle.values()) for (const u of list) this.#discard(u);
    this.#idle.clear();
    // (One still loading is closed once it is made.)
    void this.#h2?.then((h2) => h2.close(), () => {});
  }

  /** Closes pooled connections to endpoints that are in no route any more. */
  dropIdle(keep: Set<string>): void {
    this.#h2Loaded?.dropIdle(keep);
    for (const [key, list] of this.#idle) {
      if (keep.has(key.split("#")[0]!)) continue;
      for (const u of list) this.#discard(u);
      this.#idle.delete(key);
    }
  }

  #sweep(): void {
    const now = Date.now();
    for (const w of this.#waiting) {
      if (w.deadline <= now) {
        w.timedOut = true;
        this.#waiting.delete(w);
        closeQuietly(w.conn);
        w.onTimeout?.();
      }
    }
    const idleLimit = this.#draining
      ? Math.min(DRAIN_IDLE_MS, this.#opts.clientIdleMs ?? DRAIN_IDLE_MS)
      : this.#opts.clientIdleMs ?? 60_000;
    for (const [conn, since] of this.#idleClients) {
      if (now - since >= idleLimit) {
        this.#idleClients.delete(conn);
        closeQuietly(conn);
      }
    }
    for (const [key, list] of this.#idle) {
      while (list.length > 0 && now - list[0]!.idleSince >= UPSTREAM_IDLE_MS) {
        this.#discard(list.shift()!);
      }
      if (list.length === 0) this.#idle.delete(key);
    }
  }

  #accept(): Promise<void> {
    const limiter = this.#opts.limiter;
    return acceptLoop(this.#listener, (conn) => {
      const source = (conn.remoteAddr as Deno.NetAddr).hostname;
      if (limiter && !limiter.acquire(source)) {
        closeQuietly(conn);
        return;
      }
      try {
        conn.setNoDelay(true);
      } catch { /* closed already: reading sees it */ }
      this.#clients.add(conn);
      this.#serve(conn).finally(() => {
        this.#clients.delete(conn);
        this.#idleClients.delete(conn);
        closeQuietly(conn);
        limiter?.release(source);
      });
    }, { what: "http", logger: this.#opts.logger, drop: this.#drop });
  }

  /** Writes to `client` that fail after `--write-timeout` without progress (a client that never reads). */
  #clientWriter(client: Deno.Conn): Writer {
    let w = this.#writers.get(client);
    if (!w) this.#writers.set(client, w = this.#timedWriter(client, "client"));
    return w;
  }

  /**
   * Writes to `conn` that close it after `--write-timeout` without progress: a peer that never
   * reads (the client, or the backend of a tunnel) must not hold the connection for good.
   */
  #timedWriter(conn: Deno.Conn, peer: "client" | "backend"): Writer {
    const ms = this.#opts.writeTimeoutMs ?? 60_000;
    const onTimeout = (): void => {
      this.#drop("write_timeout");
      if (this.#opts.logger.enabled("debug")) {
        this.#opts.logger.debug(`http ${peer} read nothing; closed`, { timeoutMs: ms });
      }
    };
    // Writes through one writer follow each other, so one deadline record serves them all; a
    // write that overlaps another (none does today) gets a record of its own.
    let spare: Waiting | null = { deadline: 0, conn, timedOut: false, onTimeout };
    return {
      write: async (p) => {
        const w = spare ?? { deadline: 0, conn, timedOut: false, onTimeout };
        spare = null;
        w.deadline = Date.now() + ms;
        w.timedOut = false;
        this.#waiting.add(w);
        try {
          return await conn.write(p);
        } finally {
          this.#waiting.delete(w);
          spare = w;
        }
      },
    };
  }

  async #serve(client: Deno.TcpConn): Promise<void> {
    // A request head nearly always fits in 4 KiB; the buffer grows for a body. Every
    // connection made and closed per request allocates it, so its size is the GC's work.
    const reader = new BufReader(client, CLIENT_BUFFER);
    this.#sources.set(client, new ClientSource(reader));
    const peer = (client.remoteAddr as Deno.NetAddr).hostname;
    for (let first = true;; first = false) {
      let req: MessageHead;
      this.#idleClients.set(client, Date.now());
      try {
        const head = await reader.readHead(MAX_HEAD);
        if (head === null) return;
        if (first && head === H2_PREFACE_HEAD) {
          // HTTP/2 with prior knowledge (h2c, gRPC): the rest of the connection is HTTP/2.
          this.#idleClients.delete(client);
          const rest = reader.takeBuffered(Infinity);
          const early = new Uint8Array(head.length + rest.length);
          early.set(encodeLatin1(head));
          early.set(rest, head.length);
          await (await this.#http2()).adopt(client, early, peer);
          return;
        }
        req = parseRequestHead(head);
      } catch (e) {
        if (e instanceof HttpParseError) {
          const status = e.message.includes("over") ? 431 : 400;
          const f = new ProxyFailure(status, `Bad request: ${e.message}`);
          this.#logUnrouted(client, f);
          await this.#fail(client, 1, f).catch(() => {});
        }
        return;
      } finally {
        this.#idleClients.delete(client);
      }
      let keepAlive: boolean;
      try {
        keepAlive = await this.#handle(req, reader, client, peer);
      } catch (e) {
        if (e instanceof ProxyFailure) await this.#fail(client, req.minor, e).catch(() => {});
        else if (this.#opts.logger.enabled("debug")) {
          this.#opts.logger.debug("http connection ended", { client: peer, error: String(e) });
        }
        return;
      }
      if (!keepAlive) return;
    }
  }

  /** One request: policy, then forwarding. Returns whether the client connection stays open. */
  async #handle(
    req: MessageHead,
    reader: BufReader,
    client: Deno.TcpConn,
    peer: string,
  ): Promise<boolean> {
    let reqFraming: BodyFraming;
    let host: string;
    try {
      // Routed, checked and forwarded in one form, so the backend reads what was checked: its
      // one Host is the authority.
      ({ head: req, framing: reqFraming, authority: host } = checkRequest(req));
    } catch (e) {
      throw this.#logUnrouted(
        client,
        new ProxyFailure(400, `Bad request: ${(e as Error).message}`),
        req,
      );
    }
    const root = lookupHttpRoute(this.#opts.routes(), host);
    if (!root) {
      const f = new ProxyFailure(404, `No mesh service answers to Host "${host}"`);
      throw this.#logUnrouted(client, f, req, host);
    }
    const m = root.metrics;
    const x: Http1Request = {
      req,
      framing: reqFraming,
      reader,
      client,
      peer,
      root,
      target: root,
      candidates: [],
      started: 0,
      status: 0,
      network: false,
      breakerChecked: false,
      tries: 0,
      cin: m.bytesIn,
      cout: m.bytesOut,
      bytesIn: 0,
      bytesOut: 0,
    };
    // Decided when the route was built: a route that does not log allocates nothing here.
    const log = root.log;
    if (log !== null) {
      x.cin = { inc: (n) => (m.bytesIn.inc(n), x.bytesIn += n) };
      x.cout = { inc: (n) => (m.bytesOut.inc(n), x.bytesOut += n) };
    }
    const requestId = this.#opts.requestId
      ? addRequestId(req)
      : log !== null
      ? getHeader(req.headers, "x-request-id")
      : null;
    meterStart(x);
    let failed: unknown = null;
    try {
      x.breakerChecked = checkBreaker(root);
      const result = await this.#route(x);
      x.status = result.status;
      return result.keepAlive;
    } catch (e) {
      failed = e;
      if (e instanceof ProxyFailure) {
        x.status = e.status;
        x.network = e.network;
      }
      throw e;
    } finally {
      meterEnd(x);
      if (log !== null) logRequest(log, x, host, requestId, failed);
    }
  }

  /**
   * The loop check and the admit step; fills in the target and its candidates. Not async:
   * each async level costs a promise and a resume per request. A refusal thrown here is
   * caught by {@linkcode HttpProxy.#handle}, which awaits this in its `try`.
   */
  #route(x: Http1Request): Promise<Outcome> {
    const viaName = this.#opts.viaName;
    const { req, root, client } = x;
    if (viaName !== undefined && viaHas(req.headers, viaName)) {
      this.#drop("loop");
      throw new ProxyFailure(
        508,
        `Forwarding loop: the request to service "${root.key}" came through this meshd ` +
          `already (Via "${viaName}")`,
      );
    }
    const admitted = admit(root, x.peer, requestInfo(req));
    x.target = admitted.target;
    x.candidates = withoutOwn(admitted, this.#guard);
    const connTokens = headerTokens(req.headers, "connection");
    // A request with no body has nothing more to read: watch for the client leaving (not
    // on an Upgrade, whose client may send more at once).
    if (x.framing.kind === "none" && !connTokens.includes("upgrade")) {
      this.#sources.get(client)?.watch();
    }
    if (x.target.service.scheme === "h2c") {
      // The backend speaks HTTP/2 only: translate (an Upgrade cannot cross; it is dropped).
      const run = (h2: H2Proxy) =>
        h2.fromHttp1(
          req,
          x.framing,
          x.reader,
          this.#clientWriter(client),
          x.peer,
          root,
          x.target,
          x.candidates,
          () => this.#sources.get(client)?.gone ?? false,
        );
      return this.#h2Loaded ? run(this.#h2Loaded) : this.#http2().then(run);
    }
    return this.#forward(x, connTokens);
  }

  /** Sends the request to an endpoint (retrying as the service allows), then the response back. */
  async #forward(x: Http1Request, connTokens: string[]): Promise<Outcome> {
    const { req, target, client } = x;
    const pool = this.#opts.pool;
    const upgrade = connTokens.includes("upgrade") ? getHeader(req.headers, "upgrade") : null;
    const clientClose = connTokens.includes("close") ||
      (req.minor === 0 && !connTokens.includes("keep-alive"));
    const head = encodeLatin1(
      requestHead(req, x.framing, connTokens, x.peer, upgrade, this.#opts.viaName),
    );
    const source = this.#sources.get(client);
    const cw = this.#clientWriter(client);
    x.head = head;
    x.cw = cw;
    const { value: up, ep } = await withRetries((ep, n) => this.#send(x, ep, n), {
      pool,
      root: x.root,
      target,
      candidates: x.candidates,
      budget: this.#budgets.of(target.key),
      onBudgetSpent: this.#onBudgetSpent,
      // RFC 9110 §9.2.2: a request with no body whose method is idempotent may be sent again.
      retrySent: x.framing.kind === "none" && IDEMPOTENT.has(req.method),
      gone: source ? source.isGone : undefined,
    });
    const res = x.response!;
    const bodyDone = x.bodyDone;
    let released = false;
    try {
      if (res.status >= 500) pool.failure(ep);
      else pool.success(ep);

      if (res.status === 101 && upgrade !== null) {
        await this.#tunnel(res, x, up);
        return { status: 101, keepAlive: false };
      }
      if (res.status === 101) {
        // A protocol switch nobody asked for: this connection no longer speaks HTTP/1.1.
        closeQuietly(up.conn);
        throw new ProxyFailure(
          502,
          `Endpoint ${ep.key} of service "${target.key}" switched protocols unasked`,
        );
      }
      let resFraming: BodyFraming;
      try {
        resFraming = bodyFraming(res, false, req.method);
      } catch (e) {
        closeQuietly(up.conn);
        throw new ProxyFailure(
          502,
          `Service "${target.key}" sent a bad response: ${(e as Error).message}`,
        );
      }
      // An HTTP/1.0 client cannot read chunked framing: send the data and close instead.
      const dechunk = resFraming.kind === "chunked" && req.minor === 0;
      const closeAfter = clientClose || resFraming.kind === "close" || dechunk || this.#draining;
      const resTokens = headerTokens(res.headers, "connection");
      const outHead = responseHead(res, resFraming, closeAfter, req.minor, dechunk, resTokens);
      let complete: boolean;
      if (
        resFraming.kind === "length" && resFraming.length <= COALESCE_LIMIT &&
        up.reader.buffered >= resFraming.length
      ) {
        // The whole small body is already here: one write instead of two.
        const body = up.reader.takeBuffered(resFraming.length);
        const out = new Uint8Array(outHead.length + body.length);
        encodeLatin1Into(outHead, out, 0);
        out.set(body, outHead.length);
        const n = await cw.write(out);
        if (n < out.length) await writeAll(cw, out.subarray(n));
        x.cout.inc(body.length);
        complete = true;
      } else {
        await writeAll(cw, encodeLatin1(outHead));
        complete = await copyBody(up.reader, cw, resFraming, dechunk, x.cout);
      }
      const requestSent = bodyDone === undefined ? true : await settledWithin(bodyDone);
      const reusable = complete && requestSent === true && resFraming.kind !== "close" &&
        !resTokens.includes("close");
      released = true;
      if (reusable) this.#release(up);
      else closeQuietly(up.conn);
      if (this.#opts.logger.enabled("debug")) {
        this.#opts.logger.debug("http request", {
          client: x.peer,
          service: x.root.key,
          backend: target === x.root ? undefined : target.key,
          endpoint: ep.key,
          method: req.method,
          status: res.status,
        });
      }
      // If the request body was not read to its end, the next request cannot be found.
      return { status: res.status, keepAlive: complete && requestSent === true && !closeAfter };
    } catch (e) {
      // The client went away or stopped reading mid-response: the backend connection goes too,
      // or it would stay open with the rest of the response unread.
      if (!released) closeQuietly(up.conn);
      throw e;
    } finally {
      ep.inflight--;
    }
  }

  /**
   * One try: the request head (and body) to `ep` on a pooled or new connection, then its
   * response head. Resolves with the connection, the response head in `x.response`.
   */
  async #send(x: Http1Request, ep: EndpointState, attempt: number): Promise<Upstream> {
    // A pooled connection is taken without an await; only a new one is waited for.
    let up = this.#pooled(ep, x.target);
    const reused = up !== undefined;
    x.ep = ep;
    x.tries++;
    try {
      up ??= await this.#connect(ep, x.target);
      const head = x.head!;
      // Most heads go in one write: the rest, if any, through writeAll.
      const n = await up.conn.write(head);
      if (n < head.length) await writeAll(up.conn, head.subarray(n));
      if (x.framing.kind !== "none") {
        const conn = up.conn;
        x.bodyDone = copyBody(x.reader, conn, x.framing, false, x.cin)
          .catch((e) => {
            if (e instanceof HttpParseError) {
              x.badBody = e;
              closeQuietly(conn); // ends the wait for a response
            }
            return false;
          });
      }
      x.response = await this.#readResponse(up, x, ep);
      return up;
    } catch (e) {
      if (up) closeQuietly(up.conn);
      // A request body that breaks its own framing: the exchange ends with 400 at once.
      if (x.badBody) throw new ProxyFailure(400, `Bad request: ${x.badBody.message}`);
      // A pooled connection the backend closed while it sat idle is no fault of the backend.
      if (
        e instanceof UpstreamError && reused && !e.timedOut && x.framing.kind === "none" &&
        attempt === 0
      ) {
        throw new UpstreamError(e.message, { requestSent: e.requestSent, stale: true, cause: e });
      }
      throw e;
    }
  }

  /** After 101 Switching Protocols: bytes both ways until either side closes. */
  async #tunnel(res: MessageHead, x: Http1Request, up: Upstream): Promise<void> {
    const { req, reader, client, root } = x;
    let head = `HTTP/1.1 101 ${res.reason}\r\n`;
    for (const [k, v] of res.headers) head += `${k}: ${v}\r\n`;
    // A client or backend that stops reading holds the tunnel no longer than --write-timeout.
    const cw = this.#clientWriter(client);
    const bw = this.#timedWriter(up.conn, "backend");
    await writeAll(cw, encodeLatin1(head + "\r\n"));
    const early = [reader.takeBuffered(Infinity), up.reader.takeBuffered(Infinity)];
    const abort = (): void => {
      closeQuietly(client);
      closeQuietly(up.conn);
    };
    await Promise.all([
      // Straight from the client: no read ahead is under way (none is started for an Upgrade,
      // and reading this request's head took the last one), and `early` holds what it got.
      splice(client, up.conn, early[0]!, x.cin, abort, bw),
      splice(up.conn, client, early[1]!, x.cout, abort, cw),
    ]);
    abort();
    if (this.#opts.logger.enabled("debug")) {
      this.#opts.logger.debug("http upgrade ended", { service: root.key, method: req.method });
    }
  }

  async #readResponse(up: Upstream, x: Http1Request, ep: EndpointState): Promise<MessageHead> {
    const { req, target: route } = x;
    const client = x.cw!;
    const timeoutMs = this.#opts.responseTimeoutMs ?? 30_000;
    const waiting = up.waiting;
    waiting.deadline = Date.now() + timeoutMs;
    waiting.timedOut = false;
    this.#waiting.add(waiting);
    try {
      for (;;) {
        let head: string | null;
        try {
          head = await up.reader.readHead(MAX_HEAD);
        } catch (e) {
          if (waiting.timedOut) {
            throw new UpstreamError("timed out", { requestSent: true, timeoutMs });
          }
          if (e instanceof HttpParseError) {
            throw new ProxyFailure(
              502,
              `Endpoint ${ep.key} of service "${route.key}" sent a bad response: ${e.message}`,
            );
          }
          throw new UpstreamError((e as Error).message, { requestSent: true, cause: e });
        }
        if (head === null) {
          if (waiting.timedOut) {
            throw new UpstreamError("timed out", { requestSent: true, timeoutMs });
          }
          throw new UpstreamError("connection closed before a response", { requestSent: true });
        }
        let res: MessageHead;
        try {
          res = parseResponseHead(head);
        } catch (e) {
          throw new ProxyFailure(
            502,
            `Endpoint ${ep.key} of service "${route.key}" sent a bad response: ${
              (e as Error).message
            }`,
          );
        }
        if (res.status >= 200 || res.status === 101) return res;
        // 1xx: pass 100 Continue and 103 Early Hints through to an HTTP/1.1 client.
        if (req.minor === 1) {
          await writeAll(
            client,
            encodeLatin1(responseHead(res, { kind: "none" }, false, 1, false)),
          );
        }
      }
    } finally {
      this.#waiting.delete(waiting);
    }
  }

  /** A pooled connection to `ep` for `route`, taken out of the pool; none when none is idle. */
  #pooled(ep: EndpointState, route: Route): Upstream | undefined {
    const list = this.#idle.get(upstreamKey(ep, route));
    while (list && list.length > 0) {
      const u = list.pop()!;
      u.idle = false;
      // Bytes that came while it was idle (its idle read removes it when they do) are no
      // response to a request sent now.
      if (u.reader.buffered > 0) closeQuietly(u.conn);
      else return u;
    }
    return undefined;
  }

  /** A new connection to `ep` for `route` (TLS for https services). */
  async #connect(ep: EndpointState, route: Route): Promise<Upstream> {
    const conn = await connectUpstream(ep, {
      connect: this.#opts.connect,
      timeoutMs: this.#opts.connectTimeoutMs,
      tls: route.service.scheme === "https"
        ? { hostname: tlsServerName(route), caCerts: this.#opts.caCerts }
        : undefined,
    });
    const u: Upstream = {
      conn,
      reader: new BufReader(conn),
      key: upstreamKey(ep, route),
      idleSince: 0,
      idle: false,
      waiting: { deadline: 0, conn, timedOut: false },
      unpool: () => {
        if (!u.idle) return; // checked out since: what came is the response to its request
        const list = this.#idle.get(u.key);
        const at = list ? list.indexOf(u) : -1;
        if (at >= 0) list!.splice(at, 1);
        if (list && list.length === 0) this.#idle.delete(u.key);
        this.#discard(u);
      },
    };
    return u;
  }

  /**
   * Pools a backend connection whose exchange is complete. It keeps one read pending while it
   * waits: a backend may send bytes after a complete response (a body on a HEAD or 204
   * answer, a late unsolicited response), and those must never be read as the response to the
   * next request on it, perhaps another client's. Data, an end of stream or an error while it
   * is idle takes it out of the pool and closes it at once.
   */
  #release(u: Upstream): void {
    let list = this.#idle.get(u.key);
    if (!list) this.#idle.set(u.key, list = []);
    if (list.length >= MAX_IDLE_PER_ENDPOINT || u.reader.buffered > 0) {
      closeQuietly(u.conn);
      return;
    }
    u.idleSince = Date.now();
    u.idle = true;
    list.push(u);
    u.reader.readAhead().then(u.unpool, u.unpool);
  }

  /** Closes a pooled connection that leaves the pool unused. */
  #discard(u: Upstream): void {
    u.idle = false;
    closeQuietly(u.conn);
  }

  /** Logs a request no service answers (when the flag turns the log on); returns `f`. */
  #logUnrouted(
    client: Deno.Conn,
    f: ProxyFailure,
    req?: MessageHead,
    authority?: string,
  ): ProxyFailure {
    const log = this.#opts.accessLog;
    if (!log) return f;
    const addr = client.remoteAddr as Deno.NetAddr;
    logUnrouted(log, {
      source: addr.hostname,
      sourcePort: addr.port,
      method: req?.method,
      authority: authority ?? (req && getHeader(req.headers, "host")) ?? undefined,
      target: req?.target,
      failure: f,
    });
    return f;
  }

  async #fail(client: Deno.Conn, minor: number, f: ProxyFailure): Promise<void> {
    const level = f.status >= 500 ? "warn" : "debug";
    if (
      this.#opts.logger.enabled(level) &&
      (level === "debug" || FAIL_LOG.allow(`${f.status} ${f.message.slice(0, 200)}`))
    ) {
      this.#opts.logger[level]("http request failed", { status: f.status, reason: f.message });
    }
    const body = encodeLatin1(f.message.replace(/[^\x20-\x7e]/g, "?") + "\n");
    const head = `HTTP/1.${minor === 0 ? 0 : 1} ${f.status} ${REASONS[f.status] ?? "Error"}\r\n` +
      `content-type: text/plain; charset=utf-8\r\ncontent-length: ${body.length}\r\n` +
      `x-meshd-error: ${f.code}\r\n${
        Object.entries(f.extraHeaders).map(([k, v]) => `${k}: ${v}\r\n`).join("")
      }connection: close\r\n\r\n`;
    const h = encodeLatin1(head);
    const out = new Uint8Array(h.length + body.length);
    out.set(h);
    out.set(body, h.length);
    await writeAll(client, out);
  }
}

/**
 * The name an https backend's certificate must carry: `<service>.<namespace>.svc`, as
 * certificates issued for in-cluster Services usually do.
 */
export function tlsServerName(route: Route): string {
  return `${route.service.name}.${route.service.namespace}.svc`;
}

/** The pool key of connections to `ep` for `route`. */
function upstreamKey(ep: EndpointState, route: Route): string {
  // A TLS connection is verified for one service name: pool it under that name too.
  return route.service.scheme === "https" ? `${ep.key}#${tlsServerName(route)}` : ep.key;
}

/**
 * The request's `x-request-id`; one is added (a random UUID) when it has none. An existing one
 * is never replaced.
 */
function addRequestId(req: MessageHead): string {
  const id = getHeader(req.headers, "x-request-id");
  if (id !== null) return id;
  const made = crypto.randomUUID();
  req.headers.push(["x-request-id", made]);
  return made;
}

/** Writes the access log line of one HTTP/1 request. */
function logRequest(
  log: AccessLog,
  x: Http1Request,
  authority: string,
  requestId: string | null,
  failed: unknown,
): void {
  const durationMs = performance.now() - x.started;
  const { req } = x;
  const q = req.target.indexOf("?");
  log.write({
    start: Date.now() - durationMs,
    source: x.peer,
    sourcePort: (x.client.remoteAddr as Deno.NetAddr).port,
    protocol: "http",
    service: x.root.key,
    backend: x.target === x.root ? undefined : x.target.key,
    endpoint: x.ep?.key,
    method: req.method,
    authority,
    path: q >= 0 ? req.target.slice(0, q) : req.target,
    requestId: requestId ?? undefined,
    status: x.status,
    reason: failed === null
      ? undefined
      : failed instanceof ProxyFailure
      ? failureReason(failed)
      : failed instanceof ClientGone
      ? "client_gone"
      : "client_error",
    detail: failed instanceof ProxyFailure ? failed.message : undefined,
    durationMs,
    bytesIn: x.bytesIn,
    bytesOut: x.bytesOut,
    retries: Math.max(0, x.tries - 1),
  });
}

function requestInfo(req: MessageHead): RequestInfo {
  const q = req.target.indexOf("?");
  let path = q >= 0 ? req.target.slice(0, q) : req.target;
  // An absolute-form target (a client that thinks we are a forward proxy) still has a path.
  if (!path.startsWith("/")) {
    const m = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/[^/]*(\/.*)?$/.exec(path);
    path = m ? (m[1] ?? "/") : path;
  }
  return {
    method: req.method,
    path,
    header: (name) => getHeader(req.headers, name),
  };
}

/** The head sent to a backend for a checked request `req` (exported for the parser fuzzer). */
export function requestHead(
  req: MessageHead,
  framing: BodyFraming,
  connTokens: string[],
  peer: string,
  upgrade: string | null,
  viaName?: string,
): string {
  let s = `${req.method} ${req.target} HTTP/1.1\r\n`;
  let xff: string | null = null;
  let forwarded: string | null = null;
  for (const [k, v] of req.headers) {
    if (connTokens.length === 0 && SPECIAL_LENGTH[k.length] !== true) {
      s += `${k}: ${v}\r\n`;
      continue;
    }
    const l = k.toLowerCase();
    if (HOP_BY_HOP.has(l) || (connTokens.length > 0 && connTokens.includes(l))) continue;
    // The client's own X-Forwarded-For and Forwarded are kept but never trusted: the proxy
    // appends the address it saw, and identifies the source by that address alone.
    if (l === "x-forwarded-for") {
      xff = xff === null ? v : `${xff}, ${v}`;
      continue;
    }
    if (l === "forwarded") {
      forwarded = forwarded === null ? v : `${forwarded}, ${v}`;
      continue;
    }
    s += `${k}: ${v}\r\n`;
  }
  const fwd = forwardedFor({ xForwardedFor: xff, forwarded }, peer);
  s += `x-forwarded-for: ${fwd.xForwardedFor}\r\nforwarded: ${fwd.forwarded}\r\n`;
  // RFC 9110 §7.6.3: a proxy adds itself to Via; meshd also finds loops by it.
  if (viaName !== undefined) s += `via: 1.${req.minor} ${viaName}\r\n`;
  if (upgrade !== null) s += `connection: upgrade\r\nupgrade: ${upgrade}\r\n`;
  if (framing.kind === "chunked") s += "transfer-encoding: chunked\r\n";
  return s + "\r\n";
}

function responseHead(
  res: MessageHead,
  framing: BodyFraming,
  close: boolean,
  minor: number,
  dechunk: boolean,
  connTokens: string[] = headerTokens(res.headers, "connection"),
): string {
  let s = `HTTP/1.${minor === 0 ? 0 : 1} ${res.status} ${res.reason}\r\n`;
  for (const [k, v] of res.headers) {
    if (connTokens.length === 0 && SPECIAL_LENGTH[k.length] !== true) {
      s += `${k}: ${v}\r\n`;
      continue;
    }
    const l = k.toLowerCase();
    if (HOP_BY_HOP.has(l) || (connTokens.length > 0 && connTokens.includes(l))) continue;
    s += `${k}: ${v}\r\n`;
  }
  if (!dechunk && framing.kind === "chunked") s += "transfer-encoding: chunked\r\n";
  if (close) s += "connection: close\r\n";
  else if (minor === 0) s += "connection: keep-alive\r\n";
  return s + "\r\n";
}

/**
 * Copies `early` and then everything from `from` to `to` (written through `w`), then
 * half-closes `to`.
 */
async function splice(
  from: Reader,
  to: Conn,
  early: Uint8Array,
  counter: { inc(n: number): void },
  abort: () => void,
  w: Writer = to,
): Promise<void> {
  try {
    if (early.length > 0) {
      await writeAll(w, early);
      counter.inc(early.length);
    }
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      await writeAll(w, buf.subarray(0, n));
      counter.inc(n);
    }
    await to.closeWrite();
  } catch {
    abort();
  }
}

/**
 * The value of `p` if it settles within a moment, else `undefined`. A request body still being
 * copied after the whole response came back (the backend answered early) means the client
 * connection cannot be reused.
 */
async function settledWithin(p: Promise<boolean>, ms = 50): Promise<boolean | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  const r = await Promise.race([p, late]);
  clearTimeout(timer);
  return r;
}

function closeQuietly(c: Deno.Conn | undefined): void {
  try {
    c?.close();
  } catch { /* already closed */ }
}
