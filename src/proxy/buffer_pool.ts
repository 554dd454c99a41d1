/** Options for {@linkcode BufferPool}. */
export interface BufferPoolOptions {
  /** Bytes in each buffer. */
  size: number;
  /** Free buffers kept for reuse; one given back beyond this is left to the GC. */
  keep: number;
}

/**
 * Fixed-size byte buffers for copy loops, reused across connections: a connection takes its
 * buffers when it opens and gives them back when its loops end, so a new connection allocates
 * none while old ones have ended (a 64 KiB `Uint8Array` is memory outside the JS heap, which V8
 * counts towards its next collection). A buffer must be given back only when no read or write
 * on it is pending.
 *
 * @example
 * ```ts
 * const pool = new BufferPool({ size: 64 * 1024, keep: 64 });
 * const buf = pool.take();
 * // ... read into buf, write it on, until the connection ends ...
 * pool.give(buf);
 * ```
 */
export class BufferPool {
  readonly #size: number;
  readonly #keep: number;
  readonly #free: Uint8Array[] = [];
  #allocated = 0;

  constructor(options: BufferPoolOptions) {
    this.#size = options.size;
    this.#keep = options.keep;
  }

  /** Bytes in each buffer. */
  get size(): number {
    return this.#size;
  }

  /** Buffers this pool has allocated so far (taken ones and free ones alike). */
  get allocated(): number {
    return this.#allocated;
  }

  /** Free buffers waiting to be taken. */
  get free(): number {
    return this.#free.length;
  }

  /** A free buffer, or a new one when none is free. */
  take(): Uint8Array {
    const buf = this.#free.pop();
    if (buf) return buf;
    this.#allocated++;
    return new Uint8Array(this.#size);
  }

  /** Gives `buf` back for reuse; nothing may be reading into or writing from it any more. */
  give(buf: Uint8Array): void {
    if (buf.length === this.#size && this.#free.length < this.#keep) this.#free.push(buf);
  }
}

/**
 * The buffers of copy loops: a loop reads into a small one, moves to a large one after a read
 * that filled the small one, and back after a read the small one would have held. A connection
 * that sits idle, or carries requests and answers of a few KiB, holds only small buffers.
 */
export interface CopyBuffers {
  small: BufferPool;
  large: BufferPool;
}
