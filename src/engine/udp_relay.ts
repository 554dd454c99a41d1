/**
 * The datagram relay of a UDP proxy on a {@linkcode Reactor}: each client address gets a flow,
 * a socket connected to the endpoint its owner chose; what the client sends goes out on it, and
 * what comes back on it goes to the client from the listening socket, so the client sees the
 * answer come from where it sent.
 *
 * @module
 */
import {
  addressOf,
  AF_INET,
  AF_INET6,
  EAGAIN,
  ECONNREFUSED,
  ENOBUFS,
  ENOMEM,
  EPOLLIN,
  libcNet,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  sockaddr,
} from "../../ffi/libc_net.ts";
import type { Reactor, ReactorTimer } from "./reactor.ts";
import { held } from "./fd_ledger.ts";
import { closeFd } from "./sockets.ts";

/** Where a flow goes: an endpoint's address and port. */
export interface UdpTarget {
  address: string;
  port: number;
}

/** One client's flow; `target` is what {@linkcode UdpRelayOptions.open} chose for it. */
export interface UdpFlow<T extends UdpTarget = UdpTarget> {
  readonly client: UdpTarget;
  readonly target: T;
}

/** How a flow ended. */
export type UdpFlowEnd =
  | "idle_timeout"
  | "evicted"
  | "error"
  | "shutdown"
  | "endpoint_failed"
  | "endpoint_removed";

/** Options for {@linkcode UdpRelay}. */
export interface UdpRelayOptions<T extends UdpTarget = UdpTarget> {
  /**
   * For a client's first datagram: where its flow goes (the object is kept as the flow's
   * `target`, so it may carry the owner's own fields), or null to drop the datagram.
   */
  open(client: UdpTarget): T | null;
  /** A flow was opened, before its first datagram goes on. */
  onOpen?(flow: UdpFlow<T>): void;
  /** `n` bytes went from a client on (`up`) or back to it (`down`). */
  onBytes?(flow: UdpFlow<T>, way: "up" | "down", n: number): void;
  /**
   * A datagram from the client could not be sent on to the endpoint, or the endpoint answered
   * one with an ICMP error (port unreachable: ECONNREFUSED). `errno` says which: one such as
   * ENOBUFS, ENOMEM or EAGAIN is this host's own shortage, no fault of the endpoint.
   */
  onSendError?(flow: UdpFlow<T>, errno: number): void;
  /**
   * A socket for a new flow could not be opened, connected or taken into the loop (out of
   * descriptors, say): the datagram is dropped, and no flow opens.
   */
  onOpenError?(client: UdpTarget, target: T, error: Error): void;
  /** A flow ended; its socket is closed by then. */
  onEnd?(flow: UdpFlow<T>, reason: UdpFlowEnd): void;
  /** A flow idle this long either way ends. Default 60 s. */
  idleMs?: number;
  /** Flows at most; a new one ends the least recently active. Default 1,000. */
  maxFlows?: number;
  /**
   * Sends the first `n` bytes of `data` on a flow's connected socket `fd`: the bytes sent, or
   * `-errno`. A test seam; default libc's `write`.
   */
  write?(fd: number, data: Uint8Array, n: number): number;
}

interface Flow<T extends UdpTarget> extends UdpFlow<T> {
  fd: number;
  /** The client's `sockaddr`, as `sendto` takes it. */
  sa: Uint8Array;
  key: number | string;
  /** Datagrams either way, and the count the idle sweep saw last. */
  count: number;
  seen: number;
  /** `performance.now()` when the sweep last saw it carry a datagram (or when it opened). */
  active: number;
}

/**
 * Whether a send that failed with `errno` failed for this host's own want of room: the socket's
 * send buffer full (EAGAIN), no buffer space (ENOBUFS) or memory (ENOMEM). Transient, and no
 * fault of the endpoint: the datagram is lost as a full queue loses one.
 */
export function isLocalSendErrno(errno: number): boolean {
  return errno === EAGAIN || errno === ENOBUFS || errno === ENOMEM;
}

/** What every relay of one thread reads a datagram into; handlers run one at a time. */
const SCRATCH = new Uint8Array(65_535);
/**
 * Datagrams one readiness event takes from a socket at most. The loop is level-triggered, so
 * what is left comes back at the next turn, after the other sockets and timers have had theirs:
 * read to EAGAIN, a flood that never lets the socket run dry would hold the loop for its length.
 */
const BATCH = 64;

/**
 * Relays datagrams that come to the bound UDP socket `listenFd` (which stays its owner's).
 * Flows end when idle for `idleMs` (the sweep looks four times in that span, at most once a
 * second), when `maxFlows` is reached and a new client comes (the least recently active one),
 * or at {@linkcode UdpRelay.close}.
 *
 * @example
 * ```ts
 * const relay = new UdpRelay(reactor, fd, { open: () => ({ address: "10.0.0.7", port: 53 }) });
 * ```
 */
export class UdpRelay<T extends UdpTarget = UdpTarget> {
  readonly #reactor: Reactor;
  readonly #fd: number;
  readonly #opts: UdpRelayOptions<T>;
  /** Flows by client key, least recently active first (moved to the back by the sweep). */
  readonly #flows = new Map<number | string, Flow<T>>();
  readonly #from = new Uint8Array(28);
  readonly #fromLen = new Uint32Array(1);
  readonly #fromLenBytes = new Uint8Array(this.#fromLen.buffer);
  #sweep: ReactorTimer;
  #paused = false;

  constructor(reactor: Reactor, listenFd: number, options: UdpRelayOptions<T>) {
    this.#reactor = reactor;
    this.#fd = listenFd;
    this.#opts = options;
    reactor.add(listenFd, EPOLLIN, () => this.#receive());
    this.#sweep = reactor.after(this.#sweepMs(), () => this.#sweepIdle());
  }

  /** Flows open now. */
  get flows(): number {
    return this.#flows.size;
  }

  /** The flows open now, least recently active first (as of the last sweep or touch). */
  values(): IterableIterator<UdpFlow<T>> {
    return this.#flows.values();
  }

  /** Moves `flow` (one of this relay's) to the back of the eviction order: it is in use. */
  touch(flow: UdpFlow<T>): void {
    const f = flow as Flow<T>;
    if (this.#flows.get(f.key) !== f) return;
    this.#flows.delete(f.key);
    this.#flows.set(f.key, f);
  }

  /** Ends `flow` (one of this relay's) for `reason`; a flow already ended is left alone. */
  end(flow: UdpFlow<T>, reason: UdpFlowEnd): void {
    this.#end(flow as Flow<T>, reason);
  }

  /**
   * Stops reading the listening socket (which stays open, and whose datagrams then wait for
   * no one); flows go on, so answers still due go back, until {@linkcode UdpRelay.close}.
   */
  pause(): void {
    if (this.#paused) return;
    this.#paused = true;
    this.#reactor.remove(this.#fd);
  }

  /** Ends every flow and stops reading the listening socket (which stays open). */
  close(): void {
    this.#sweep.cancel();
    this.pause();
    for (const f of [...this.#flows.values()]) this.#end(f, "shutdown");
  }

  #sweepMs(): number {
    return Math.min(1000, Math.max(10, (this.#opts.idleMs ?? 60_000) / 4));
  }

  #receive(): void {
    const { call } = libcNet();
    for (let i = 0; i < BATCH; i++) {
      this.#fromLen[0] = this.#from.length;
      const n = Number(
        call.recvfrom(this.#fd, SCRATCH, BigInt(SCRATCH.length), 0, this.#from, this.#fromLenBytes),
      );
      if (n < 0) return; // EAGAIN: nothing more now
      const sa = this.#from.subarray(0, this.#fromLen[0]);
      const key = clientKey(sa);
      const flow = this.#flows.get(key) ?? this.#open(key, sa);
      if (!flow) continue;
      flow.count++;
      const sent = this.#write(flow.fd, SCRATCH, n);
      if (sent === n) this.#opts.onBytes?.(flow, "up", n);
      else this.#opts.onSendError?.(flow, sent < 0 ? -sent : 0);
    }
  }

  /** A flow for a client's first datagram; null when it is dropped. */
  #open(key: number | string, sa: Uint8Array): Flow<T> | null {
    const client = addressOf(sa);
    const target = this.#opts.open(client);
    if (!target) return null;
    const { call } = libcNet();
    const to = sockaddr(target.address, target.port);
    const family = target.address.includes(":") ? AF_INET6 : AF_INET;
    const fd = call.socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      this.#opts.onOpenError?.(client, target, this.#reactor.error("socket"));
      return null;
    }
    held(fd);
    if (call.connect(fd, to, to.length) < 0) {
      const e = this.#reactor.error(`connect ${target.address}:${target.port}`);
      closeFd(fd);
      this.#opts.onOpenError?.(client, target, e);
      return null;
    }
    while (this.#flows.size >= (this.#opts.maxFlows ?? 1000)) {
      this.#end(this.#flows.values().next().value!, "evicted");
    }
    const flow: Flow<T> = {
      client,
      target,
      fd,
      sa: sa.slice(),
      key,
      count: 0,
      seen: 0,
      active: performance.now(),
    };
    try {
      this.#reactor.add(fd, EPOLLIN, () => this.#reply(flow));
    } catch (e) {
      // The loop would not take the socket (epoll_ctl failed): no flow, as when none opens.
      closeFd(fd);
      this.#opts.onOpenError?.(client, target, e as Error);
      return null;
    }
    this.#flows.set(key, flow);
    this.#opts.onOpen?.(flow);
    // The owner may have ended it at once (a cap of its own).
    return this.#flows.get(key) === flow ? flow : null;
  }

  /**
   * Datagrams that came back on a flow's socket, to its client. An ICMP error for an earlier
   * datagram (port unreachable: ECONNREFUSED) comes here, on the connected socket, and not to
   * the next send, since this read takes it first: the owner hears of it as of a failed send.
   */
  #reply(flow: Flow<T>): void {
    const { call, errno } = libcNet();
    for (let i = 0; i < BATCH; i++) {
      const n = Number(call.read(flow.fd, SCRATCH, BigInt(SCRATCH.length)));
      if (n < 0) {
        if (errno() === ECONNREFUSED) this.#opts.onSendError?.(flow, ECONNREFUSED);
        return; // EAGAIN, or the error: the next event or datagram says more
      }
      flow.count++;
      if (Number(call.sendto(this.#fd, SCRATCH, BigInt(n), 0, flow.sa, flow.sa.length)) === n) {
        this.#opts.onBytes?.(flow, "down", n);
      }
    }
  }

  /** libc's `write` on a datagram socket, or the owner's seam: bytes sent, or `-errno`. */
  #write(fd: number, data: Uint8Array, n: number): number {
    if (this.#opts.write) return this.#opts.write(fd, data, n);
    const { call, errno } = libcNet();
    const sent = Number(call.write(fd, data, BigInt(n)));
    return sent < 0 ? -errno() : sent;
  }

  #sweepIdle(): void {
    const now = performance.now();
    const limit = this.#opts.idleMs ?? 60_000;
    for (const f of [...this.#flows.values()]) {
      if (f.count !== f.seen) {
        // Active since the last look: to the back of the eviction order.
        f.seen = f.count;
        f.active = now;
        this.#flows.delete(f.key);
        this.#flows.set(f.key, f);
      } else if (now - f.active >= limit) {
        this.#end(f, "idle_timeout");
      }
    }
    this.#sweep = this.#reactor.after(this.#sweepMs(), () => this.#sweepIdle());
  }

  #end(f: Flow<T>, reason: UdpFlowEnd): void {
    if (this.#flows.get(f.key) !== f) return;
    this.#flows.delete(f.key);
    this.#reactor.remove(f.fd);
    closeFd(f.fd);
    this.#opts.onEnd?.(f, reason);
  }
}

/** A client's key: its IPv4 address and port as one number, or its IPv6 `sockaddr` as text. */
function clientKey(sa: Uint8Array): number | string {
  if (sa[0] === AF_INET && sa[1] === 0) {
    return ((sa[4]! << 24 >>> 0) + (sa[5]! << 16) + (sa[6]! << 8) + sa[7]!) * 65536 +
      (sa[2]! << 8) + sa[3]!;
  }
  return String.fromCharCode(...sa.subarray(2, 24));
}
