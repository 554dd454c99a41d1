/**
 * The byte relay of a TCP proxy on a {@linkcode Reactor}: two connected (or connecting)
 * nonblocking sockets, each way copied with one read and one write per readiness event.
 *
 * @module
 */
import {
  EAGAIN,
  EPOLLERR,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  libcNet,
  SHUT_WR,
} from "../../ffi/libc_net.ts";
import type { Reactor } from "./reactor.ts";
import { closeFd } from "./sockets.ts";

/**
 * How a relay ended: `eof` (both ways to their end), `error` (on either socket), or the reason
 * its owner gave {@linkcode TcpRelay.close}.
 */
export type RelayEnd = string;

/** What a relay tells its owner. */
export interface RelayHooks {
  /** `n` bytes went from the first socket to the second (`up`) or back (`down`). */
  onBytes?(way: "up" | "down", n: number): void;
  /** Once, when it ended; both sockets are closed by then. */
  onEnd(reason: RelayEnd): void;
}

/** One way: what `to` has not taken yet, and whether `from` has ended. */
interface Way {
  from: number;
  to: number;
  name: "up" | "down";
  pending: Uint8Array | null;
  eof: boolean;
}

/**
 * What every relay of one thread reads into. Handlers run one at a time, and what a write does
 * not take is copied out before the next read.
 */
const SCRATCH = new Uint8Array(64 * 1024);

/**
 * Relays bytes between `a` and `b` until both ways have ended, then closes both. A way that
 * ends (a read of 0 bytes) half-closes the other socket once what it holds is written. What a
 * write does not take is kept, and that way reads nothing more until it is written: memory is
 * one read's worth a way at most. An error on either socket closes both. `b` may still be
 * connecting: its first write waits for it, and a failed connect ends the relay as an error.
 * If the loop takes neither socket (`epoll_ctl` failed), the constructor throws and both are
 * still the caller's.
 *
 * @example
 * ```ts
 * const relay = new TcpRelay(reactor, clientFd, backendFd, { onEnd: (r) => log(r) });
 * // later, from a timer: relay.close("idle_timeout");
 * ```
 */
export class TcpRelay {
  readonly #reactor: Reactor;
  readonly #hooks: RelayHooks;
  readonly #up: Way;
  readonly #down: Way;
  /** Each socket's `EPOLL*` interest now. */
  #maskA: number;
  #maskB: number;
  /** Each socket's handler, and whether it is out of the loop (see {@linkcode TcpRelay.#remask}). */
  readonly #onA: (events: number) => void;
  readonly #onB: (events: number) => void;
  #parkedA = false;
  #parkedB = false;
  /** Whether each socket reported EPOLLHUP: shut both ways, or closed. */
  #hupA = false;
  #hupB = false;
  #ended = false;

  constructor(reactor: Reactor, a: number, b: number, hooks: RelayHooks) {
    this.#reactor = reactor;
    this.#hooks = hooks;
    this.#up = { from: a, to: b, name: "up", pending: null, eof: false };
    this.#down = { from: b, to: a, name: "down", pending: null, eof: false };
    this.#maskA = EPOLLIN;
    // EPOLLOUT until the connect is done; the first event's remask drops it.
    this.#maskB = EPOLLIN | EPOLLOUT;
    this.#onA = (events) => this.#on(this.#up, this.#down, events);
    this.#onB = (events) => this.#on(this.#down, this.#up, events);
    reactor.add(a, this.#maskA, this.#onA);
    try {
      reactor.add(b, this.#maskB, this.#onB);
    } catch (e) {
      // The caller still owns both sockets, and the loop holds neither.
      reactor.remove(a);
      throw e;
    }
  }

  /** Bytes read and not yet written on, both ways: at most one read's worth a way. */
  get held(): number {
    return (this.#up.pending?.length ?? 0) + (this.#down.pending?.length ?? 0);
  }

  /** Whether it has ended. */
  get ended(): boolean {
    return this.#ended;
  }

  /** Closes both sockets now; `reason` is what {@linkcode RelayHooks.onEnd} gets. */
  close(reason: RelayEnd): void {
    if (this.#ended) return;
    this.#ended = true;
    for (const fd of [this.#up.from, this.#up.to]) {
      this.#reactor.remove(fd);
      closeFd(fd);
    }
    this.#hooks.onEnd(reason);
  }

  /** An event of the socket `reading` reads from (and `writing` writes to). */
  #on(reading: Way, writing: Way, events: number): void {
    if (this.#ended) return;
    if (events & EPOLLHUP) {
      if (reading === this.#up) this.#hupA = true;
      else this.#hupB = true;
    }
    if (events & EPOLLOUT && writing.pending) {
      if (!this.#flush(writing)) return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR) && !reading.eof && !reading.pending) {
      if (!this.#read(reading)) return;
    } else if (events & EPOLLERR) {
      // Nothing to read or write on it, and it failed: nothing more can go through it.
      return this.close("error");
    } else if (events & EPOLLHUP && reading.eof && !writing.pending) {
      // Closed both ways, and this relay reads nothing more from it: waiting would spin.
      return this.close(writing.eof ? "eof" : "error");
    }
    if (this.#up.eof && this.#down.eof && !this.#up.pending && !this.#down.pending) {
      return this.close("eof");
    }
    this.#remask();
  }

  /** Writes what `w` holds; false when the relay ended. */
  #flush(w: Way): boolean {
    const { call, errno } = libcNet();
    const p = w.pending!;
    const n = Number(call.write(w.to, p, BigInt(p.length)));
    if (n < 0) {
      if (errno() === EAGAIN) return true;
      this.close("error");
      return false;
    }
    this.#hooks.onBytes?.(w.name, n);
    w.pending = n === p.length ? null : p.subarray(n);
    return true;
  }

  /** Reads once from `w.from` and writes it on; false when the relay ended. */
  #read(w: Way): boolean {
    const { call, errno } = libcNet();
    const n = Number(call.read(w.from, SCRATCH, BigInt(SCRATCH.length)));
    if (n < 0) {
      if (errno() === EAGAIN) return true;
      this.close("error");
      return false;
    }
    if (n === 0) {
      w.eof = true;
      call.shutdown(w.to, SHUT_WR);
      return true;
    }
    w.pending = SCRATCH.subarray(0, n);
    if (!this.#flush(w)) return false;
    // What stays must outlive the next read into the scratch buffer.
    if (w.pending) w.pending = w.pending.slice();
    return true;
  }

  /**
   * Each socket reads while its way is open and holds nothing, and waits to write what the other
   * holds. A socket that reported EPOLLHUP and wants nothing now leaves the loop until it wants
   * something again: epoll reports EPOLLHUP whatever the interest, so, level-triggered, it would
   * come back every turn while its way waits for the other socket to take what it holds (a
   * backend that answered and closed, a client that reads slowly): a busy loop.
   */
  #remask(): void {
    try {
      this.#setMasks();
    } catch {
      // The loop would not take the change (epoll_ctl: out of memory, say): left as it is, the
      // relay would wait for events that never come, until the idle timeout.
      this.close("error");
    }
  }

  #setMasks(): void {
    const a = (this.#up.eof || this.#up.pending ? 0 : EPOLLIN) |
      (this.#down.pending ? EPOLLOUT : 0);
    const b = (this.#down.eof || this.#down.pending ? 0 : EPOLLIN) |
      (this.#up.pending ? EPOLLOUT : 0);
    if (a === 0 && this.#hupA) {
      if (!this.#parkedA) this.#reactor.remove(this.#up.from), this.#parkedA = true;
    } else if (this.#parkedA) {
      this.#reactor.add(this.#up.from, this.#maskA = a, this.#onA), this.#parkedA = false;
    } else if (a !== this.#maskA) this.#reactor.modify(this.#up.from, this.#maskA = a);
    if (b === 0 && this.#hupB) {
      if (!this.#parkedB) this.#reactor.remove(this.#up.to), this.#parkedB = true;
    } else if (this.#parkedB) {
      this.#reactor.add(this.#up.to, this.#maskB = b, this.#onB), this.#parkedB = false;
    } else if (b !== this.#maskB) this.#reactor.modify(this.#up.to, this.#maskB = b);
  }
}
