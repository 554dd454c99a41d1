import http2 from "node:http2";
import { Duplex } from "node:stream";
import type { Logger } from "../observability/mod.ts";
import { MAX_RETRY_ATTEMPTS } from "../topology/mod.ts";
import type { RequestInfo } from "./access.ts";
import type { EndpointPool, EndpointState } from "./endpoint_pool.ts";
import { admit, checkBreaker, ProxyFailure } from "./policy.ts";
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
import { STATUS_CODES } from "node:http";

/** Options for {@linkcode H2Proxy}. */
export interface H2ProxyOptions {
  routes: () => RouteTable;
  pool: EndpointPool;
  logger: Logger;
  /** Give up on a backend that has not accepted within this time (502). Default 5000 ms. */
  connectTimeoutMs?: number;
  /** Give up on a backend that has not sent response headers within this time (504). */
  responseTimeoutMs?: number;
  /** Counts retries refused by the retry budget. */
  drop?: CountDrop;
  /** Retry budgets per service, shared with HTTP/1. */
  budgets?: RetryBudgets;
  /** The endpoints that are not this meshd's own listeners; throws a 508 when none is left. */
  notOwn?: (target: Route, candidates: EndpointState[]) => EndpointState[];
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

const { NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR } = http2.constants;

/** A backend stream that failed before its response headers: another endpoint may be tried. */
class UpstreamError extends Error {
  constructor(message: string, readonly requestSent: boolean, readonly timedOut = false) {
    super(message);
    this.name = "UpstreamError";
  }
}

interface Backend {
  session: http2.ClientHttp2Session;
  ready: Promise<void>;
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

/**
 * HTTP/2 over cleartext (prior knowledge), including gRPC: requests are routed by
 * `:authority` through the same policy as HTTP/1.1 and sent to services with scheme `h2c`
 * over one multiplexed connection per endpoint. Bodies stream both ways with flow control;
 * trailers (gRPC status) are passed back.
 *
 * The HTTP entrypoint hands over a client connection when it sees the HTTP/2 preface, so both
 * versions share one port.
 */
export class H2Proxy {
  readonly #opts: H2ProxyOptions;
  readonly #server: http2.Http2Server;
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  readonly #peers = new WeakMap<http2.ServerHttp2Session, string>();
  readonly #backends = new Map<string, Backend>();
  readonly #budgets: RetryBudgets;
  /** Streams open per client session, and the timer that closes it when none has been. */
  readonly #idle = new WeakMap<
    http2.ServerHttp2Session,
    { open: number; timer: ReturnType<typeof setTimeout> | undefined }
  >();
  #adopting = "";

  constructor(options: H2ProxyOptions) {
    this.#opts = options;
    this.#budgets = options.budgets ?? new RetryBudgets();
    this.#server = http2.createServer({ settings: { enablePush: false } });
    this.#server.on("sessionError", () => {});
    this.#server.on("session", (s: http2.ServerHttp2Session) => {
      this.#peers.set(s, this.#adopting);
      this.#sessions.add(s);
      this.#idle.set(s, { open: 0, timer: this.#idleTimer(s) });
      s.on("close", () => {
        this.#sessions.delete(s);
        clearTimeout(this.#idle.get(s)?.timer);
      });
      s.on("error", () => {});
    });
    this.#server.on(
      "stream",
      (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
        const idle = this.#idle.get(stream.session as http2.ServerHttp2Session);
        if (idle) {
          idle.open++;
          clearTimeout(idle.timer);
          stream.once("close", () => {
            if (--idle.open === 0) {
              idle.timer = this.#idleTimer(stream.session as http2.ServerHttp2Session);
            }
          });
        }
        // A client that resets or vanishes ends its streams with an error: nothing to report.
        stream.on("error", () => {});
        this.#onStream(stream, headers).catch((e) => {
          this.#opts.logger.warn("h2 stream failed", { error: String(e) });
          if (!stream.destroyed) stream.close(NGHTTP2_INTERNAL_ERROR);
        });
      },
    );
  }

  /**
   * Serves an HTTP/2 client on `conn`. `early` holds the bytes already read, starting with the
   * preface; `peer` is the client's address (the only thing access control trusts). Resolves
   * when the connection ends.
   */
  adopt(conn: Deno.TcpConn, early: Uint8Array, peer: string): Promise<void> {
    const socket = connDuplex(conn, early);
    // A client that goes away mid-write is routine: the session sees the close and cleans up.
    socket.on("error", (e: Error) => {
      if (this.#opts.logger.enabled("debug")) {
        this.#opts.logger.debug("h2 client connection failed", { client: peer, error: e.message });
      }
    });
    const ended = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    this.#adopting = peer;
    try {
      this.#server.emit("connection", socket);
    } finally {
      this.#adopting = "";
    }
    return ended;
  }

  /** A timer that closes client session `s` once it has been idle for `clientIdleMs`. */
  #idleTimer(s: http2.ServerHttp2Session | undefined): ReturnType<typeof setTimeout> | undefined {
    if (!s || s.destroyed) return undefined;
    const timer = setTimeout(() => {
      if (s.destroyed) return;
      s.close(); // GOAWAY; no stream is open, so the session ends now
      setTimeout(() => s.destroyed || s.destroy(), 1000).unref();
    }, this.#opts.clientIdleMs ?? 60_000);
    timer.unref(); // never keeps the process alive on its own
    return timer;
  }

  /** Closes every client and backend session. */
  close(): void {
    for (const s of this.#sessions) s.destroy();
    this.#sessions.clear();
    for (const b of this.#backends.values()) b.session.destroy();
    this.#backends.clear();
  }

  /** Closes backend sessions to endpoints that are in no route any more. */
  dropIdle(keep: Set<string>): void {
    for (const [key, b] of this.#backends) {
      if (keep.has(key)) continue;
      this.#backends.delete(key);
      b.session.close(); // lets streams in flight finish
    }
  }

  /** This meshd's `Via` entry for a request received over `protocol` ("2", "1.1"), if named. */
  #via(protocol: string): string | null {
    const name = this.#opts.viaName;
    return name === undefined ? null : `${protocol} ${name}`;
  }

  async #onStream(
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
  ): Promise<void> {
    const peer = this.#peers.get(stream.session as http2.ServerHttp2Session) ?? "";
    const grpc = String(headers["content-type"] ?? "").startsWith("application/grpc");
    let malformed = checkH2Request(headers);
    if (malformed === null) {
      // Access rules match the path meshd forwards: one normal form, or 400.
      try {
        headers[":path"] = normalizeTarget(headers[":path"] as string);
      } catch (e) {
        if (!(e instanceof HttpParseError)) throw e;
        malformed = e.message;
      }
    }
    if (malformed !== null) {
      // RFC 9113 §8.1.1: a malformed request is answered here, never forwarded.
      this.#fail(stream, new ProxyFailure(400, `Bad request: ${malformed}`), grpc);
      return;
    }
    const authority = (headers[":authority"] ?? headers["host"] ?? "") as string;
    const root = lookupHttpRoute(this.#opts.routes(), authority);
    if (!root) {
      this.#fail(stream, new ProxyFailure(404, `No mesh service answers to "${authority}"`), grpc);
      return;
    }
    const m = root.metrics;
    m.requests.inc();
    m.open.inc();
    const started = performance.now();
    let status = 0;
    let networkError = false;
    let passed = false;
    try {
      const viaName = this.#opts.viaName;
      const via = headers["via"];
      if (viaName !== undefined && via !== undefined && viaHas([["via", String(via)]], viaName)) {
        this.#opts.drop?.("loop");
        throw new ProxyFailure(
          508,
          `Forwarding loop: the request to service "${root.key}" came through this meshd ` +
            `already (Via "${viaName}")`,
        );
      }
      passed = checkBreaker(root);
      const admitted = admit(root, peer, requestInfo(headers));
      const target = admitted.target;
      const candidates = this.#opts.notOwn?.(target, admitted.candidates) ??
        admitted.candidates;
      if (target.service.scheme !== "h2c") {
        throw new ProxyFailure(
          502,
          `Service "${target.key}" has scheme ${target.service.scheme}; ` +
            `HTTP/2 clients reach services with scheme h2c only`,
        );
      }
      status = await this.#forward(stream, headers, peer, root, target, candidates);
    } catch (e) {
      if (!(e instanceof ProxyFailure)) throw e;
      status = e.status;
      networkError = e.network;
      this.#fail(stream, e, grpc);
    } finally {
      m.open.dec();
      const ms = performance.now() - started;
      if (status > 0) m.responses[Math.min(5, Math.floor(status / 100))]!.inc();
      m.duration.observe(ms / 1000);
      if (passed && status > 0) root.breaker!.record(status, ms, networkError);
    }
  }

  async #forward(
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    peer: string,
    root: Route,
    target: Route,
    candidates: EndpointState[],
  ): Promise<number> {
    const out = requestHeaders(headers, peer, this.#via("2"));
    return await this.#withEndpoint(
      root,
      target,
      candidates,
      (ep) => this.#exchange(stream, out, ep, root),
      () => stream.closed || stream.destroyed,
    );
  }

  /**
   * Runs `exchange` on an endpoint picked from `candidates`, on another one after a failure
   * while the request has not been sent (the number of tries is the service's retry
   * attempts plus one, at most 11, within the service's retry budget, and none once `gone`
   * says the client left), and turns the last failure into a 502 or 504.
   */
  async #withEndpoint<T>(
    root: Route,
    target: Route,
    candidates: EndpointState[],
    exchange: (ep: EndpointState) => Promise<T>,
    gone: () => boolean,
  ): Promise<T> {
    const pool = this.#opts.pool;
    const attempts = 1 + Math.min(target.service.retryAttempts, MAX_RETRY_ATTEMPTS);
    const budget = this.#budgets.of(target.key);
    budget.request();
    const tried = new Set<EndpointState>();
    for (let attempt = 0;; attempt++) {
      const fresh = candidates.filter((c) => !tried.has(c));
      const ep = pool.pick(fresh.length > 0 ? fresh : candidates);
      if (!ep) throw new ProxyFailure(503, `Service "${target.key}" has no ready endpoint`);
      tried.add(ep);
      ep.inflight++;
      try {
        return await exchange(ep);
      } catch (e) {
        if (!(e instanceof UpstreamError)) throw e;
        pool.failure(ep);
        // A request body is streamed, never kept: only a request not yet sent is retried.
        if (!e.requestSent && attempt + 1 < attempts && !gone()) {
          if (budget.retry()) {
            root.metrics.retries.inc();
            continue;
          }
          this.#opts.drop?.("retry_budget");
        }
        if (e.timedOut) {
          throw new ProxyFailure(
            504,
            `Endpoint ${ep.key} of service "${target.key}" sent no response within ${
              this.#opts.responseTimeoutMs ?? 30_000
            } ms`,
            {},
            true,
          );
        }
        throw new ProxyFailure(
          502,
          `Endpoint ${ep.key} of service "${target.key}" failed: ${e.message}`,
          {},
          true,
        );
      } finally {
        ep.inflight--;
      }
    }
  }

  /**
   * An HTTP/1.x request to a service with scheme h2c: sent as HTTP/2, and the response written
   * back as HTTP/1.1 (chunked, with trailers) or HTTP/1.0 (closed at the end).
   */
  async fromHttp1(
    req: MessageHead,
    framing: BodyFraming,
    reader: BufReader,
    client: Writer,
    peer: string,
    root: Route,
    target: Route,
    candidates: EndpointState[],
    gone: () => boolean = () => false,
  ): Promise<{ status: number; keepAlive: boolean }> {
    const incoming: http2.IncomingHttpHeaders = {};
    const connTokens = headerTokens(req.headers, "connection");
    for (const [k, v] of req.headers) {
      const l = k.toLowerCase();
      if (H1_ONLY.has(l) || connTokens.includes(l)) continue;
      const had = incoming[l];
      incoming[l] = had === undefined ? v : `${had}${l === "cookie" ? "; " : ", "}${v}`;
    }
    const out = requestHeaders(incoming, peer, this.#via(`1.${req.minor}`));
    out[":method"] = req.method;
    out[":path"] = req.target;
    out[":scheme"] = "http";
    out[":authority"] = getHeader(req.headers, "host") ?? target.key;
    const clientClose = connTokens.includes("close") ||
      (req.minor === 0 && !connTokens.includes("keep-alive"));
    return await this.#withEndpoint(root, target, candidates, async (ep) => {
      const backend = this.#backend(ep);
      await backend.ready;
      const m = root.metrics;
      let up: http2.ClientHttp2Stream;
      try {
        up = backend.session.request(out, { endStream: framing.kind === "none" });
      } catch (e) {
        this.#backends.delete(ep.key);
        throw new UpstreamError((e as Error).message, false);
      }
      let trailers: http2.IncomingHttpHeaders | null = null;
      up.on("trailers", (t) => trailers = t);
      // A request body that breaks its own framing ends the exchange with 400.
      let badBody: HttpParseError | undefined;
      const bodyDone = framing.kind === "none"
        ? Promise.resolve(true)
        : copyBody(reader, streamWriter(up), framing, true, (n) => m.bytesIn.inc(n)).then(
          (ok) => {
            up.end();
            return ok;
          },
          (e) => {
            if (e instanceof HttpParseError) badBody = e;
            up.close(NGHTTP2_CANCEL);
            return false;
          },
        );
      let h: http2.IncomingHttpHeaders;
      try {
        h = await this.#responseOf(up);
      } catch (e) {
        await bodyDone;
        if (badBody) throw new ProxyFailure(400, `Bad request: ${badBody.message}`);
        throw e;
      }
      const status = Number(h[":status"]);
      if (status >= 500) this.#opts.pool.failure(ep);
      else this.#opts.pool.success(ep);
      const noBody = req.method === "HEAD" || status === 204 || status === 304;
      const length = h["content-length"];
      const chunked = !noBody && length === undefined && req.minor === 1;
      const closeAfter = clientClose || (!noBody && length === undefined && !chunked);
      let head = `HTTP/1.${req.minor === 0 ? 0 : 1} ${status} ${STATUS_CODES[status] ?? ""}\r\n`;
      head += fieldLines(responseHeaders(h));
      if (chunked) head += "transfer-encoding: chunked\r\n";
      head += closeAfter ? "connection: close\r\n\r\n" : "\r\n";
      // A client gone before the head: cancel the backend stream (in the body, leaving the
      // loop early destroys it).
      await writeAll(client, encodeLatin1(head)).catch((e) => {
        up.close(NGHTTP2_CANCEL);
        throw e;
      });
      for await (const chunk of up as AsyncIterable<Uint8Array>) {
        if (noBody || chunk.length === 0) continue;
        m.bytesOut.inc(chunk.length);
        if (chunked) {
          const framed = new Uint8Array(chunk.length + 16);
          const size = encodeLatin1(`${chunk.length.toString(16)}\r\n`);
          framed.set(size);
          framed.set(chunk, size.length);
          framed.set([13, 10], size.length + chunk.length);
          await writeAll(client, framed.subarray(0, size.length + chunk.length + 2));
        } else {
          await writeAll(client, chunk);
        }
      }
      if (chunked) {
        const t: http2.OutgoingHttpHeaders = trailers ? responseHeaders(trailers) : {};
        await writeAll(client, encodeLatin1(`0\r\n${fieldLines(t)}\r\n`));
      }
      const sent = await bodyDone;
      return { status, keepAlive: !closeAfter && sent };
    }, gone);
  }

  /** The response headers of `up`, or an {@linkcode UpstreamError} (504 after the timeout). */
  #responseOf(up: http2.ClientHttp2Stream): Promise<http2.IncomingHttpHeaders> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        up.close(NGHTTP2_CANCEL);
        reject(new UpstreamError("timed out", true, true));
      }, this.#opts.responseTimeoutMs ?? 30_000);
      up.once("response", (h) => {
        clearTimeout(timer);
        resolve(h);
      });
      up.once("error", (e: Error) => {
        clearTimeout(timer);
        reject(new UpstreamError(e.message, true));
      });
      up.once("close", () => {
        clearTimeout(timer);
        reject(new UpstreamError(`stream closed before a response (code ${up.rstCode})`, true));
      });
    });
  }

  /** One request on one endpoint; resolves with the status once the response has ended. */
  async #exchange(
    stream: http2.ServerHttp2Stream,
    out: http2.OutgoingHttpHeaders,
    ep: EndpointState,
    root: Route,
  ): Promise<number> {
    const backend = this.#backend(ep);
    await backend.ready;
    if (stream.destroyed) return 499; // the client went away while we connected
    const m = root.metrics;
    return await new Promise<number>((resolve, reject) => {
      let up: http2.ClientHttp2Stream;
      try {
        up = backend.session.request(out);
      } catch (e) {
        this.#backends.delete(ep.key);
        reject(new UpstreamError((e as Error).message, false));
        return;
      }
      let status = 0;
      let trailers: http2.IncomingHttpHeaders | null = null;
      let settled = false;
      const settle = (v: number | UpstreamError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (typeof v === "number") resolve(v);
        else reject(v);
      };
      const timeoutMs = this.#opts.responseTimeoutMs ?? 30_000;
      const timer = setTimeout(() => {
        stream.unpipe(up);
        up.close(NGHTTP2_CANCEL);
        settle(new UpstreamError("timed out", true, true));
      }, timeoutMs);

      up.on("response", (h) => {
        clearTimeout(timer);
        status = Number(h[":status"]);
        if (status >= 500) this.#opts.pool.failure(ep);
        else this.#opts.pool.success(ep);
        if (stream.destroyed) return;
        stream.respond(responseHeaders(h), { waitForTrailers: true });
        up.on("data", (chunk: Uint8Array) => m.bytesOut.inc(chunk.length));
        up.pipe(stream);
      });
      up.on("trailers", (t) => {
        trailers = t;
      });
      stream.on("wantTrailers", () => {
        stream.sendTrailers(trailers ? responseHeaders(trailers) : {});
      });
      let clientGone = false;
      stream.on("close", () => {
        // The client reset or the response is done: either way nothing more goes upstream.
        clientGone = status === 0;
        if (!up.closed) up.close(NGHTTP2_CANCEL);
        if (status > 0) settle(status);
      });
      up.on("error", (e: Error) => {
        if (status === 0) settle(new UpstreamError(e.message, true));
        else if (!stream.destroyed) stream.close(NGHTTP2_INTERNAL_ERROR);
      });
      up.on("close", () => {
        if (clientGone) {
          settle(499); // the client cancelled: no fault of the endpoint
        } else if (status === 0) {
          settle(
            new UpstreamError(`stream closed before a response (code ${up.rstCode ?? "?"})`, true),
          );
        } else if (!stream.writableEnded && !stream.destroyed && up.rstCode !== 0) {
          stream.close(up.rstCode ?? NGHTTP2_INTERNAL_ERROR);
        }
      });
      stream.on("data", (chunk: Uint8Array) => m.bytesIn.inc(chunk.length));
      stream.pipe(up);
    });
  }

  /** The session to an endpoint, connecting it if there is none. */
  #backend(ep: EndpointState): Backend {
    const have = this.#backends.get(ep.key);
    if (have && !have.session.closed && !have.session.destroyed) return have;
    const host = ep.address.includes(":") ? `[${ep.address}]` : ep.address;
    const session = http2.connect(`http://${host}:${ep.port}`, {
      settings: { enablePush: false },
    });
    const forget = (): void => {
      if (this.#backends.get(ep.key)?.session === session) this.#backends.delete(ep.key);
    };
    const timeout = this.#opts.connectTimeoutMs ?? 5000;
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        forget();
        session.destroy();
        reject(new UpstreamError(`connect timed out after ${timeout} ms`, false));
      }, timeout);
      session.once("connect", () => {
        clearTimeout(timer);
        resolve();
      });
      session.once("error", (e: Error) => {
        clearTimeout(timer);
        reject(
          new UpstreamError(`cannot connect: ${e.message}`, false),
        );
      });
    });
    ready.catch(() => {});
    session.on("error", forget);
    session.on("close", forget);
    session.on("goaway", forget);
    const b = { session, ready };
    this.#backends.set(ep.key, b);
    return b;
  }

  #fail(stream: http2.ServerHttp2Stream, f: ProxyFailure, grpc: boolean): void {
    const level = f.status >= 500 ? "warn" : "debug";
    if (
      this.#opts.logger.enabled(level) &&
      (level === "debug" || FAIL_LOG.allow(`${f.status} ${f.message.slice(0, 200)}`))
    ) {
      this.#opts.logger[level]("h2 request failed", { status: f.status, reason: f.message });
    }
    if (stream.destroyed || stream.closed) return;
    if (stream.headersSent) {
      stream.close(NGHTTP2_INTERNAL_ERROR);
      return;
    }
    if (grpc) {
      // A gRPC client reads the outcome from grpc-status (a trailers-only response).
      stream.respond({
        ":status": 200,
        "content-type": "application/grpc",
        "grpc-status": String(GRPC_STATUS[f.status] ?? 2),
        "grpc-message": encodeURIComponent(f.message),
        "x-meshd-error": f.code,
        ...f.extraHeaders,
      }, { endStream: true });
      return;
    }
    stream.respond({
      ":status": f.status,
      "content-type": "text/plain; charset=utf-8",
      "x-meshd-error": f.code,
      ...f.extraHeaders,
    });
    stream.end(f.message + "\n");
  }
}

const PSEUDO = new Set([":method", ":scheme", ":path", ":authority"]);
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
 * NUL or edge whitespace in a value (§8.2.1), unknown or missing pseudo-headers, a `:path` that
 * is not origin-form (§8.3.1), and a Host that names another authority than `:authority`.
 */
export function checkH2Request(headers: http2.IncomingHttpHeaders): string | null {
  for (const [name, raw] of Object.entries(headers)) {
    if (raw === undefined) continue;
    const pseudo = name.startsWith(":");
    if (pseudo && !PSEUDO.has(name)) return `unknown pseudo-header "${name}"`;
    const bare = pseudo ? name.slice(1) : name;
    if (!isToken(bare) || bare !== bare.toLowerCase()) {
      return `field name "${name.slice(0, 40)}" is not a lower-case token`;
    }
    if (CONNECTION_SPECIFIC.has(name)) return `connection-specific field "${name}"`;
    for (const v of Array.isArray(raw) ? raw : [raw]) {
      if (BAD_VALUE.test(String(v))) {
        return `field "${name}" has a CR, LF, NUL or edge whitespace in its value`;
      }
    }
    if (pseudo && Array.isArray(raw)) return `pseudo-header "${name}" appears twice`;
  }
  if (headers["te"] !== undefined && String(headers["te"]).toLowerCase() !== "trailers") {
    return `te "${String(headers["te"]).slice(0, 40)}" is not "trailers"`;
  }
  const method = headers[":method"];
  const path = headers[":path"];
  if (typeof method !== "string" || !isToken(method)) return "no valid :method";
  if (method === "CONNECT") return "method CONNECT is not supported";
  if (typeof headers[":scheme"] !== "string") return "no :scheme";
  if (
    typeof path !== "string" || !(path.startsWith("/") || (path === "*" && method === "OPTIONS"))
  ) {
    return `:path "${String(path ?? "").slice(0, 60)}" is not an absolute path`;
  }
  if (/[^\x21-\x7e]|#/.test(path)) {
    return `:path "${path.slice(0, 60)}" has a character not allowed`;
  }
  const authority = headers[":authority"];
  const host = headers["host"];
  if (authority === undefined && host === undefined) return "no :authority or Host";
  if (
    authority !== undefined && host !== undefined &&
    String(host).toLowerCase() !== String(authority).toLowerCase()
  ) {
    return `Host "${String(host).slice(0, 60)}" differs from :authority`;
  }
  return null;
}

function requestInfo(headers: http2.IncomingHttpHeaders): RequestInfo {
  const target = String(headers[":path"] ?? "/");
  const q = target.indexOf("?");
  return {
    method: String(headers[":method"] ?? "GET"),
    path: q >= 0 ? target.slice(0, q) : target,
    header: (name) => {
      const v = headers[name];
      if (v === undefined) return null;
      return Array.isArray(v) ? v.join(", ") : String(v);
    },
  };
}

function requestHeaders(
  h: http2.IncomingHttpHeaders,
  peer: string,
  via: string | null,
): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) {
    if (v === undefined || H2_DROP.has(k)) continue;
    if (k === "te" && String(v).toLowerCase() !== "trailers") continue;
    out[k] = v;
  }
  out[":authority"] ??= h["host"];
  // Appended, never trusted: access control uses the connection's address alone.
  const xff = h["x-forwarded-for"];
  out["x-forwarded-for"] = xff ? `${xff}, ${peer}` : peer;
  const node = peer.includes(":") ? `"[${peer}]"` : peer;
  const fwd = h["forwarded"];
  out["forwarded"] = fwd ? `${fwd}, for=${node}` : `for=${node}`;
  // RFC 9110 §7.6.3: a proxy appends itself to Via; meshd also finds loops by it.
  if (via !== null) out["via"] = h["via"] ? `${h["via"]}, ${via}` : via;
  return out;
}

function responseHeaders(h: http2.IncomingHttpHeaders): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) {
    if (v === undefined || H2_DROP.has(k)) continue;
    out[k] = v;
  }
  return out;
}

/** Header lines for an HTTP/1.1 head or trailer section (pseudo-headers left out). */
function fieldLines(h: http2.OutgoingHttpHeaders): string {
  let s = "";
  for (const [k, v] of Object.entries(h)) {
    if (k.startsWith(":") || v === undefined) continue;
    for (const one of Array.isArray(v) ? v : [v]) s += `${k}: ${one}\r\n`;
  }
  return s;
}

/** A {@linkcode Writer} into an HTTP/2 stream that waits until each chunk is taken. */
function streamWriter(up: http2.ClientHttp2Stream): Writer {
  return {
    write: (p) =>
      new Promise((resolve, reject) => {
        const copy = p.slice();
        up.write(copy, (err) => err ? reject(err) : resolve(copy.length));
      }),
  };
}

/** A Node stream over a Deno connection, starting with bytes already read from it. */
function connDuplex(conn: Deno.TcpConn, early: Uint8Array): Duplex {
  let first: Uint8Array | null = early.length > 0 ? early.slice() : null;
  return new Duplex({
    read() {
      if (first) {
        this.push(first);
        first = null;
        return;
      }
      const buf = new Uint8Array(32 * 1024);
      conn.read(buf).then(
        (n) => this.push(n === null ? null : buf.subarray(0, n)),
        () => this.push(null),
      );
    },
    write(chunk: Uint8Array, _enc, done) {
      writeFully(conn, chunk).then(() => done(), (e) => done(e));
    },
    writev(chunks: { chunk: Uint8Array }[], done) {
      let size = 0;
      for (const c of chunks) size += c.chunk.length;
      const all = new Uint8Array(size);
      let at = 0;
      for (const c of chunks) {
        all.set(c.chunk, at);
        at += c.chunk.length;
      }
      writeFully(conn, all).then(() => done(), (e) => done(e));
    },
    final(done) {
      conn.closeWrite().then(() => done(), () => done());
    },
    destroy(err, done) {
      try {
        conn.close();
      } catch { /* closed */ }
      done(err);
    },
  });
}

async function writeFully(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let rest = data;
  while (rest.length > 0) rest = rest.subarray(await conn.write(rest));
}
