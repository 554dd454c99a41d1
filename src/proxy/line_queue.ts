import type { Logger } from "../observability/mod.ts";

/** Where a {@linkcode LineQueue} writes: `Deno.stdout` or a test's stand-in. */
export interface LineWriter {
  /** Writes some of `p`; resolves with the bytes written. */
  write(p: Uint8Array): Promise<number>;
}

/** Options for {@linkcode LineQueue}. */
export interface LineQueueOptions {
  /** Default: `Deno.stdout`. */
  writer?: LineWriter;
  /** Bytes waiting to be written at most; a line that does not fit is dropped. Default 1 MiB. */
  maxBytes?: number;
  /** Told of each line dropped (a counter). */
  onDrop?: () => void;
  /** Warned, once per {@linkcode LineQueueOptions.warnEveryMs}, that lines were dropped. */
  logger?: Logger;
  /** Default 10 s. */
  warnEveryMs?: number;
  /** The clock in ms, for the warnings. Default `Date.now`. */
  now?: () => number;
}

/** Bytes a pipe takes in one write without interleaving it with another writer's (PIPE_BUF). */
export const ATOMIC_WRITE = 4096;

const encoder = new TextEncoder();

/**
 * Lines written in the background, so a reader that reads slowly or not at all (a stdout pipe
 * nobody drains) never stalls the caller: {@linkcode push} only queues. The queue is bounded;
 * a line that does not fit is dropped and counted, with one warning per interval. Whole lines
 * only: each write holds whole lines and at most {@linkcode ATOMIC_WRITE} bytes (unless one
 * line is longer), so lines of several processes or workers on one pipe never mix.
 *
 * @example
 * ```ts
 * const q = new LineQueue({ onDrop: () => dropped.inc() });
 * q.push('{"status":200}\n');
 * await q.flush(2000); // at shutdown
 * ```
 */
export class LineQueue {
  readonly #writer: LineWriter | undefined;
  readonly #max: number;
  readonly #opts: LineQueueOptions;
  #lines: Uint8Array[] = [];
  #head = 0;
  /** Bytes queued, the batch being written included. */
  #bytes = 0;
  #writing = false;
  /** The writer failed (stdout closed): every line from now on is dropped. */
  #broken: string | null = null;
  #dropped = 0;
  #droppedSinceWarn = 0;
  #lastWarn = -Infinity;
  #idle: (() => void)[] = [];

  constructor(options: LineQueueOptions = {}) {
    this.#opts = options;
    this.#writer = options.writer;
    this.#max = options.maxBytes ?? 1 << 20;
  }

  /** Lines dropped so far. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Bytes waiting to be written. */
  get queuedBytes(): number {
    return this.#bytes;
  }

  /** Queues `line` (with its newline), or drops it when the queue is full. Never blocks. */
  push(line: string): void {
    const bytes = encoder.encode(line);
    if (this.#broken !== null || this.#bytes + bytes.length > this.#max) {
      this.#drop();
      return;
    }
    this.#lines.push(bytes);
    this.#bytes += bytes.length;
    if (!this.#writing) this.#run();
  }

  /** Resolves once every line queued is written, or after `timeoutMs`; says which. */
  flush(timeoutMs: number): Promise<boolean> {
    if (!this.#writing) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w: { done: boolean; timer?: ReturnType<typeof setTimeout> } = { done: false };
      const finish = (v: boolean): void => {
        if (w.done) return;
        w.done = true;
        clearTimeout(w.timer);
        resolve(v);
      };
      // Waiting first: under `deno test`, setTimeout can let the writer's microtasks run, and
      // the queue may go idle before the timer is set.
      this.#idle.push(() => finish(true));
      w.timer = setTimeout(() => finish(false), timeoutMs);
      if (w.done) clearTimeout(w.timer);
    });
  }

  #drop(): void {
    this.#dropped++;
    this.#droppedSinceWarn++;
    this.#opts.onDrop?.();
    const log = this.#opts.logger;
    if (!log) return;
    const now = (this.#opts.now ?? Date.now)();
    if (now - this.#lastWarn < (this.#opts.warnEveryMs ?? 10_000)) return;
    this.#lastWarn = now;
    log.warn("access log lines dropped", {
      dropped: this.#droppedSinceWarn,
      reason: this.#broken ?? `more than ${this.#max} bytes wait to be written (a slow stdout)`,
    });
    this.#droppedSinceWarn = 0;
  }

  /** Whole lines from the head of the queue: up to ATOMIC_WRITE bytes, or one longer line. */
  #take(): Uint8Array {
    const first = this.#lines[this.#head++]!;
    let size = first.length;
    let end = this.#head;
    while (end < this.#lines.length && size + this.#lines[end]!.length <= ATOMIC_WRITE) {
      size += this.#lines[end++]!.length;
    }
    if (end === this.#head) return first;
    const batch = new Uint8Array(size);
    batch.set(first);
    let off = first.length;
    for (; this.#head < end; this.#head++) {
      const l = this.#lines[this.#head]!;
      batch.set(l, off);
      off += l.length;
    }
    return batch;
  }

  async #run(): Promise<void> {
    this.#writing = true;
    const writer = this.#writer ?? Deno.stdout;
    try {
      while (this.#head < this.#lines.length) {
        const batch = this.#take();
        if (this.#head > 1024 && this.#head * 2 > this.#lines.length) {
          this.#lines = this.#lines.slice(this.#head);
          this.#head = 0;
        }
        let off = 0;
        try {
          while (off < batch.length) off += await writer.write(batch.subarray(off));
        } catch (e) {
          // stdout closed (EPIPE) or gone: nothing will be read again.
          this.#broken = `stdout failed: ${e instanceof Error ? e.message : String(e)}`;
          let lost = this.#lines.length - this.#head;
          for (let i = off; i < batch.length; i++) if (batch[i] === 10) lost++;
          this.#lines = [];
          this.#head = 0;
          this.#bytes = 0;
          for (let i = 0; i < lost; i++) this.#drop();
          return;
        }
        this.#bytes -= batch.length;
      }
    } finally {
      this.#writing = false;
      const idle = this.#idle;
      this.#idle = [];
      for (const f of idle) f();
    }
  }
}
