/**
 * A TCP connect on a {@linkcode Reactor} with a deadline, for a listener's setup path (a
 * promise per connection, not per read or write).
 *
 * @module
 */
import { EPOLLERR, EPOLLHUP, EPOLLOUT, libcNet, SO_ERROR, SOL_SOCKET } from "../../ffi/libc_net.ts";
import type { Reactor } from "./reactor.ts";
import { closeFd, dialTcp } from "./sockets.ts";

/** A connect that failed or timed out; nothing was sent. */
export class ConnectError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConnectError";
  }
}

/**
 * Connects to `address`:`port`; resolves with the connected nonblocking socket (Nagle off),
 * which the caller owns, or rejects with a {@linkcode ConnectError} after a failure or
 * `timeoutMs`, the socket closed. When `signal` aborts first, the socket is closed and it
 * rejects with the signal's reason (no {@linkcode ConnectError}: the endpoint did not fail), as
 * it does with the loop's error, the socket closed, if the loop will not take the socket.
 * Settles on the reactor's thread and has it let JavaScript run at once.
 */
export function connectTcp(
  reactor: Reactor,
  address: string,
  port: number,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<number> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    let fd: number;
    try {
      fd = dialTcp(address, port);
    } catch (e) {
      reject(new ConnectError((e as Error).message));
      return;
    }
    const finish = (error: string | null, aborted = false) => {
      timer.cancel();
      signal?.removeEventListener("abort", onAbort);
      reactor.remove(fd);
      reactor.settle();
      if (error === null) return resolve(fd);
      closeFd(fd);
      reject(aborted ? signal!.reason : new ConnectError(error));
    };
    const onAbort = () => finish("aborted", true);
    signal?.addEventListener("abort", onAbort, { once: true });
    const timer = reactor.after(timeoutMs, () => finish(`connect timed out after ${timeoutMs} ms`));
    const value = new Int32Array(1);
    const len = new Uint32Array([4]);
    const watch = (events: number) => {
      if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      const { call, describe } = libcNet();
      len[0] = 4;
      call.getsockopt(
        fd,
        SOL_SOCKET,
        SO_ERROR,
        new Uint8Array(value.buffer),
        new Uint8Array(len.buffer),
      );
      finish(value[0] === 0 ? null : `connect ${address}:${port} failed: ${describe(value[0]!)}`);
    };
    try {
      reactor.add(fd, EPOLLOUT, watch);
    } catch (e) {
      // The loop would not take the socket (epoll_ctl failed): not the endpoint's failure.
      timer.cancel();
      signal?.removeEventListener("abort", onAbort);
      closeFd(fd);
      reject(e);
    }
  });
}
