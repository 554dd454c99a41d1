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
  decodeLatin1,
  encodeLatin1,
  encodeLatin1Into,
  getHeader,
  H2_PREFACE_HEAD,
  headerTokens,
  HeadTooLargeError,
  HttpParseError,
  type MessageHead,
  parseRequestHead,
  parseResponseHead,
  type Reader,
  type ReadTimer,
  viaHas,
  writeAll,
  type Writer,
} from "./http1.ts";
import { type CheckedRequest, checkRequest } from "./http1_validate.ts";
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
import { HOP_BY_HOP, type PlainResponse, scanResponseHead } from "./scan_response_head.ts";
import { StreamIdleTimeout, UpstreamError } from "./upstream_error.ts";
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
  /**
   * Close an Upgrade tunnel (WebSocket) with no byte either way for this long, as a TCP
   * connection (`--tcp-idle-timeout`). Default 1 h.
   */
  tunnelIdleMs?: number;
  /**
   * Cut a response whose backend sends no byte of its body for this long while the client
   * takes what came (both connections closed, the endpoint charged a failure). 0: no limit.
   * Default 5 min.
   */
  streamIdleTimeoutMs?: number;
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
/** `--stream-idle-timeout`'s default, as Envoy's `stream_idle_timeout`. */
const STREAM_IDLE_MS = 300_000;
/** Responses up to this size, when already read, go out in one write with their head. */
const COALESCE_LIMIT = 64 * 1024;
const SWEEP_MS = 100;
/**
 * The size of the buffers requests build their heads in. Allocating a Uint8Array over 64
 * bytes costs about a microsecond (its memory is outside V8's heap) and the GC's work later,
 * so they are lent and given back instead, as many as requests are in flight.
 */
const SCRATCH = 8 * 1024;
/** Scratch buffers kept for reuse at most; a burst beyond makes more, which the GC takes. */
const MAX_SCRATCH = 256;
/** Draining, how long a client connection may sit idle between requests before it is closed. */
const DRAIN_IDLE_MS = 1000;
/**
 * A 5xx a client can repeat at will (a forged Via, a service with no endpoint): one warning
 * per status and reason per 10 s; `meshd_responses_total` counts each.
 */
const FAIL_LOG = new LogThrottle();

/**
 * By length, whether a field name may be hop-by-hop, X-Forwarded-For or Forwarded: a name of
 * any other length is forwarded as it is, without lower-casing it to look it up.
 */
const SPECIAL_LENGTH: boolean[] = [];
for (const name of [...HOP_BY_HOP, "x-forwarded-for", "forwarded"]) {
  SPECIAL_LENGTH[name.length] = true;
}

const CONTENT_LENGTH = "content-length";

// RFC 9110 §9.2.2: methods a client expects may be repeated.
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]);

/** The framing of a message with no body. */
const NO_BODY: BodyFraming = { kind: "none" };

/** Added to a plain response head that ends its client connection. */
const CONNECTION_CLOSE = encodeLatin1("connection: close\r\n\r\n");

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
  watch: Watch;
  /**
   * Takes it out of the idle pool and closes it, if it is still there: made once per
   * connection, for the read it keeps pending while idle, rather than once per request.
   */
  unpool: () => void;
  /** The `--stream-idle-timeout` deadline of its reads, made at its first streamed body. */
  stall: StallTimer | null;
}

/** A {@linkcode ReadTimer} that arms a {@linkcode Watch} for each read it is told of. */
interface StallTimer extends ReadTimer {
  watch: Watch;
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  403: "Forbidden",
  408: "Request Timeout",
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
/**
 * The deadline and idle time of one connection, read by the sweep. Arming one writes a field:
 * the record joins the sweep's set only if it is not in it already, and the sweep takes out a
 * record with nothing armed. A keep-alive connection's requests mostly start and end between
 * two sweeps, so a request costs no set insertion or removal.
 */
interface Watch {
  conn: Deno.Conn;
  /** When the operation under way (a write, or the wait for a response head) gives up; 0: none. */
  deadline: number;
  /** When a client connection became idle between requests; 0: not idle. */
  idleSince: number;
  /** Set when the sweep closed the connection at its deadline. */
  timedOut: boolean;
  /** In the sweep's set. */
  listed: boolean;
  /** Told when the deadline closed the connection. */
  onTimeout?: () => void;
}

function newWatch(conn: Deno.Conn, onTimeout?: () => void): Watch {
  return { conn, deadline: 0, idleSince: 0, timedOut: false, listed: false, onTimeout };
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
  /**
   * The head's bytes as received, a view of the client reader's buffer that the next read
   * from the client may overwrite: used before then, or not at all.
   */
  raw: Uint8Array;
  /** `req` is the head as received (see {@linkcode CheckedRequest.verbatim}). */
  verbatim: boolean;
  framing: BodyFraming;
  /** The client connection's reader, positioned at the request body. */
  reader: BufReader;
  client: Deno.TcpConn;
  /** What is kept for the client connection while it is served. */
  cc: ClientConn;
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
  /**
   * A buffer of {@linkcode SCRATCH} bytes lent for this exchange: the head sent to the backend
   * is built in it, and once a response came (no try is left to send the head again), the
   * response head and a small body are. Every write from it is awaited before it is given back.
   */
  scratch: Uint8Array | null;
  /** The client's timed writer. */
  cw?: TimedWriter;
  /** The response head of the successful try: parsed, or plain (passed on as it came). */
  response?: MessageHead | PlainResponse;
  /** Resolves when the request body was copied (true) or not (false). */
  bodyDone?: Promise<boolean>;
  /** The request body broke its own framing. */
  badBody?: HttpParseError;
  /** The request body's way to the backend on the last try, if it has a body. */
  body?: BodyToBackend;
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
/** What is kept for one client connection while it is served. */
interface ClientConn {
  conn: Deno.TcpConn;
  reader: BufReader;
  /** The client's address. */
  peer: string;
  /** Its idle time between requests, for the sweep. */
  idle: Watch;
  /** Its timed writer, made at its first response that needs one. */
  writer: TimedWriter | null;
  /** The watch for it leaving, made at the first request that needs one. */
  source: ClientSource | null;
}

/**
 * A {@linkcode Writer} whose writes close the connection after `--write-timeout` without
 * progress. A hot path may also write to the connection itself between `begin()` and `end()`,
 * which arm and disarm that deadline, and save the wrapper's level of async function.
 */
interface TimedWriter extends Writer {
  begin(): Watch;
  end(w: Watch): void;
}

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
  /** What the sweep checks: see {@linkcode Watch}. */
  readonly #watches = new Set<Watch>();
  readonly #sweeper: ReturnType<typeof setInterval>;
  readonly #done: Promise<void>;
  /** The HTTP/2 side, once something needed it. */
  #h2: Promise<H2Proxy> | null = null;
  #h2Loaded: H2Proxy | null = null;
  readonly #drop: CountDrop;
  readonly #budgets: RetryBudgets;
  /** Set by {@linkcode HttpProxy.drain}: every response closes its connection. */
  #draining = false;
  readonly #guard: LoopGuard;
  readonly #onBudgetSpent = (): void => this.#drop("retry_budget");
  /** Scratch buffers not lent now (see {@linkcode Http1Request.scratch}). */
  readonly #scratch: Uint8Array[] = [];
  /** Client read buffers of closed connections, for the next ones (a connection per request). */
  readonly #readBuffers: Uint8Array[] = [];

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
        streamIdleTimeoutMs: options.streamIdleTimeoutMs,
        accessLog: options.accessLog,
        requestId: options.requestId,
      });
      // Its first client came during a drain: it is drained as it comes.
      if (this.#draining) this.#h2Loaded.drain();
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
   * just went idle), so the clients open their next connection to whoever listens then. HTTP/2
   * clients get GOAWAY at once: their streams in flight finish, then their connections end.
   */
  async drain(): Promise<void> {
    this.#draining = true;
    this.#h2Loaded?.drain();
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

  /** Arms `w`'s deadline. */
  #arm(w: Watch, deadline: number): void {
    w.deadline = deadline;
    w.timedOut = false;
    if (!w.listed) {
      w.listed = true;
      this.#watches.add(w);
    }
  }

  /** Marks the client connection of `w` idle from now. */
  #idleFrom(w: Watch): void {
    w.idleSince = Date.now();
    if (!w.listed) {
      w.listed = true;
      this.#watches.add(w);
    }
  }

  #sweep(): void {
    const now = Date.now();
    const idleLimit = this.#draining
      ? Math.min(DRAIN_IDLE_MS, this.#opts.clientIdleMs ?? DRAIN_IDLE_MS)
      : this.#opts.clientIdleMs ?? 60_000;
    for (const w of this.#watches) {
      if (w.deadline !== 0 && w.deadline <= now) {
        w.deadline = 0;
        w.timedOut = true;
        closeQuietly(w.conn);
        w.onTimeout?.();
      } else if (w.idleSince !== 0 && now - w.idleSince >= idleLimit) {
        w.idleSince = 0;
        closeQuietly(w.conn);
      }
      if (w.deadline === 0 && w.idleSince === 0) {
        w.listed = false;
        this.#watches.delete(w);
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
        closeQuietly(conn);
        limiter?.release(source);
      });
    }, { what: "http", logger: this.#opts.logger, drop: this.#drop });
  }

  /** Writes to the client that fail after `--write-timeout` without progress (a client that never reads). */
  #clientWriter(cc: ClientConn): TimedWriter {
    return cc.writer ??= this.#timedWriter(cc.conn, "client");
  }

  /**
   * Writes to `conn` that close it after `--write-timeout` without progress: a peer that never
   * reads (the client, or the backend of a tunnel) must not hold the connection for good.
   */
  #timedWriter(conn: Deno.Conn, peer: "client" | "backend"): TimedWriter {
    const ms = this.#opts.writeTimeoutMs ?? 60_000;
    const onTimeout = (): void => {
      this.#drop("write_timeout");
      if (this.#opts.logger.enabled("debug")) {
        this.#opts.logger.debug(`http ${peer} read nothing; closed`, { timeoutMs: ms });
      }
    };
    // Writes through one writer follow each other, so one deadline record serves them all; a
    // write that overlaps another (none does today) gets a record of its own.
    let spare: Watch | null = newWatch(conn, onTimeout);
    const begin = (): Watch => {
      const w = spare ?? newWatch(conn, onTimeout);
      spare = null;
      this.#arm(w, Date.now() + ms);
      return w;
    };
    const end = (w: Watch): void => {
      w.deadline = 0;
      spare = w;
    };
    return {
      write: async (p) => {
        const w = begin();
        try {
          return await conn.write(p);
        } finally {
          end(w);
        }
      },
      begin,
      end,
    };
  }

  async #serve(client: Deno.TcpConn): Promise<void> {
    // A request head nearly always fits in 4 KiB; the buffer grows for a body. A connection
    // made and closed per request takes one a closed connection gave back, if any: a new one
    // lives outside V8's heap and costs an allocation and the GC's work.
    const reader = new BufReader(client, CLIENT_BUFFER, this.#readBuffers.pop());
    const cc: ClientConn = {
      conn: client,
      reader,
      peer: (client.remoteAddr as Deno.NetAddr).hostname,
      idle: newWatch(client),
      writer: null,
      source: null,
    };
    try {
      await this.#serveRequests(cc);
    } finally {
      cc.idle.idleSince = 0; // the sweep lets go of it
      const buf = reader.release();
      if (buf?.length === CLIENT_BUFFER && this.#readBuffers.length < MAX_SCRATCH) {
        this.#readBuffers.push(buf);
      }
    }
  }

  async #serveRequests(cc: ClientConn): Promise<void> {
    const { conn: client, reader, peer } = cc;
    for (let first = true;; first = false) {
      let req: MessageHead;
      let raw: Uint8Array;
      this.#idleFrom(cc.idle);
      try {
        const bytes = await reader.readHeadBytes(MAX_HEAD);
        if (bytes === null) return;
        raw = bytes;
        const head = decodeLatin1(bytes);
        if (first && head === H2_PREFACE_HEAD) {
          // HTTP/2 with prior knowledge (h2c, gRPC): the rest of the connection is HTTP/2.
          cc.idle.idleSince = 0;
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
          // Not by the message's words: a malformed line may hold any word ("GET /cover").
          const status = e instanceof HeadTooLargeError ? 431 : 400;
          const f = new ProxyFailure(status, `Bad request: ${e.message}`);
          this.#logUnrouted(client, f);
          await this.#fail(client, 1, f).catch(() => {});
        }
        return;
      } finally {
        cc.idle.idleSince = 0;
      }
      let keepAlive: boolean;
      try {
        keepAlive = await this.#handle(req, raw, cc);
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
  async #handle(parsed: MessageHead, raw: Uint8Array, cc: ClientConn): Promise<boolean> {
    const client = cc.conn;
    let checked: CheckedRequest;
    try {
      // Routed, checked and forwarded in one form, so the backend reads what was checked: its
      // one Host is the authority.
      checked = checkRequest(parsed);
    } catch (e) {
      throw this.#logUnrouted(
        client,
        new ProxyFailure(400, `Bad request: ${(e as Error).message}`),
        parsed,
      );
    }
    const { head: req, authority: host } = checked;
    const root = lookupHttpRoute(this.#opts.routes(), host);
    if (!root) {
      const f = new ProxyFailure(404, `No mesh service answers to Host "${host}"`);
      throw this.#logUnrouted(client, f, req, host);
    }
    const m = root.metrics;
    const x: Http1Request = {
      req,
      raw,
      verbatim: checked.verbatim,
      framing: checked.framing,
      scratch: null,
      reader: cc.reader,
      client,
      cc,
      peer: cc.peer,
      root,
      target: root,
      candidates: [],
      started: 0,
      status: 0,
      network: false,
      local: false,
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
      ? addRequestId(x)
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
        x.local = e.local;
      } else if (e instanceof StreamIdleTimeout) x.status = e.status; // the status sent
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
    const { req, root } = x;
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
    if (x.target.service.scheme === "h2c") {
      this.#watch(x, connTokens);
      // The backend speaks HTTP/2 only: translate (an Upgrade cannot cross; it is dropped).
      const run = (h2: H2Proxy) =>
        h2.fromHttp1({
          req,
          framing: x.framing,
          reader: x.reader,
          client: this.#clientWriter(x.cc),
          peer: x.peer,
          root,
          target: x.target,
          candidates: x.candidates,
          gone: () => x.cc.source?.gone ?? false,
          cin: x.cin,
          cout: x.cout,
          onTry: (ep) => {
            x.ep = ep;
            x.tries++;
          },
        });
      return this.#h2Loaded ? run(this.#h2Loaded) : this.#http2().then(run);
    }
    return this.#forward(x, connTokens);
  }

  /**
   * A request with no body has nothing more to read: watch for the client leaving (not on an
   * Upgrade, whose client may send more at once), so no retry is made for nobody. Only where a
   * retry may be made: a read left pending when the connection closes is rejected, and that
   * error costs more than the rest of a short connection's requests. The watch reads from the
   * client, so the request's own bytes (`x.raw`) are used before it.
   */
  #watch(x: Http1Request, connTokens: string[]): void {
    if (
      x.target.service.retryAttempts > 0 && x.framing.kind === "none" &&
      !connTokens.includes("upgrade")
    ) {
      // Made at the first watch: most connections never need one.
      (x.cc.source ??= new ClientSource(x.reader)).watch();
    }
  }

  /**
   * The head sent to the backend. A head that needs no edit but the proxy's own fields
   * (X-Forwarded-For, Forwarded, Via) goes out as its bytes came, with those appended.
   */
  #backendHead(x: Http1Request, connTokens: string[], upgrade: string | null): Uint8Array {
    const { req, raw } = x;
    // Not for a chunked body, whose Transfer-Encoding requestHead writes again, nor an Upgrade.
    const drop = x.verbatim && req.minor === 1 && upgrade === null && x.framing.kind !== "chunked"
      ? dropped(req.headers, connTokens)
      : null;
    if (drop !== null) {
      const suffix = this.#suffixOf(x.peer);
      const out = bufferFor(x, raw.length - 2 + suffix.length);
      const n = drop === NONE_DROPPED
        ? (out.set(raw.subarray(0, raw.length - 2)), raw.length - 2)
        : copyLines(raw, drop, out);
      out.set(suffix, n);
      return out.subarray(0, n + suffix.length);
    }
    const head = requestHead(req, x.framing, connTokens, x.peer, upgrade, this.#opts.viaName);
    const out = bufferFor(x, head.length);
    encodeLatin1Into(head, out, 0);
    return out;
  }

  /** The last client address's fields that end a verbatim head, kept for the next request. */
  #suffix: { peer: string; bytes: Uint8Array } | null = null;

  /** What ends a verbatim HTTP/1.1 head from `peer`: the fields {@linkcode requestHead} adds. */
  #suffixOf(peer: string): Uint8Array {
    if (this.#suffix?.peer === peer) return this.#suffix.bytes;
    const fwd = forwardedFor({ xForwardedFor: null, forwarded: null }, peer);
    const via = this.#opts.viaName;
    const bytes = encodeLatin1(
      `x-forwarded-for: ${fwd.xForwardedFor}\r\nforwarded: ${fwd.forwarded}\r\n` +
        `${via !== undefined ? `via: 1.1 ${via}\r\n` : ""}\r\n`,
    );
    this.#suffix = { peer, bytes };
    return bytes;
  }

  /**
   * Sends the request to an endpoint (retrying as the service allows), then the response back.
   * One async function for both, rather than two: each level costs a promise and a resume.
   */
  async #forward(x: Http1Request, connTokens: string[]): Promise<Outcome> {
    const { req, target } = x;
    const upgrade = connTokens.includes("upgrade") ? getHeader(req.headers, "upgrade") : null;
    x.scratch = this.#scratch.pop() ?? new Uint8Array(SCRATCH);
    try {
      x.head = this.#backendHead(x, connTokens, upgrade);
      this.#watch(x, connTokens);
      const pool = this.#opts.pool;
      const source = x.cc.source;
      x.cw = this.#clientWriter(x.cc);
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
      try {
        if (res.status >= 500) pool.failure(ep);
        else pool.success(ep);
        const clientClose = connTokens.includes("close") ||
          (req.minor === 0 && !connTokens.includes("keep-alive"));
        let outcome: Outcome;
        try {
          outcome = "raw" in res
            ? await this.#respondPlain(x, up, res, clientClose)
            : await this.#respond(x, up, res, clientClose, upgrade);
        } catch (e) {
          throw this.#stalled(up, ep, res.status) ?? e;
        }
        if (up.stall?.watch.timedOut) throw this.#stalled(up, ep, res.status)!;
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
        return outcome;
      } finally {
        ep.inflight--;
      }
    } finally {
      if (this.#scratch.length < MAX_SCRATCH) this.#scratch.push(x.scratch);
      x.scratch = null;
    }
  }

  /**
   * When `--stream-idle-timeout` cut the response from `up`, what the exchange ends with; the
   * endpoint is charged a failure, as Envoy counts a stream idle timeout against its upstream:
   * a backend that stops mid-body is failing, and the client got a broken response.
   */
  #stalled(up: Upstream, ep: EndpointState, status: number): StreamIdleTimeout | null {
    const stall = up.stall;
    if (stall === null || !stall.watch.timedOut) return null;
    stall.watch.timedOut = false; // counted once
    this.#opts.pool.failure(ep);
    return new StreamIdleTimeout(this.#opts.streamIdleTimeoutMs ?? STREAM_IDLE_MS, status);
  }

  /**
   * Passes a plain response (see {@linkcode scanResponseHead}) to the client: its head as it
   * came, with `connection: close` added when the client connection ends after it.
   */
  async #respondPlain(
    x: Http1Request,
    up: Upstream,
    res: PlainResponse,
    clientClose: boolean,
  ): Promise<Outcome> {
    const closeAfter = clientClose || this.#draining;
    const none = res.length === 0 || x.req.method === "HEAD" || res.status === 204 ||
      res.status === 304;
    const framing: BodyFraming = none ? NO_BODY : { kind: "length", length: res.length };
    const raw = res.raw;
    const headLength = closeAfter ? raw.length - 2 + CONNECTION_CLOSE.length : raw.length;
    // The whole small body is already here: one write instead of two.
    const whole = framing.kind === "none" ||
      (res.length <= COALESCE_LIMIT && up.reader.buffered >= res.length);
    const bodyLength = whole && framing.kind === "length" ? res.length : 0;
    const out = bufferFor(x, headLength + bodyLength);
    if (closeAfter) {
      out.set(raw.subarray(0, raw.length - 2));
      out.set(CONNECTION_CLOSE, raw.length - 2);
    } else out.set(raw);
    try {
      if (bodyLength > 0) out.set(up.reader.takeBuffered(bodyLength), headLength);
      const cw = x.cw!;
      const w = cw.begin();
      let n: number;
      try {
        n = await x.client.write(out);
      } finally {
        cw.end(w);
      }
      if (n < out.length) await writeAll(cw, out.subarray(n));
      if (bodyLength > 0) x.cout.inc(bodyLength);
      const complete = whole || await this.#copyResponseBody(x, up, framing, false);
      return await this.#finish(x, up, complete, true, closeAfter, res.status);
    } catch (e) {
      // The client went away or stopped reading mid-response: the backend connection goes
      // too, or it would stay open with the rest of the response unread.
      closeQuietly(up.conn);
      throw e;
    }
  }

  /**
   * Ends an exchange whose response was passed on (`complete` when to its end): pools the
   * backend connection when it can carry another request, and says whether the client's can.
   */
  #finish(
    x: Http1Request,
    up: Upstream,
    complete: boolean,
    reusable: boolean,
    closeAfter: boolean,
    status: number,
  ): Outcome | Promise<Outcome> {
    // Not async: most requests have no body, and then no promise or closure is made here.
    const bodyDone = x.bodyDone;
    if (bodyDone === undefined) {
      return this.#ended(up, complete && reusable, complete && !closeAfter, status);
    }
    // If the request body was not read to its end, the next request cannot be found.
    return settledWithin(bodyDone).then((sent) =>
      this.#ended(
        up,
        complete && reusable && sent === true,
        complete && !closeAfter && sent === true,
        status,
      )
    );
  }

  /** Pools or closes the backend connection, and says whether the client's stays open. */
  #ended(up: Upstream, pool: boolean, keepAlive: boolean, status: number): Outcome {
    if (pool) this.#release(up);
    else closeQuietly(up.conn);
    return { status, keepAlive };
  }

  /** Passes a parsed response to the client, its head rebuilt, or runs its tunnel (101). */
  async #respond(
    x: Http1Request,
    up: Upstream,
    res: MessageHead,
    clientClose: boolean,
    upgrade: string | null,
  ): Promise<Outcome> {
    const { req, target, ep } = x;
    if (res.status === 101) {
      if (upgrade !== null) {
        await this.#tunnel(res, x, up).catch((e) => {
          closeQuietly(up.conn);
          throw e;
        });
        return { status: 101, keepAlive: false };
      }
      // A protocol switch nobody asked for: this connection no longer speaks HTTP/1.1.
      closeQuietly(up.conn);
      throw new ProxyFailure(
        502,
        `Endpoint ${ep!.key} of service "${target.key}" switched protocols unasked`,
      );
    }
    let resFraming: BodyFraming;
    try {
      resFraming = bodyFraming(res, false, req.method);
      // RFC 9112 §6.3: a coding other than chunked last runs to the close. Transfer-Encoding is
      // not passed on (hop by hop), so the client would take the coded bytes as the content:
      // refused, as a coding before chunked is.
      const te = resFraming.kind === "close" ? getHeader(res.headers, "transfer-encoding") : null;
      if (te !== null) throw new HttpParseError(`unsupported Transfer-Encoding "${te}"`);
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
    try {
      const complete = await this.#writeResponse(x, up, outHead, resFraming, dechunk);
      // RFC 9112 §9.3: after an HTTP/1.0 response the connection persists only with
      // keep-alive; the backend closes it otherwise, perhaps under the next request sent on it.
      const reusable = resFraming.kind !== "close" && !resTokens.includes("close") &&
        (res.minor === 1 || resTokens.includes("keep-alive"));
      return await this.#finish(x, up, complete, reusable, closeAfter, res.status);
    } catch (e) {
      closeQuietly(up.conn);
      throw e;
    }
  }

  /** Writes a rebuilt response head and the body; true when the body was copied to its end. */
  async #writeResponse(
    x: Http1Request,
    up: Upstream,
    outHead: string,
    resFraming: BodyFraming,
    dechunk: boolean,
  ): Promise<boolean> {
    const cw = x.cw!;
    if (
      resFraming.kind === "length" && resFraming.length <= COALESCE_LIMIT &&
      up.reader.buffered >= resFraming.length
    ) {
      // The whole small body is already here: one write instead of two.
      const body = up.reader.takeBuffered(resFraming.length);
      const out = bufferFor(x, outHead.length + body.length);
      encodeLatin1Into(outHead, out, 0);
      out.set(body, outHead.length);
      const n = await cw.write(out);
      if (n < out.length) await writeAll(cw, out.subarray(n));
      x.cout.inc(body.length);
      return true;
    }
    const out = bufferFor(x, outHead.length);
    encodeLatin1Into(outHead, out, 0);
    await writeAll(cw, out);
    return await this.#copyResponseBody(x, up, resFraming, dechunk);
  }

  /**
   * Copies a response body from the backend to the client, each read from the backend held to
   * `--stream-idle-timeout` (a write to a client that is slow to take it is not: that is
   * `--write-timeout`'s). Only for a body not already read with its head.
   */
  async #copyResponseBody(
    x: Http1Request,
    up: Upstream,
    framing: BodyFraming,
    dechunk: boolean,
  ): Promise<boolean> {
    if (framing.kind === "none") return true;
    const ms = this.#opts.streamIdleTimeoutMs ?? STREAM_IDLE_MS;
    if (ms <= 0) return await copyBody(up.reader, x.cw!, framing, dechunk, x.cout);
    up.reader.timer = up.stall ??= this.#stallTimer(up.conn, ms);
    try {
      return await copyBody(up.reader, x.cw!, framing, dechunk, x.cout);
    } finally {
      up.reader.timer = null;
      up.stall.watch.deadline = 0;
    }
  }

  /**
   * The read deadline of a backend connection: the sweep closes it `ms` after a read started
   * that has not ended, which ends the copy that waits on it.
   */
  #stallTimer(conn: Conn, ms: number): StallTimer {
    const watch = newWatch(conn, () => {
      this.#drop("stream_idle_timeout");
      if (this.#opts.logger.enabled("debug")) {
        this.#opts.logger.debug("http backend sent nothing of its response; cut", {
          timeoutMs: ms,
        });
      }
    });
    return {
      watch,
      start: () => this.#arm(watch, Date.now() + ms),
      stop: () => {
        watch.deadline = 0;
      },
    };
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
        const body = new BodyToBackend(
          conn,
          up.watch,
          this.#opts.responseTimeoutMs ?? 30_000,
          x.cin,
        );
        x.body = body;
        x.bodyDone = copyBody(x.reader, body, x.framing, false, body).then(
          (sent) => (body.sent = sent),
          (e) => {
            if (e instanceof HttpParseError) {
              x.badBody = e;
              closeQuietly(conn); // ends the wait for a response
            }
            return false;
          },
        );
      }
      // The response head, read here rather than in a function of its own: a level of async
      // function less per request. Its deadline is the connection's, armed per request.
      this.#arm(up.watch, Date.now() + (this.#opts.responseTimeoutMs ?? 30_000));
      try {
        for (;;) {
          let bytes: Uint8Array | null;
          try {
            bytes = await up.reader.readHeadBytes(MAX_HEAD);
          } catch (e) {
            throw this.#responseFailure(e, up, x, ep);
          }
          if (bytes === null) throw this.#responseFailure(null, up, x, ep);
          const res = this.#responseOf(bytes, x, ep);
          if (res.status >= 200 || res.status === 101) {
            x.response = res;
            return up;
          }
          // 1xx: pass 100 Continue and 103 Early Hints through to an HTTP/1.1 client.
          if (x.req.minor === 1) {
            const head = responseHead(res as MessageHead, NO_BODY, false, 1, false);
            await writeAll(x.cw!, encodeLatin1(head));
          }
        }
      } finally {
        up.watch.deadline = 0;
      }
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
    const cw = this.#clientWriter(x.cc);
    const bw = this.#timedWriter(up.conn, "backend");
    await writeAll(cw, encodeLatin1(head + "\r\n"));
    const early = [reader.takeBuffered(Infinity), up.reader.takeBuffered(Infinity)];
    const abort = (): void => {
      closeQuietly(client);
      closeQuietly(up.conn);
    };
    // No byte either way for the idle time: the sweep ends the tunnel, as a TCP connection's.
    const idleMs = this.#opts.tunnelIdleMs ?? 3_600_000;
    const idle = newWatch(client, () => {
      abort();
      if (this.#opts.logger.enabled("debug")) {
        this.#opts.logger.debug("http upgrade idle; closed", { service: root.key, idleMs });
      }
    });
    const active = (): void => this.#arm(idle, Date.now() + idleMs);
    active();
    try {
      await Promise.all([
        // Straight from the client: no read ahead is under way (none is started for an
        // Upgrade, and reading this request's head took the last one), and `early` holds what
        // it got.
        splice(client, up.conn, early[0]!, x.cin, abort, bw, active),
        splice(up.conn, client, early[1]!, x.cout, abort, cw, active),
      ]);
    } finally {
      idle.deadline = 0; // the sweep lets go of it
    }
    abort();
    if (this.#opts.logger.enabled("debug")) {
      this.#opts.logger.debug("http upgrade ended", { service: root.key, method: req.method });
    }
  }

  /**
   * What a response head read from `ep` fails with: a timeout or a lost connection is an
   * {@linkcode UpstreamError} (retried as the service allows), a malformed head a 502. `e` is
   * null when the connection ended before a head.
   */
  #responseFailure(e: unknown, up: Upstream, x: Http1Request, ep: EndpointState): Error {
    const timeoutMs = this.#opts.responseTimeoutMs ?? 30_000;
    if (up.watch.timedOut) {
      // The backend took every byte of the body the client sent, and waits for the rest: the
      // client stalled, not the backend (which is not held to account for it).
      const body = x.body;
      if (body !== undefined && !body.sent && !body.writing) {
        return new ProxyFailure(
          408,
          `Request body from the client made no progress for ${timeoutMs} ms`,
        );
      }
      return new UpstreamError("timed out", { requestSent: true, timeoutMs });
    }
    if (e === null) {
      return new UpstreamError("connection closed before a response", { requestSent: true });
    }
    if (e instanceof HttpParseError) return this.#badResponse(x, ep, e);
    return new UpstreamError((e as Error).message, { requestSent: true, cause: e });
  }

  #badResponse(x: Http1Request, ep: EndpointState, e: Error): ProxyFailure {
    return new ProxyFailure(
      502,
      `Endpoint ${ep.key} of service "${x.target.key}" sent a bad response: ${e.message}`,
    );
  }

  /**
   * A response head's bytes as what {@linkcode HttpProxy.#send} resolves with: most pass as
   * they came (see {@linkcode scanResponseHead}); the rest are parsed, to be rebuilt.
   */
  #responseOf(bytes: Uint8Array, x: Http1Request, ep: EndpointState): MessageHead | PlainResponse {
    const plain = x.req.minor === 1 ? scanResponseHead(bytes) : null;
    if (plain !== null) return plain;
    try {
      return parseResponseHead(decodeLatin1(bytes));
    } catch (e) {
      throw this.#badResponse(x, ep, e as Error);
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
      watch: newWatch(conn),
      stall: null,
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
    if (this.#opts.logger.enabled(level)) {
      const said = level === "debug" ? {} : FAIL_LOG.take(`${f.status} ${f.message.slice(0, 200)}`);
      if (said) {
        this.#opts.logger[level]("http request failed", {
          status: f.status,
          reason: f.message,
          ...said,
        });
      }
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
function addRequestId(x: Http1Request): string {
  const id = getHeader(x.req.headers, "x-request-id");
  if (id !== null) return id;
  const made = crypto.randomUUID();
  x.req.headers.push(["x-request-id", made]);
  x.verbatim = false;
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
      : failed instanceof StreamIdleTimeout
      ? "stream_idle_timeout"
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

/** `length` bytes of the request's scratch buffer, or a new buffer when they do not fit. */
function bufferFor(x: Http1Request, length: number): Uint8Array {
  const scratch = x.scratch;
  return scratch !== null && length <= scratch.length
    ? scratch.subarray(0, length)
    : new Uint8Array(length);
}

/**
 * Which fields a head forwarded as its bytes came must lose: hop-by-hop (RFC 9110 §7.6.1) and
 * those named in Connection. {@linkcode NONE_DROPPED} when none, and `null` when the head has
 * X-Forwarded-For or Forwarded, which only {@linkcode requestHead} edits.
 */
function dropped(headers: MessageHead["headers"], connTokens: string[]): boolean[] | null {
  let drop = NONE_DROPPED;
  for (let i = 0; i < headers.length; i++) {
    const k = headers[i]![0];
    if (connTokens.length === 0 && SPECIAL_LENGTH[k.length] !== true) continue;
    const l = k.toLowerCase();
    // The client's own values are merged with the proxy's by requestHead.
    if (l === "x-forwarded-for" || l === "forwarded") return null;
    if (HOP_BY_HOP.has(l) || (connTokens.length > 0 && connTokens.includes(l))) {
      if (drop === NONE_DROPPED) drop = new Array<boolean>(headers.length).fill(false);
      drop[i] = true;
    }
  }
  return drop;
}

/** {@linkcode dropped} when the head loses no field. */
const NONE_DROPPED: boolean[] = [];

/**
 * Copies a head's request line and its field lines but those `drop` marks (field `i` is line
 * `i + 1`: a checked head has no folded line) into `out`, without the empty line that ends it.
 * Returns the bytes written.
 */
function copyLines(raw: Uint8Array, drop: boolean[], out: Uint8Array): number {
  let n = 0;
  let line = 0;
  // Each line ends in CRLF: the parser refused a bare CR or LF. The last is the empty line.
  for (let start = 0; start < raw.length - 2; line++) {
    let end = start;
    while (raw[end] !== 10) end++;
    end++;
    if (line === 0 || drop[line - 1] !== true) {
      out.set(raw.subarray(start, end), n);
      n += end - start;
    }
    start = end;
  }
  return n;
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
  let lengthSent = false;
  for (const [k, v] of res.headers) {
    if (
      connTokens.length === 0 && SPECIAL_LENGTH[k.length] !== true &&
      k.length !== CONTENT_LENGTH.length
    ) {
      s += `${k}: ${v}\r\n`;
      continue;
    }
    const l = k.toLowerCase();
    if (HOP_BY_HOP.has(l)) continue;
    if (l === CONTENT_LENGTH && framing.kind === "length") {
      // The length meshd framed the body by, once: a list ("5, 5") or repeated field is one
      // length to meshd (RFC 9110 §8.6), and an error to many clients. Kept even when
      // Connection names it: a client given the body without it would read to the close,
      // taking the next response as the rest of this body.
      if (!lengthSent) s += `${k}: ${framing.length}\r\n`;
      lengthSent = true;
      continue;
    }
    if (connTokens.length > 0 && connTokens.includes(l) && l !== CONTENT_LENGTH) continue;
    s += `${k}: ${v}\r\n`;
  }
  if (!dechunk && framing.kind === "chunked") s += "transfer-encoding: chunked\r\n";
  if (close) s += "connection: close\r\n";
  else if (minor === 0) s += "connection: keep-alive\r\n";
  return s + "\r\n";
}

/**
 * Copies `early` and then everything from `from` to `to` (written through `w`), then
 * half-closes `to`; `active` is told of each chunk.
 */
async function splice(
  from: Reader,
  to: Conn,
  early: Uint8Array,
  counter: { inc(n: number): void },
  abort: () => void,
  w: Writer,
  active: () => void,
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
      active();
      await writeAll(w, buf.subarray(0, n));
      counter.inc(n);
    }
    await to.closeWrite();
  } catch {
    abort();
  }
}

/**
 * A request body's way to the backend: counts its bytes, says whether a write to the backend
 * is under way, and while the body is sent, keeps the response deadline `ms` after its last
 * progress (RFC 9110 §15.5.9), so that an upload that keeps coming is not cut short, and one
 * that stops is told apart from a backend that stopped.
 */
class BodyToBackend implements Writer {
  /** A write to the backend is under way (or failed): the copy waits on the backend. */
  writing = false;
  /** The body was copied to its end. */
  sent = false;

  constructor(
    readonly conn: Conn,
    readonly watch: Watch,
    readonly ms: number,
    readonly counter: ByteCounter,
  ) {}

  async write(p: Uint8Array): Promise<number> {
    this.writing = true;
    const n = await this.conn.write(p);
    // Not on a failure: the deadline closing the connection fails the write under way, and the
    // timeout must still see that the copy was waiting on the backend.
    this.writing = false;
    return n;
  }

  /** Counts `n` bytes the backend took. */
  inc(n: number): void {
    this.counter.inc(n);
    // Only while a response head is awaited: 0 once it came (or the deadline passed).
    if (this.watch.deadline !== 0) this.watch.deadline = Date.now() + this.ms;
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
