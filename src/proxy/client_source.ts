import type { BufReader } from "./http1.ts";

/**
 * Watches a client connection between its request and the response, so the proxy learns that
 * the client went away while it waits on a backend (and stops retrying for nobody). The watch
 * is one read ahead of the connection's own {@linkcode BufReader}: the bytes it gets, such as a
 * pipelined next request, land in that reader's buffer, where the next read finds them with no
 * copy and no extra layer per request.
 *
 * An end of stream counts as gone: like nginx (`proxy_ignore_client_abort off`) and Envoy, a
 * client that half-closes after its request is taken for one that left.
 */
export class ClientSource {
  readonly #reader: BufReader;
  #watching = false;
  #gone = false;

  constructor(reader: BufReader) {
    this.#reader = reader;
  }

  /** Whether the read ahead saw the client's end of stream, or an error. */
  get gone(): boolean {
    return this.#gone;
  }

  /**
   * Starts a read ahead on the reader, unless one is under way, the client is gone, or the
   * reader holds bytes already (a pipelined request: its head is read without a read, and no
   * read may stay pending when the connection is then read past the reader, as a tunnel does).
   */
  watch(): void {
    if (this.#watching || this.#gone || this.#reader.buffered > 0) return;
    this.#watching = true;
    this.#reader.readAhead().then(this.#seen, this.#failed);
  }

  readonly #seen = (got: boolean): void => {
    this.#watching = false;
    if (!got) this.#gone = true;
  };

  /** {@linkcode ClientSource.gone} as a function made once, to hand to a retry loop. */
  readonly isGone = (): boolean => this.#gone;

  readonly #failed = (): void => {
    this.#watching = false;
    this.#gone = true;
  };
}
