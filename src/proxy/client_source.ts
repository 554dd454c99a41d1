import type { Reader } from "./http1.ts";

/**
 * A client connection read through one read ahead, so the proxy learns that the client went
 * away while it waits on a backend (and stops retrying for nobody). Bytes the read ahead gets,
 * such as a pipelined next request, are kept and returned by the next {@linkcode read}.
 *
 * An end of stream counts as gone: like nginx (`proxy_ignore_client_abort off`) and Envoy, a
 * client that half-closes after its request is taken for one that left.
 */
export class ClientSource implements Reader {
  readonly #conn: Deno.Conn;
  #ahead: Promise<void> | null = null;
  #stash: Uint8Array | null = null;
  /**
   * The read ahead's buffer, one per connection: a read ahead starts only once the last one's
   * bytes were all taken, so it is free again by then (a new 16 KiB buffer per request cost
   * more than the rest of the read).
   */
  #buf: Uint8Array | null = null;
  #eof = false;
  #error: unknown = null;

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  /** Whether the read ahead saw the client's end of stream, or an error. */
  get gone(): boolean {
    return this.#eof || this.#error !== null;
  }

  /** Starts a read ahead, unless one is under way or bytes are already kept. */
  watch(): void {
    if (this.#ahead || this.#stash || this.gone) return;
    this.#ahead = this.#readAhead(this.#buf ??= new Uint8Array(16 * 1024));
  }

  async #readAhead(buf: Uint8Array): Promise<void> {
    try {
      const n = await this.#conn.read(buf);
      if (n === null) this.#eof = true;
      else this.#stash = buf.subarray(0, n);
    } catch (e) {
      this.#error = e;
    }
    this.#ahead = null;
  }

  /** Reads what the read ahead kept first, then from the connection. */
  async read(p: Uint8Array): Promise<number | null> {
    if (this.#ahead) await this.#ahead;
    if (this.#stash) {
      const n = Math.min(p.length, this.#stash.length);
      p.set(this.#stash.subarray(0, n));
      this.#stash = n === this.#stash.length ? null : this.#stash.subarray(n);
      return n;
    }
    if (this.#eof) return null;
    if (this.#error !== null) throw this.#error;
    return await this.#conn.read(p);
  }
}
