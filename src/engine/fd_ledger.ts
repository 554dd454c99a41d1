/**
 * Which file descriptors the engine of this isolate holds, kept in memory shared with the
 * isolate that started it. The engine opens its sockets through libc, outside Deno's resource
 * table: when its Worker dies (an uncaught error, or ended for not answering), Deno closes
 * nothing of them. A listening socket left open in its SO_REUSEPORT group still takes its share
 * of new connections, which no one accepts. The pool closes what the ledger lists instead
 * ({@linkcode closeHeld}).
 *
 * A descriptor is marked once it is open and unmarked before it is closed, so a marked one is
 * always this engine's: closing it from outside once the engine's thread is gone cannot close
 * a descriptor the process has given to something else since.
 *
 * @module
 */

let ledger: Uint8Array | null = null;

/** Records this isolate's descriptors in `buffer` (one byte each, by number) from now on. */
export function useFdLedger(buffer: SharedArrayBuffer): void {
  ledger = new Uint8Array(buffer);
}

/** `fd` was opened (a descriptor past the ledger's end is not recorded). */
export function held(fd: number): void {
  if (ledger !== null && fd >= 0 && fd < ledger.length) Atomics.store(ledger, fd, 1);
}

/** `fd` is about to be closed. */
export function released(fd: number): void {
  if (ledger !== null && fd >= 0 && fd < ledger.length) Atomics.store(ledger, fd, 0);
}

/**
 * Closes, with `close`, every descriptor `buffer` lists as held by an engine whose thread has
 * stopped, and clears them; returns how many.
 *
 * @example
 * ```ts
 * const ledger = new SharedArrayBuffer(fdLimit);
 * worker.postMessage({ t: "start", fdLedger: ledger });
 * // the worker died and was ended:
 * closeHeld(ledger, (fd) => libcNet().call.close(fd));
 * ```
 */
export function closeHeld(buffer: SharedArrayBuffer, close: (fd: number) => void): number {
  const marks = new Uint8Array(buffer);
  let n = 0;
  for (let fd = 0; fd < marks.length; fd++) {
    if (Atomics.exchange(marks, fd, 0) === 0) continue;
    close(fd);
    n++;
  }
  return n;
}
