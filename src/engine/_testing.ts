/**
 * Test helpers for the engine: a loop that can refuse sockets, and a count of the sockets this
 * process holds.
 *
 * @module
 */
import { type Handler, Reactor } from "./reactor.ts";

/**
 * A {@linkcode Reactor} whose `add` fails, as epoll_ctl does (ENOSPC), once `refuse` is set, and
 * whose `modify` fails (ENOMEM) once `refuseModify` is.
 */
export class RefusingReactor extends Reactor {
  refuse = false;
  refuseModify = false;

  override add(fd: number, interest: number, handler: Handler): void {
    if (this.refuse) throw new Error("epoll_ctl failed: No space left on device (errno 28)");
    super.add(fd, interest, handler);
  }

  override modify(fd: number, interest: number): void {
    if (this.refuseModify) throw new Error("epoll_ctl failed: Cannot allocate memory (errno 12)");
    super.modify(fd, interest);
  }
}

/** The descriptors of the sockets this process holds now. */
export function socketFds(): Set<number> {
  const fds = new Set<number>();
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${e.name}`).startsWith("socket:")) {
        fds.add(Number(e.name));
      }
    } catch { /* closed since it was listed */ }
  }
  return fds;
}

/** Sockets this process holds now. */
export function openSockets(): number {
  return socketFds().size;
}
