import { isLocalSocketError, UpstreamError } from "./upstream_error.ts";

/** Opens a connection to a backend; the seam tests and later transports plug into. */
/**
 * Opens a TCP connection. `signal` aborts it: a connect cut at its deadline must give back its
 * socket then, not hold it while the kernel sends the SYN again (about 2 minutes to an address
 * that never answers).
 */
export type Connect = (
  address: string,
  port: number,
  signal?: AbortSignal,
) => Promise<Deno.TcpConn>;

/** Options for {@linkcode connectUpstream}. */
export interface ConnectUpstreamOptions {
  /** Default: `Deno.connect` over TCP. */
  connect?: Connect;
  /** Give up after this long. Default 5000 ms. */
  timeoutMs?: number;
  /**
   * For a TLS backend: the name its certificate must carry and extra CA certificates. The
   * handshake shares the connect's deadline.
   */
  tls?: { hostname: string; caCerts?: string[] };
}

/** `Deno.connect` over TCP. */
export function defaultConnect(
  hostname: string,
  port: number,
  signal?: AbortSignal,
): Promise<Deno.TcpConn> {
  return Deno.connect({ hostname, port, transport: "tcp", signal });
}

/**
 * Connects to `address:port` within a deadline, with Nagle's algorithm off (the proxy sends
 * each segment as it reads it; with Nagle on, the last short segment of a burst waits for a
 * delayed ACK, up to 40 ms), and for a TLS backend completes the handshake within the same
 * deadline. Every failure, timeout included, is an {@linkcode UpstreamError} with nothing
 * sent; a connection that succeeds after the deadline is closed, never leaked.
 *
 * @example
 * ```ts
 * const conn = await connectUpstream({ address: "127.0.0.1", port: 8080 }, { timeoutMs: 2000 });
 * ```
 */
export async function connectUpstream(
  to: { address: string; port: number },
  options: ConnectUpstreamOptions = {},
): Promise<Deno.TcpConn | Deno.TlsConn> {
  const timeout = options.timeoutMs ?? 5000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let expired = false;
  // At the deadline the connect is aborted, which closes its socket at once.
  const abort = new AbortController();
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      expired = true;
      reject(new Error(`connect timed out after ${timeout} ms`));
      abort.abort();
    }, timeout);
  });
  const connecting = (options.connect ?? defaultConnect)(to.address, to.port, abort.signal);
  let conn: Deno.TcpConn | Deno.TlsConn | undefined;
  try {
    const tcp = await Promise.race([connecting, deadline]);
    conn = tcp;
    try {
      tcp.setNoDelay(true);
    } catch { /* closed already: the first read or write sees it */ }
    if (options.tls) {
      // The endpoint is an address; its certificate is checked against the service's name.
      const tls = await Deno.startTls(tcp, {
        hostname: options.tls.hostname,
        caCerts: options.tls.caCerts,
      });
      conn = tls;
      await Promise.race([tls.handshake(), deadline]);
    }
    return conn;
  } catch (e) {
    if (conn) closeQuietly(conn);
    // A connection made after the deadline must not leak.
    else if (expired) connecting.then(closeQuietly, () => {});
    const what = conn ? "TLS handshake failed" : "cannot connect";
    throw new UpstreamError(`${what}: ${(e as Error).message}`, {
      requestSent: false,
      local: !conn && isLocalSocketError(e),
      cause: e,
    });
  } finally {
    clearTimeout(timer);
  }
}

function closeQuietly(c: Deno.Conn): void {
  try {
    c.close();
  } catch { /* already closed */ }
}
