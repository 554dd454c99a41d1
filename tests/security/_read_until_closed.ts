/**
 * A raw client's read of everything a proxy sends on one connection, bounded in time: for the
 * deadline tests, which check what came before the proxy closed, and when.
 *
 * @module
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Writes `request` (if any) on `conn`, then reads what comes until the peer closes, or until
 * `ms` pass (then `timedOut`, and `conn` is closed here). `elapsed` runs from the write to the
 * close. `conn` is closed in the end either way.
 */
export async function readUntilClosed(
  conn: Deno.Conn,
  ms: number,
  request?: string,
): Promise<{ text: string; timedOut: boolean; elapsed: number }> {
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      conn.close();
    } catch { /* closed */ }
  }, ms);
  const started = Date.now();
  let text = "";
  try {
    if (request !== undefined) await conn.write(encoder.encode(request));
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += decoder.decode(buf.subarray(0, n));
    }
  } catch {
    /* our own close at the deadline, or a reset */
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed */ }
  }
  return { text, timedOut, elapsed: Date.now() - started };
}
