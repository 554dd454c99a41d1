/**
 * Nonblocking TCP and UDP sockets through libc for a {@linkcode Reactor}: listen, accept and
 * connect, with each failure an Error naming the call and the errno text.
 *
 * @module
 */
import {
  addressOf,
  AF_INET,
  AF_INET6,
  EAGAIN,
  EINPROGRESS,
  IPPROTO_TCP,
  libcNet,
  SO_REUSEADDR,
  SO_REUSEPORT,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  sockaddr,
  SOL_SOCKET,
  TCP_NODELAY,
} from "../../ffi/libc_net.ts";
import { held, released } from "./fd_ledger.ts";

const ONE = new Uint8Array(new Int32Array([1]).buffer);
const FLAGS = SOCK_NONBLOCK | SOCK_CLOEXEC;

function failed(call: string): Error {
  const { errno, describe } = libcNet();
  const e = errno();
  return new Error(`${call} failed: ${describe(e)} (errno ${e})`);
}

/** Closes `fd`, ignoring errors (and takes it off the fd ledger). */
export function closeFd(fd: number): void {
  released(fd);
  libcNet().call.close(fd);
}

/** Options for {@linkcode bindSocket}. */
export interface BindOptions {
  /** SO_REUSEPORT, so a successor can bind the port before this one leaves. */
  reusePort?: boolean;
  /**
   * SO_REUSEADDR on a UDP socket (a TCP one always has it), so a successor can bind the port
   * beside it: on Linux the socket bound last then receives every new datagram.
   */
  reuseAddress?: boolean;
  /** The listen backlog of a TCP socket; default 1024. */
  backlog?: number;
}

/**
 * A nonblocking TCP (listening, Nagle off for what it accepts: Linux copies TCP_NODELAY to
 * accepted connections) or UDP socket bound to `address`:`port`. Port 0 picks a free one
 * (see {@linkcode localAddress}).
 */
export function bindSocket(
  kind: "tcp" | "udp",
  address: string,
  port: number,
  options: BindOptions = {},
): number {
  const { call } = libcNet();
  const sa = sockaddr(address, port);
  const family = address.includes(":") ? AF_INET6 : AF_INET;
  const fd = call.socket(family, (kind === "tcp" ? SOCK_STREAM : SOCK_DGRAM) | FLAGS, 0);
  if (fd < 0) throw failed("socket");
  held(fd);
  try {
    if (
      (kind === "tcp" || options.reuseAddress) &&
      call.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, ONE, 4) < 0
    ) {
      throw failed("setsockopt");
    }
    if (options.reusePort && call.setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, ONE, 4) < 0) {
      throw failed("setsockopt SO_REUSEPORT");
    }
    if (kind === "tcp" && call.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, ONE, 4) < 0) {
      throw failed("setsockopt TCP_NODELAY");
    }
    if (call.bind(fd, sa, sa.length) < 0) throw failed(`bind ${address}:${port}`);
    if (kind === "tcp" && call.listen(fd, options.backlog ?? 1024) < 0) throw failed("listen");
    return fd;
  } catch (e) {
    closeFd(fd);
    throw e;
  }
}

/** The address and port `fd` is bound to. */
export function localAddress(fd: number): { address: string; port: number } {
  const sa = new Uint8Array(28);
  const len = new Uint32Array([28]);
  if (libcNet().call.getsockname(fd, sa, new Uint8Array(len.buffer)) < 0) {
    throw failed("getsockname");
  }
  return addressOf(sa);
}

const peerBuf = new Uint8Array(28);
const peerLen = new Uint32Array(1);
const peerLenBytes = new Uint8Array(peerLen.buffer);

/**
 * Accepts one connection from the listening socket `fd`: the new nonblocking socket and the
 * peer's address, or null when none is waiting. Throws on other failures (EMFILE and the like).
 */
export function acceptOne(fd: number): { fd: number; address: string; port: number } | null {
  const { call, errno } = libcNet();
  peerLen[0] = 28;
  const c = call.accept4(fd, peerBuf, peerLenBytes, FLAGS);
  if (c < 0) {
    if (errno() === EAGAIN) return null;
    throw failed("accept4");
  }
  held(c);
  return { fd: c, ...addressOf(peerBuf) };
}

/**
 * A nonblocking TCP socket connecting to `address`:`port`, Nagle off. The connect goes on in
 * the background: the socket is writable once it is done, and reports an error if it failed.
 */
export function dialTcp(address: string, port: number): number {
  const { call, errno } = libcNet();
  const sa = sockaddr(address, port);
  const fd = call.socket(address.includes(":") ? AF_INET6 : AF_INET, SOCK_STREAM | FLAGS, 0);
  if (fd < 0) throw failed("socket");
  held(fd);
  if (call.connect(fd, sa, sa.length) < 0 && errno() !== EINPROGRESS) {
    const e = failed(`connect ${address}:${port}`);
    closeFd(fd);
    throw e;
  }
  call.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, ONE, 4);
  return fd;
}
