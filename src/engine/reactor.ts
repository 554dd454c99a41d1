/**
 * An event loop of meshd's own: one `epoll` instance, a handler per socket called for each
 * readiness event, and timers, with no promise per read or write. It blocks its thread in
 * `epoll_wait`, so it runs in a Worker of its own, never on the thread of Deno's I/O: while it
 * is busy it lets the isolate's promises and messages run every `yieldEveryMs`, but Deno's
 * own sockets and timers only once it has nothing to do. README, "TCP and UDP
 * request/response" has the measurements behind it: handlers on a blocking `epoll_wait` cost
 * about what HAProxy and nginx cost a request, Deno's I/O 1.05 to 1.6 times as much, and
 * promises over the same calls what Deno's I/O costs.
 *
 * @module
 */
import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  EINTR,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_CTL_MOD,
  EPOLL_DATA_OFFSET,
  EPOLL_EVENT_SIZE,
  EPOLLIN,
  libcNet,
} from "../../ffi/libc_net.ts";
import { held } from "./fd_ledger.ts";
import { closeFd } from "./sockets.ts";

/** Called with the `EPOLL*` bits of one readiness event of its socket. */
export type Handler = (events: number) => void;

/** A timer of {@linkcode Reactor.after}. */
export interface ReactorTimer {
  cancel(): void;
}

interface Timer {
  at: number;
  /** Let go of (a no-op) once cancelled: it holds its caller's closure. */
  fn: () => void;
  cancelled: boolean;
  seq: number;
}

/** Options for {@linkcode Reactor}. */
export interface ReactorOptions {
  /** The longest one wait blocks this thread before the loop waits away from it, ms. Default 1. */
  spinMs?: number;
  /** The longest one wait away from the thread lasts (then the loop looks again), ms. Default 1000. */
  maxIdleMs?: number;
  /** Under load, the isolate's promises and messages run at least this often, ms. Default 5. */
  yieldEveryMs?: number;
  /**
   * Under load, the isolate's own timers (`setTimeout`, `setInterval`) run at least this often,
   * ms: one of the yields is a `setTimeout(0)` then, which costs about 1 ms. Default 100.
   */
  timerYieldEveryMs?: number;
  /** A handler or timer that threw; the loop goes on. Default: printed to stderr. */
  onError?: (e: unknown) => void;
}

const MAX_EVENTS = 256;
const NOOP = () => {};
/** Cancelled timers the heap may hold before it is rebuilt without them (and half of it). */
const CANCELLED_SLACK = 64;
const EPOLL_CLOEXEC = 0o2000000;

/**
 * The loop. Sockets are added with the events wanted (`EPOLLIN`, `EPOLLOUT`, level-triggered);
 * `EPOLLERR` and `EPOLLHUP` come whether asked or not. {@linkcode Reactor.run} goes on until
 * {@linkcode Reactor.stop}.
 *
 * @example
 * ```ts
 * const reactor = new Reactor();
 * reactor.add(fd, EPOLLIN, (events) => onReadable(fd, events));
 * reactor.after(1000, sweep);
 * await reactor.run();
 * ```
 */
export class Reactor {
  readonly #libc = libcNet();
  readonly #ep: number;
  /**
   * Each socket's handler, and the number its registration carries in the event's data beside
   * the socket (see {@linkcode Reactor.add}).
   */
  readonly #handlers = new Map<number, { handler: Handler; gen: number }>();
  #gen = 0;
  readonly #events = new Uint8Array(MAX_EVENTS * EPOLL_EVENT_SIZE);
  readonly #eventsView = new DataView(this.#events.buffer);
  readonly #ev = new Uint8Array(EPOLL_EVENT_SIZE);
  readonly #evView = new DataView(this.#ev.buffer);
  readonly #timers: Timer[] = [];
  /** Timers in the heap that were cancelled. */
  #cancelled = 0;
  #seq = 0;
  #stopped = false;
  #running = false;
  #settle = false;
  readonly #spinMs: number;
  readonly #maxIdleMs: number;
  readonly #yieldEveryMs: number;
  readonly #timerYieldEveryMs: number;
  /** An eventfd in the epoll set: {@linkcode Reactor.wake} ends a wait at once. */
  readonly #wakeFd: number;
  readonly #wakeBuf = new Uint8Array(new BigUint64Array([1n]).buffer);
  readonly #onError: (e: unknown) => void;

  constructor(options: ReactorOptions = {}) {
    this.#spinMs = options.spinMs ?? 1;
    this.#maxIdleMs = options.maxIdleMs ?? 1000;
    this.#yieldEveryMs = options.yieldEveryMs ?? 5;
    this.#timerYieldEveryMs = options.timerYieldEveryMs ?? 100;
    this.#onError = options.onError ?? ((e) => console.error("reactor:", e));
    this.#ep = this.#libc.call.epoll_create1(EPOLL_CLOEXEC);
    if (this.#ep < 0) throw this.error("epoll_create1");
    held(this.#ep);
    this.#wakeFd = this.#libc.call.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (this.#wakeFd < 0) {
      const e = this.error("eventfd");
      closeFd(this.#ep);
      throw e;
    }
    held(this.#wakeFd);
    const drain = new Uint8Array(8);
    this.add(this.#wakeFd, EPOLLIN, () => void this.#libc.call.read(this.#wakeFd, drain, 8n));
  }

  /** An Error naming `call` and the errno it left. */
  error(call: string, errno = this.#libc.errno()): Error {
    return new Error(`${call} failed: ${this.#libc.describe(errno)} (errno ${errno})`);
  }

  /** Sockets with a handler now (not counting its own). */
  get size(): number {
    return this.#handlers.size - 1;
  }

  /**
   * Calls `handler` for each event of `fd`; `interest` is the `EPOLL*` bits wanted. Each
   * registration carries a number of its own in the event's data: a batch of events can hold
   * one for a socket a handler before it closed, whose number a socket opened since (the
   * kernel gives the lowest free one) may carry; that event is not the new socket's.
   */
  add(fd: number, interest: number, handler: Handler): void {
    const gen = this.#gen = (this.#gen + 1) >>> 0;
    this.#ctl(EPOLL_CTL_ADD, fd, interest, gen);
    this.#handlers.set(fd, { handler, gen });
  }

  /** Changes the events wanted from `fd`. */
  modify(fd: number, interest: number): void {
    const h = this.#handlers.get(fd);
    if (!h) throw new Error(`epoll_ctl failed: socket ${fd} is not in the loop`);
    this.#ctl(EPOLL_CTL_MOD, fd, interest, h.gen);
  }

  /** Stops watching `fd` (it is not closed). */
  remove(fd: number): void {
    if (!this.#handlers.delete(fd)) return;
    this.#libc.call.epoll_ctl(this.#ep, EPOLL_CTL_DEL, fd, this.#ev);
  }

  #ctl(op: number, fd: number, interest: number, gen: number): void {
    this.#evView.setUint32(0, interest >>> 0, true);
    this.#evView.setInt32(EPOLL_DATA_OFFSET, fd, true);
    this.#evView.setUint32(EPOLL_DATA_OFFSET + 4, gen, true);
    if (this.#libc.call.epoll_ctl(this.#ep, op, fd, this.#ev) < 0) throw this.error("epoll_ctl");
  }

  /**
   * Calls `fn` once, `ms` from now, on this loop. A cancelled timer lets go of `fn` at once,
   * and leaves the heap when its time comes or when cancelled ones make up half of the heap
   * (a connect's deadline is cancelled when it connects: at thousands of connections a second
   * they would hold every connect's closure for the whole deadline, about 1 KiB each).
   */
  after(ms: number, fn: () => void): ReactorTimer {
    const t: Timer = { at: performance.now() + ms, fn, cancelled: false, seq: this.#seq++ };
    this.#push(t);
    return { cancel: () => this.#cancel(t) };
  }

  /** Timers waiting in the heap, cancelled ones not yet dropped included. */
  get timers(): number {
    return this.#timers.length;
  }

  #cancel(t: Timer): void {
    if (t.cancelled) return;
    t.cancelled = true;
    t.fn = NOOP;
    this.#cancelled++;
    if (this.#cancelled > CANCELLED_SLACK && 2 * this.#cancelled > this.#timers.length) {
      const live = this.#timers.filter((x) => !x.cancelled);
      this.#timers.length = 0;
      this.#cancelled = 0;
      for (const x of live) this.#push(x);
    }
  }

  /**
   * Makes the loop let JavaScript run before it waits again: for a handler that settled a
   * promise whose continuation has more to do on this loop.
   */
  settle(): void {
    this.#settle = true;
  }

  /** Ends a wait of the loop now (from this isolate: a message came, or there is work). */
  wake(): void {
    this.#libc.call.write(this.#wakeFd, this.#wakeBuf, 8n);
  }

  /** Ends {@linkcode Reactor.run} after the current turn. */
  stop(): void {
    this.#stopped = true;
    if (this.#running) this.wake();
  }

  /**
   * Runs the loop until {@linkcode Reactor.stop}, then closes the epoll instance.
   *
   * While events keep coming, it waits in `epoll_wait` on its own thread, up to `spinMs` at a
   * time, and lets the isolate run (its promises and messages) every `yieldEveryMs`, through a
   * message to itself. Once a wait finds nothing, it waits on a thread of Deno's blocking pool
   * instead, and the isolate's event loop (timers too) runs until an event comes: an idle loop
   * holds no thread and delays no timer. While the loop is busy, Deno's timers run every
   * `timerYieldEveryMs` (a worker's state reports, a bind retry); the loop's own
   * ({@linkcode Reactor.after}) run on time.
   */
  async run(): Promise<void> {
    if (this.#running) throw new Error("the reactor runs already");
    this.#running = true;
    const channel = new MessageChannel();
    let resume: (() => void) | null = null;
    channel.port2.onmessage = () => resume?.();
    // A macrotask: the isolate runs its microtasks and messages before the loop resumes.
    const yieldToJs = () =>
      new Promise<void>((resolve) => {
        resume = resolve;
        channel.port1.postMessage(null);
      });
    // A macrotask after the isolate's due timers: the isolate's event loop takes a whole turn.
    const yieldToTimers = () => new Promise<void>((resolve) => setTimeout(resolve, 0));
    let lastYield = performance.now();
    let lastTimerYield = lastYield;
    try {
      while (!this.#stopped) {
        const timer = this.#untilTimer();
        let n = this.#waitHere(this.#settle ? 0 : Math.min(this.#spinMs, timer));
        if (n === 0 && !this.#settle && timer > 0) {
          n = await this.#waitAway(Math.min(this.#maxIdleMs, timer));
          lastYield = lastTimerYield = performance.now();
        }
        this.#dispatch(n);
        this.#runTimers();
        const now = performance.now();
        if (this.#settle || now - lastYield >= this.#yieldEveryMs) {
          this.#settle = false;
          if (now - lastTimerYield >= this.#timerYieldEveryMs) {
            await yieldToTimers();
            lastTimerYield = performance.now();
          } else {
            await yieldToJs();
          }
          lastYield = performance.now();
        }
      }
    } finally {
      channel.port1.close();
      channel.port2.close();
      closeFd(this.#ep);
      closeFd(this.#wakeFd);
      this.#handlers.clear();
    }
  }

  /** Ms until the next timer is due (0: due now; Infinity: none). */
  #untilTimer(): number {
    const next = this.#timers[0];
    return next ? Math.max(0, Math.ceil(next.at - performance.now())) : Infinity;
  }

  /** `epoll_wait` on this thread, blocking up to `timeoutMs`. */
  #waitHere(timeoutMs: number): number {
    const n = this.#libc.call.epoll_wait(this.#ep, this.#events, MAX_EVENTS, timeoutMs);
    if (n < 0) {
      const e = this.#libc.errno();
      if (e !== EINTR) throw this.error("epoll_wait", e);
      return 0;
    }
    return n;
  }

  /** `epoll_wait` on a thread of Deno's blocking pool, up to `timeoutMs` (capped at 1 s). */
  async #waitAway(timeoutMs: number): Promise<number> {
    const ms = Math.min(1000, timeoutMs);
    const n = await this.#libc.call.epoll_wait_async(this.#ep, this.#events, MAX_EVENTS, ms);
    // errno was that thread's; the only failure a valid epoll fd meets is EINTR.
    return n < 0 ? 0 : n;
  }

  #dispatch(n: number): void {
    const v = this.#eventsView;
    for (let i = 0; i < n; i++) {
      const at = i * EPOLL_EVENT_SIZE;
      const h = this.#handlers.get(v.getInt32(at + EPOLL_DATA_OFFSET, true));
      // Removed by an earlier handler of this batch, or closed there and its number reused.
      if (!h || h.gen !== v.getUint32(at + EPOLL_DATA_OFFSET + 4, true)) continue;
      try {
        h.handler(v.getUint32(at, true));
      } catch (e) {
        this.#onError(e);
      }
    }
  }

  #runTimers(): void {
    const now = performance.now();
    while (this.#timers.length > 0 && this.#timers[0]!.at <= now) {
      const t = this.#pop();
      if (t.cancelled) {
        this.#cancelled--;
        continue;
      }
      // Spent: a cancel from here on (its own callback's, say) is a no-op.
      t.cancelled = true;
      try {
        t.fn();
      } catch (e) {
        this.#onError(e);
      }
    }
  }

  // A binary min-heap of timers by deadline, then by order of creation.
  #before(a: Timer, b: Timer): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }

  #push(t: Timer): void {
    const h = this.#timers;
    h.push(t);
    for (let i = h.length - 1; i > 0;) {
      const parent = (i - 1) >> 1;
      if (!this.#before(h[i]!, h[parent]!)) break;
      [h[i], h[parent]] = [h[parent]!, h[i]!];
      i = parent;
    }
  }

  #pop(): Timer {
    const h = this.#timers;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length === 0) return top;
    h[0] = last;
    for (let i = 0;;) {
      const l = 2 * i + 1, r = l + 1;
      let m = i;
      if (l < h.length && this.#before(h[l]!, h[m]!)) m = l;
      if (r < h.length && this.#before(h[r]!, h[m]!)) m = r;
      if (m === i) break;
      [h[i], h[m]] = [h[m]!, h[i]!];
      i = m;
    }
    return top;
  }
}
