import type { Logger } from "../observability/mod.ts";
import type { MeshEndpoint } from "../topology/mod.ts";
import type { RoundRobin } from "./balancer.ts";
import {
  bodyFraming,
  BufReader,
  copyBody,
  encodeLatin1,
  type HeaderList,
  headerTokens,
  HttpParseError,
  type MessageHead,
  parseRequestHead,
  parseResponseHead,
  writeAll,
} from "./http1.ts";
import { lookupHttpRoute, type Route, type RouteTable } from "./route_table.ts";
import type { Connect } from "./tcp_proxy.ts";

/** Options for {@linkcode HttpProxy}. */
export interface HttpProxyOptions {
  hostname: string;
  port: number;
  /** The route table in force, read per request so a reload applies at once. */
  routes: () => RouteTable;
  balancer: RoundRobin;
  logger: Logger;
  connect?: Connect;
  /** Give up on a backend that has not accepted within this time (502). Default 5000 ms. */
  connectTimeoutMs?: number;
  /** Give up on a backend that has not sent a response head within this time (504). Default 30 s. */
  responseTimeoutMs?: number;
}

const MAX_HEAD = 64 * 1024;
const MAX_IDLE_PER_ENDPOINT = 64;
const IDLE_MS = 30_000;

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

interface Upstream {
  conn: Deno.TcpConn;
  reader: BufReader;
  idleSince: number;
}

/** A response the proxy makes itself, with a body that says which service and why. */
class ProxyFailure extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = "ProxyFailure";
  }
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  404: "Not Found",
  431: "Request Header Fields Too Large",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

/**
 * The HTTP/1.1 entrypoint: routes each request by its Host header to a mesh service port and
 * forwards it to one of its ready endpoints, streaming bodies both ways and keeping
 * connections alive on both sides.
 */
export class HttpProxy {
  readonly #opts: HttpProxyOptions;
  readonly #listener: Deno.TcpListener;
  readonly #clients = new Set<Deno.Conn>();
  readonly #idle = new Map<string, Upstream[]>();
  readonly #done: Promise<void>;

  /** Binds the port; throws if it cannot. */
  constructor(options: HttpProxyOptions) {
    this.#opts = options;
    this.#listener = Deno.listen({
      hostname: options.hostname,
      port: options.port,
      transport: "tcp",
    });
    this.#done = this.#accept();
  }

  /** The bound address. */
  get addr(): Deno.NetAddr {
    return this.#listener.addr;
  }

  /** Stops accepting and closes every connection. */
  async close(): Promise<void> {
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    await this.#done;
    for (const c of this.#clients) closeQuietly(c);
    for (const list of this.#idle.values()) for (const u of list) closeQuietly(u.conn);
    this.#idle.clear();
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch (e) {
        if (e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted) return;
        this.#opts.logger.warn("http accept failed", { error: String(e) });
        continue;
      }
      conn.setNoDelay(true);
      this.#clients.add(conn);
      this.#serve(conn).finally(() => {
        this.#clients.delete(conn);
        closeQuietly(conn);
      });
    }
  }

  async #serve(client: Deno.Conn): Promise<void> {
    const reader = new BufReader(client);
    const peer = (client.remoteAddr as Deno.NetAddr).hostname;
    for (;;) {
      let req: MessageHead;
      try {
        const head = await reader.readHead(MAX_HEAD);
        if (head === null) return;
        req = parseRequestHead(head);
      } catch (e) {
        if (e instanceof HttpParseError) {
          const status = e.message.includes("over") ? 431 : 400;
          await this.#fail(client, 1, new ProxyFailure(status, `Bad request: ${e.message}`)).catch(
            () => {},
          );
        }
        return;
      }
      let keepAlive: boolean;
      try {
        keepAlive = await this.#forward(req, reader, client, peer);
      } catch (e) {
        if (e instanceof ProxyFailure) await this.#fail(client, req.minor, e).catch(() => {});
        else this.#opts.logger.debug("http connection ended", { client: peer, error: String(e) });
        return;
      }
      if (!keepAlive) return;
    }
  }

  /** Forwards one request and its response. Returns whether the client connection stays open. */
  async #forward(
    req: MessageHead,
    reader: BufReader,
    client: Deno.Conn,
    peer: string,
  ): Promise<boolean> {
    const log = this.#opts.logger;
    let reqFraming;
    try {
      reqFraming = bodyFraming(req, true);
    } catch (e) {
      throw new ProxyFailure(400, `Bad request: ${(e as Error).message}`);
    }
    const host = headerValue(req.headers, "host");
    const route = lookupHttpRoute(this.#opts.routes(), host);
    if (!route) {
      throw new ProxyFailure(404, `No mesh service answers to Host "${host ?? ""}"`);
    }
    const connTokens = headerTokens(req.headers, "connection");
    const clientClose = connTokens.includes("close") ||
      (req.minor === 0 && !connTokens.includes("keep-alive"));

    const head = encodeLatin1(requestHead(req, reqFraming, connTokens, peer));
    // A fresh connection is tried once more when a pooled one turns out to be closed before
    // anything came back; that is safe only while no body byte has been sent.
    let up: Upstream;
    let reused: boolean;
    let res: MessageHead;
    let bodyDone: Promise<boolean> = Promise.resolve(true);
    for (let attempt = 0;; attempt++) {
      const ep = this.#opts.balancer.pick(route.key, route.port.endpoints);
      if (!ep) {
        throw new ProxyFailure(503, `Service "${route.key}" has no ready endpoint`);
      }
      [up, reused] = await this.#upstream(ep, route);
      try {
        await writeAll(up.conn, head);
        bodyDone = copyBody(reader, up.conn, reqFraming).catch(() => false);
        res = await this.#readResponse(up, req, client, route, ep);
        break;
      } catch (e) {
        closeQuietly(up.conn);
        if (e instanceof ProxyFailure) throw e;
        if (reused && attempt === 0 && reqFraming.kind === "none") continue;
        throw new ProxyFailure(
          502,
          `Endpoint ${ep.address}:${ep.port} of service "${route.key}" failed: ${
            (e as Error).message
          }`,
        );
      }
    }

    let resFraming;
    try {
      resFraming = bodyFraming(res, false, req.method);
    } catch (e) {
      closeQuietly(up.conn);
      throw new ProxyFailure(
        502,
        `Service "${route.key}" sent a bad response: ${(e as Error).message}`,
      );
    }
    // An HTTP/1.0 client cannot read chunked framing: send the data and close instead.
    const dechunk = resFraming.kind === "chunked" && req.minor === 0;
    const closeAfter = clientClose || resFraming.kind === "close" || dechunk;
    await writeAll(
      client,
      encodeLatin1(responseHead(res, resFraming, closeAfter, req.minor, dechunk)),
    );
    const complete = await copyBody(up.reader, client, resFraming, dechunk);
    const requestSent = reqFraming.kind === "none" ? true : await settledWithin(bodyDone);
    const upstreamReusable = complete && requestSent === true && resFraming.kind !== "close" &&
      !headerTokens(res.headers, "connection").includes("close");
    if (upstreamReusable) this.#release(up);
    else closeQuietly(up.conn);
    log.debug("http request", {
      client: peer,
      service: route.key,
      method: req.method,
      status: res.status,
    });
    // If the request body was not read to its end, the next request cannot be found.
    return complete && requestSent === true && !closeAfter;
  }

  async #readResponse(
    up: Upstream,
    req: MessageHead,
    client: Deno.Conn,
    route: Route,
    ep: MeshEndpoint,
  ): Promise<MessageHead> {
    const timeout = this.#opts.responseTimeoutMs ?? 30_000;
    for (;;) {
      let head: string | null;
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        head = await Promise.race([
          up.reader.readHead(MAX_HEAD),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new ProxyFailure(504, "")), timeout);
          }),
        ]);
      } catch (e) {
        if (e instanceof ProxyFailure) {
          closeQuietly(up.conn);
          throw new ProxyFailure(
            504,
            `Endpoint ${ep.address}:${ep.port} of service "${route.key}" sent no response within ${timeout} ms`,
          );
        }
        throw e;
      } finally {
        clearTimeout(timer);
      }
      if (head === null) throw new Error("connection closed before a response");
      const res = parseResponseHead(head);
      if (res.status >= 200) return res;
      // 1xx: pass 100 Continue and 103 Early Hints through to an HTTP/1.1 client.
      if (res.status === 101) {
        throw new ProxyFailure(
          502,
          `Service "${route.key}" switched protocols, which is not supported yet`,
        );
      }
      if (req.minor === 1) {
        await writeAll(client, encodeLatin1(responseHead(res, { kind: "none" }, false, 1, false)));
      }
    }
  }

  async #upstream(ep: MeshEndpoint, route: Route): Promise<[Upstream, boolean]> {
    const key = `${ep.address}:${ep.port}`;
    const list = this.#idle.get(key);
    const now = Date.now();
    while (list && list.length > 0) {
      const u = list.pop()!;
      if (now - u.idleSince < IDLE_MS) return [u, true];
      closeQuietly(u.conn);
    }
    const timeout = this.#opts.connectTimeoutMs ?? 5000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const connecting = (this.#opts.connect ?? defaultConnect)(ep.address, ep.port);
    try {
      const conn = await Promise.race([
        connecting,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`connect timed out after ${timeout} ms`)),
            timeout,
          );
        }),
      ]);
      conn.setNoDelay(true);
      return [{ conn, reader: new BufReader(conn), idleSince: 0 }, false];
    } catch (e) {
      connecting.then(closeQuietly, () => {});
      throw new ProxyFailure(
        502,
        `Cannot connect to endpoint ${key} of service "${route.key}": ${(e as Error).message}`,
      );
    } finally {
      clearTimeout(timer);
    }
  }

  #release(u: Upstream): void {
    const addr = u.conn.remoteAddr as Deno.NetAddr;
    const key = `${addr.hostname}:${addr.port}`;
    let list = this.#idle.get(key);
    if (!list) this.#idle.set(key, list = []);
    if (list.length >= MAX_IDLE_PER_ENDPOINT || u.reader.buffered > 0) {
      closeQuietly(u.conn);
      return;
    }
    u.idleSince = Date.now();
    list.push(u);
  }

  async #fail(client: Deno.Conn, minor: number, f: ProxyFailure): Promise<void> {
    this.#opts.logger.warn("http request failed", { status: f.status, reason: f.message });
    const body = encodeLatin1(f.message.replace(/[^\x20-\x7e]/g, "?") + "\n");
    const head = `HTTP/1.${minor === 0 ? 0 : 1} ${f.status} ${REASONS[f.status] ?? "Error"}\r\n` +
      `content-type: text/plain; charset=utf-8\r\ncontent-length: ${body.length}\r\n` +
      `x-meshd-error: 1\r\nconnection: close\r\n\r\n`;
    await writeAll(client, new Uint8Array([...encodeLatin1(head), ...body]));
  }
}

const defaultConnect: Connect = (hostname, port) =>
  Deno.connect({ hostname, port, transport: "tcp" });

function headerValue(headers: HeaderList, name: string): string | null {
  for (const [k, v] of headers) if (k.length === name.length && k.toLowerCase() === name) return v;
  return null;
}

function forwardable(headers: HeaderList, connTokens: string[]): HeaderList {
  return headers.filter(([k]) => {
    const l = k.toLowerCase();
    return !HOP_BY_HOP.has(l) && !connTokens.includes(l);
  });
}

function framingHeader(f: { kind: string }): string {
  return f.kind === "chunked" ? "transfer-encoding: chunked\r\n" : "";
}

function requestHead(
  req: MessageHead,
  framing: { kind: string },
  connTokens: string[],
  peer: string,
): string {
  let s = `${req.method} ${req.target} HTTP/1.1\r\n`;
  let xff: string | null = null;
  for (const [k, v] of forwardable(req.headers, connTokens)) {
    const l = k.toLowerCase();
    // The client's own X-Forwarded-For is kept but never trusted; its address is appended.
    if (l === "x-forwarded-for") {
      xff = xff === null ? v : `${xff}, ${v}`;
      continue;
    }
    s += `${k}: ${v}\r\n`;
  }
  s += `x-forwarded-for: ${xff === null ? peer : `${xff}, ${peer}`}\r\n`;
  s += framingHeader(framing);
  return s + "\r\n";
}

function responseHead(
  res: MessageHead,
  framing: { kind: string },
  close: boolean,
  minor: number,
  dechunk: boolean,
): string {
  let s = `HTTP/1.${minor === 0 ? 0 : 1} ${res.status} ${res.reason}\r\n`;
  for (const [k, v] of forwardable(res.headers, headerTokens(res.headers, "connection"))) {
    s += `${k}: ${v}\r\n`;
  }
  if (!dechunk) s += framingHeader(framing);
  if (close) s += "connection: close\r\n";
  else if (minor === 0) s += "connection: keep-alive\r\n";
  return s + "\r\n";
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
