import type { Logger } from "../observability/mod.ts";
import type { CountDrop } from "./proxy_metrics.ts";

/** Options for {@linkcode acceptLoop}. */
export interface AcceptLoopOptions {
  /** Names the listener in the log line, such as `http` or `tcp`. */
  what: string;
  logger: Logger;
  drop: CountDrop;
  /** Extra fields of the log line, such as the port. */
  fields?: Record<string, unknown>;
  /** At most one log line per this many ms while accepting fails. Default 10 s. */
  logIntervalMs?: number;
  /** The longest pause between two failed accepts. Default 1 s. */
  maxBackoffMs?: number;
}

const FIRST_BACKOFF_MS = 10;

/**
 * Accepts connections from `listener` and hands each to `handle` until the listener is
 * closed. A failed accept (EMFILE when the process is out of file descriptors, ENFILE,
 * ENOBUFS) does not end the loop: it is counted as an `accept_failed` drop and the loop pauses,
 * 10 ms after the first failure in a row and twice as long after each next one, up to
 * `maxBackoffMs`, so that a full descriptor table does not spin the loop. At most one log
 * line per `logIntervalMs` says so, with the number of failures since the last line.
 */
export async function acceptLoop(
  listener: Deno.Listener<Deno.TcpConn, Deno.NetAddr>,
  handle: (conn: Deno.TcpConn) => void,
  options: AcceptLoopOptions,
): Promise<void> {
  const interval = options.logIntervalMs ?? 10_000;
  const maxBackoff = options.maxBackoffMs ?? 1000;
  let backoff = 0;
  let lastLog = -Infinity;
  let unlogged = 0;
  for (;;) {
    let conn: Deno.TcpConn;
    try {
      conn = await listener.accept();
    } catch (e) {
      if (e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted) return;
      options.drop("accept_failed");
      unlogged++;
      backoff = backoff === 0 ? FIRST_BACKOFF_MS : Math.min(maxBackoff, backoff * 2);
      const now = performance.now();
      if (now - lastLog >= interval) {
        options.logger.warn(`${options.what} accept failed; pausing accepts`, {
          ...options.fields,
          error: String(e),
          failures: unlogged,
          pauseMs: backoff,
        });
        lastLog = now;
        unlogged = 0;
      }
      await new Promise((r) => setTimeout(r, backoff));
      continue;
    }
    backoff = 0;
    handle(conn);
  }
}
