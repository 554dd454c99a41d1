import type { Logger } from "../observability/mod.ts";
import type { RoundRobin } from "./balancer.ts";
import type { Route } from "./route_table.ts";

/** Opens a connection to a backend; the seam tests and later transports plug into. */
export type Connect = (address: string, port: number) => Promise<Deno.TcpConn>;

/** Options for {@linkcode TcpListener}. */
export interface TcpListenerOptions {
  hostname: string;
  port: number;
  /** The route in force for this port, read at each accept so a reload applies at once. */
  route: () => Route | undefined;
  balancer: RoundRobin;
  logger: Logger;
  connect?: Connect;
  /** Give up on a backend that has not accepted within this time. Default 5000 ms. */
  connectTimeoutMs?: number;
}

const BUFFER_SIZE = 64 * 1024;

/**
 * One TCP listener for one service port: each accepted connection goes to the next ready
 * endpoint, and bytes are copied both ways with half-close, and nothing else.
 */
export class TcpListener {
  readonly #opts: TcpListenerOptions;
  readonly #listener: Deno.TcpListener;
  readonly #conns = new Set<Deno.Conn>();
  #done: Promise<void>;

  /** Binds the port; throws if it cannot. */
  constructor(options: TcpListenerOptions) {
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

  /** Stops accepting. Open connections go on until they end, unless `abort` is set. */
  async close(abort = false): Promise<void> {
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    await this.#done;
    if (abort) { for (const c of this.#conns) closeQuietly(c); }
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch (e) {
        if (e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted) return;
        this.#opts.logger.warn("tcp accept failed", { port: this.#opts.port, error: String(e) });
        continue;
      }
      this.#handle(conn).catch((e) =>
        this.#opts.logger.warn("tcp connection failed", { port: this.#opts.port, error: String(e) })
      );
    }
  }

  async #handle(client: Deno.Conn): Promise<void> {
    const route = this.#opts.route();
    const log = this.#opts.logger;
    const peer = client.remoteAddr as Deno.NetAddr;
    if (!route) {
      log.debug("tcp connection to a port with no service", { port: this.#opts.port });
      closeQuietly(client);
      return;
    }
    const ep = this.#opts.balancer.pick(route.key, route.port.endpoints);
    if (!ep) {
      log.warn("tcp connection refused: no ready endpoint", {
        service: route.key,
        client: peer.hostname,
      });
      closeQuietly(client);
      return;
    }
    this.#conns.add(client);
    let upstream: Deno.Conn | undefined;
    try {
      upstream = await withTimeout(
        (this.#opts.connect ?? defaultConnect)(ep.address, ep.port),
        this.#opts.connectTimeoutMs ?? 5000,
      );
    } catch (e) {
      log.warn("tcp backend unreachable", {
        service: route.key,
        endpoint: `${ep.address}:${ep.port}`,
        error: String(e),
      });
      this.#conns.delete(client);
      closeQuietly(client);
      return;
    }
    this.#conns.add(upstream);
    log.debug("tcp connection", {
      service: route.key,
      client: peer.hostname,
      endpoint: `${ep.address}:${ep.port}`,
    });
    const abort = (): void => {
      closeQuietly(client);
      closeQuietly(upstream);
    };
    await Promise.all([pipe(client, upstream, abort), pipe(upstream, client, abort)]);
    abort();
    this.#conns.delete(client);
    this.#conns.delete(upstream);
  }
}

const defaultConnect: Connect = (hostname, port) =>
  Deno.connect({ hostname, port, transport: "tcp" });

/** Copies `from` to `to` until EOF, then half-closes `to`. On an error, aborts both ways. */
async function pipe(from: Deno.Conn, to: Deno.Conn, abort: () => void): Promise<void> {
  const buf = new Uint8Array(BUFFER_SIZE);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      let off = 0;
      while (off < n) off += await to.write(buf.subarray(off, n));
    }
    await to.closeWrite();
  } catch {
    abort();
  }
}

function closeQuietly(c: Deno.Conn | undefined): void {
  try {
    c?.close();
  } catch { /* already closed */ }
}

function withTimeout(p: Promise<Deno.TcpConn>, ms: number): Promise<Deno.TcpConn> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let timedOut = false;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      timedOut = true;
      reject(new Deno.errors.TimedOut(`connect timed out after ${ms} ms`));
    }, ms);
  });
  // A connection that succeeds after we gave up must not leak.
  p.then((c) => timedOut && closeQuietly(c), () => {});
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
