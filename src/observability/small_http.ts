/**
 * A small HTTP/1.1 server for meshd's API, health and metrics ports: one GET or HEAD per
 * connection, answered and closed. It exists because `Deno.serve` cannot be trusted on a
 * port the node network reaches: a failed accept (EMFILE once the process is out of file
 * descriptors) rejects a promise inside `Deno.serve` that nothing can catch, and the whole
 * process exits; and it keeps every connection a client opens and never writes to. Here a
 * failed accept pauses the loop ({@linkcode acceptLoop}), a request head must come whole
 * within a deadline and fit a small buffer, and the connections open at once are capped per
 * port and per client address (over a cap, the oldest is closed).
 *
 * @module
 */
import { acceptLoop } from "../proxy/accept_loop.ts";
import type { Logger } from "./log.ts";

/** Options for {@linkcode serveSmallHttp}. */
export interface SmallHttpOptions {
  hostname: string;
  port: number;
  reusePort?: boolean;
  logger: Logger;
  /** Names the port in log lines. */
  name: string;
  /** Answers one request; a throw is answered 500. */
  handler: (req: Request) => Response | Promise<Response>;
  /** Time for the whole request head to come; default {@linkcode HEAD_TIMEOUT_MS}. */
  headTimeoutMs?: number;
  /** Time for the client to take the whole response; default {@linkcode WRITE_TIMEOUT_MS}. */
  writeTimeoutMs?: number;
  /** Connections open at once on the port; default {@linkcode MAX_CONNECTIONS}. */
  maxConnections?: number;
  /** Of those, from one address; default {@linkcode MAX_PER_SOURCE}. */
  maxPerSource?: number;
}

/** A request head not whole by then is closed: a probe's request comes in one packet. */
export const HEAD_TIMEOUT_MS = 10_000;
/** A client that has not taken its response by then is closed. */
export const WRITE_TIMEOUT_MS = 30_000;
/** The largest request head read: these ports take no cookies, no long URLs. */
export const MAX_HEAD_BYTES = 16 * 1024;
/** Connections open at once on one port: the kubelet and Prometheus need a few. */
export const MAX_CONNECTIONS = 256;
/** Of those, from one client address. */
export const MAX_PER_SOURCE = 32;

/** A running server. */
export interface SmallHttpServer {
  addr: Deno.NetAddr;
  shutdown(): Promise<void>;
}

/** Binds the port (throws if it cannot) and serves it until `shutdown`. */
export function serveSmallHttp(o: SmallHttpOptions): SmallHttpServer {
  const listener = Deno.listen({
    hostname: o.hostname,
    port: o.port,
    transport: "tcp",
    ...(o.reusePort ? { reusePort: true } : {}),
  });
  const open = new Set<Deno.TcpConn>();
  const bySource = new Map<string, Set<Deno.TcpConn>>();
  const max = o.maxConnections ?? MAX_CONNECTIONS;
  const maxPerSource = o.maxPerSource ?? MAX_PER_SOURCE;
  const handle = (conn: Deno.TcpConn): void => {
    const source = conn.remoteAddr.hostname;
    const mine = bySource.get(source) ?? new Set();
    bySource.set(source, mine);
    // Over a cap, the oldest goes, not the newest: a probe's request comes at once and is
    // answered in a moment, so a client that holds connections open cannot keep probes out.
    if (mine.size >= maxPerSource) forget(mine.values().next().value!);
    else if (open.size >= max) forget(open.values().next().value!);
    open.add(conn);
    mine.add(conn);
    void serveConn(conn, o).finally(() => forget(conn));
  };
  const forget = (conn: Deno.TcpConn): void => {
    closeQuietly(conn);
    open.delete(conn);
    const source = conn.remoteAddr.hostname;
    const mine = bySource.get(source);
    mine?.delete(conn);
    if (mine?.size === 0) bySource.delete(source);
  };
  const done = acceptLoop(listener, handle, {
    what: o.name,
    logger: o.logger,
    drop: () => {},
  });
  return {
    addr: listener.addr,
    shutdown: async () => {
      try {
        listener.close();
      } catch { /* already closed */ }
      await done;
      for (const c of open) closeQuietly(c);
    },
  };
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}

/** Reads one request head, answers it, and returns; the caller closes the connection. */
async function serveConn(conn: Deno.TcpConn, o: SmallHttpOptions): Promise<void> {
  const timer = setTimeout(() => closeQuietly(conn), o.headTimeoutMs ?? HEAD_TIMEOUT_MS);
  let head: string | null;
  try {
    head = await readHead(conn);
  } catch {
    return;
  } finally {
    clearTimeout(timer);
  }
  if (head === null) return;
  const res = await answer(head, conn, o);
  const wtimer = setTimeout(() => closeQuietly(conn), o.writeTimeoutMs ?? WRITE_TIMEOUT_MS);
  try {
    await writeAll(conn, res);
    await conn.closeWrite();
  } catch {
    /* the client went away */
  } finally {
    clearTimeout(wtimer);
  }
}

/**
 * The request head (up to the blank line), or null when the connection ended first, or the
 * string "" when it is larger than {@linkcode MAX_HEAD_BYTES}.
 */
async function readHead(conn: Deno.TcpConn): Promise<string | null> {
  const buf = new Uint8Array(MAX_HEAD_BYTES);
  let len = 0;
  for (;;) {
    if (len === buf.length) return "";
    const n = await conn.read(buf.subarray(len));
    if (n === null) return null;
    const from = Math.max(0, len - 3);
    len += n;
    for (let i = from; i + 3 < len; i++) {
      if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) {
        return new TextDecoder().decode(buf.subarray(0, i));
      }
    }
  }
}

/** The bytes of the response to `head`. */
async function answer(
  head: string,
  conn: Deno.TcpConn,
  o: SmallHttpOptions,
): Promise<Uint8Array> {
  if (head === "") return plain(431, "Request Header Fields Too Large", "request head too large");
  const m = /^([A-Z]+) (\/[^ ]*) HTTP\/1\.[01]$/.exec(head.split("\r\n", 1)[0] ?? "");
  if (!m) return plain(400, "Bad Request", "bad request");
  const [, method, target] = m;
  if (method !== "GET" && method !== "HEAD") {
    return plain(405, "Method Not Allowed", `Method ${method} is not allowed`);
  }
  let res: Response;
  try {
    const h = conn.localAddr.hostname;
    const host = `${h.includes(":") ? `[${h}]` : h}:${conn.localAddr.port}`;
    res = await o.handler(new Request(`http://${host}${target}`, { method }));
  } catch (e) {
    o.logger.error(`${o.name} request failed`, { error: String(e) });
    return plain(500, "Internal Server Error", "internal error");
  }
  const body = new Uint8Array(await res.arrayBuffer());
  const reason = res.statusText || REASONS[res.status] || "";
  return encode(res.status, reason, res.headers, body.length, method === "HEAD" ? null : body);
}

function plain(status: number, reason: string, text: string): Uint8Array {
  const body = new TextEncoder().encode(text + "\n");
  const headers = new Headers({ "content-type": "text/plain; charset=utf-8" });
  return encode(status, reason, headers, body.length, body);
}

const REASONS: Record<number, string> = {
  200: "OK",
  404: "Not Found",
  405: "Method Not Allowed",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

function encode(
  status: number,
  reason: string,
  headers: Headers,
  length: number,
  body: Uint8Array | null,
): Uint8Array {
  body ??= new Uint8Array(0);
  let head = `HTTP/1.1 ${status} ${reason}\r\n`;
  for (const [k, v] of headers) head += `${k}: ${v}\r\n`;
  head += `content-length: ${length}\r\n`;
  head += "connection: close\r\n\r\n";
  const h = new TextEncoder().encode(head);
  const out = new Uint8Array(h.length + body.length);
  out.set(h);
  out.set(body, h.length);
  return out;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}
