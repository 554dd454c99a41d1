/**
 * Minimal forwarders whose I/O goes through libc with `Deno.dlopen` (epoll, nonblocking
 * sockets) instead of Deno's ops: a measurement tool, not product code. The data plane
 * benchmark (`dataplane_bench.ts`, target `ffi`) measures the first two beside the bare Deno
 * forwarders of `l4_forwarders.ts` (target `ceiling`), to show how much of the userspace TCP
 * and UDP gap is Deno's I/O layer (tokio, the op layer, a promise per read and write) and how
 * much the work itself. Each forwards everything to one backend, with no routing, access
 * control, metrics, logs, retries or timeouts. One thread; IPv4 only.
 *
 *   deno run --allow-ffi tests/bench/ffi_forwarders.ts MODE --listen IP:PORT --backend IP:PORT
 *
 * Modes:
 * - `tcp`: one loop blocks in `epoll_wait` and calls a handler per ready socket: no promise
 *   on the path. A nonblocking connect per client connection; each way, one read and one write
 *   per readiness event; what a write could not take is kept, and that way's reads wait until
 *   it is written; a read of 0 bytes half-closes the other side.
 * - `udp`: the same loop. A client's first datagram opens a socket connected to the backend
 *   (found again by the client's address and port as one number); its replies go back to the
 *   client from the listener's socket.
 * - `tcp-promise`: connections with Deno's `read`/`write` promise API over the same libc
 *   calls, and `l4_forwarders.ts`'s copy loop. Readiness is edge-triggered; a read or write
 *   that would block waits for it. After each batch of events the loop awaits a resolved
 *   promise 16 times, so the copy loops' continuations run, and it never blocks for more than
 *   20 ms: what measures the promise layer alone, not a design for a product.
 * - `--nonblocking-wait` (with `tcp` or `udp`): `epoll_wait` as a `nonblocking` FFI call, which
 *   Deno runs on a thread of its blocking pool and answers with a promise; the loop awaits it.
 *   This is how an epoll loop could share a thread with Deno's own I/O.
 *
 * @module
 */

const WAIT = ["i32", "buffer", "i32", "i32"] as const;
const libc = Deno.dlopen("libc.so.6", {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  recvfrom: {
    parameters: ["i32", "buffer", "usize", "i32", "buffer", "buffer"],
    result: "isize",
  },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: WAIT, result: "i32" },
  epoll_wait_nonblocking: {
    name: "epoll_wait",
    parameters: WAIT,
    result: "i32",
    nonblocking: true,
  },
  __errno_location: { parameters: [], result: "pointer" },
});
const c = libc.symbols;

const AF_INET = 2, SOCK_STREAM = 1, SOCK_DGRAM = 2, SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000, SOL_SOCKET = 1, SO_REUSEADDR = 2, IPPROTO_TCP = 6;
const TCP_NODELAY = 1, SHUT_WR = 1, EAGAIN = 11, EINPROGRESS = 115, EINTR = 4;
const EPOLLIN = 1, EPOLLOUT = 4, EPOLLERR = 8, EPOLLHUP = 16, EPOLLET = 1 << 31;
const EPOLL_CTL_ADD = 1, EPOLL_CTL_DEL = 2, EPOLL_CTL_MOD = 3;
const NONBLOCKING_FD = SOCK_NONBLOCK | SOCK_CLOEXEC;

const errnoAt = c.__errno_location()!;
const errno = () => new Deno.UnsafePointerView(errnoAt).getInt32();

function must(what: string, r: number): number {
  if (r < 0) throw new Error(`${what} failed: errno ${errno()}`);
  return r;
}

/** A `struct sockaddr_in` for `IP:PORT`. */
function sockaddr(s: string): Uint8Array {
  const i = s.lastIndexOf(":");
  const a = new Uint8Array(16);
  new DataView(a.buffer).setUint16(0, AF_INET, true);
  new DataView(a.buffer).setUint16(2, Number(s.slice(i + 1)), false);
  s.slice(0, i).split(".").forEach((o, k) => a[4 + k] = Number(o));
  return a;
}

const ONE = new Uint8Array(new Int32Array([1]).buffer);
const ep = must("epoll_create1", c.epoll_create1(0));
// `struct epoll_event` is packed on x86-64: 4 bytes of events, then 8 of data (the fd here).
const ev = new Uint8Array(12);
const evView = new DataView(ev.buffer);
function ctl(op: number, fd: number, events: number): void {
  evView.setUint32(0, events, true);
  evView.setUint32(4, fd, true);
  must("epoll_ctl", c.epoll_ctl(ep, op, fd, ev));
}

function listenOn(type: number, addr: Uint8Array): number {
  const fd = must("socket", c.socket(AF_INET, type | NONBLOCKING_FD, 0));
  must("setsockopt", c.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, ONE, 4));
  must("bind", c.bind(fd, addr, 16));
  if (type === SOCK_STREAM) must("listen", c.listen(fd, 1024));
  return fd;
}

/** A nonblocking TCP socket connecting to `to`, Nagle off; -1 when that failed at once. */
function dial(to: Uint8Array): number {
  const fd = c.socket(AF_INET, SOCK_STREAM | NONBLOCKING_FD, 0);
  if (fd < 0) return -1;
  if (c.connect(fd, to, 16) < 0 && errno() !== EINPROGRESS) {
    c.close(fd);
    return -1;
  }
  c.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, ONE, 4);
  return fd;
}

const MAX_EVENTS = 256;
const events = new Uint8Array(MAX_EVENTS * 12);
const eventsView = new DataView(events.buffer);

/** Calls `handle` for each of the `n` events `epoll_wait` put in `events` (n < 0: its error). */
function dispatch(n: number, handle: (fd: number, events: number) => void): void {
  if (n < 0) {
    if (errno() === EINTR) return;
    must("epoll_wait", n);
  }
  for (let i = 0; i < n; i++) {
    handle(eventsView.getInt32(i * 12 + 4, true), eventsView.getUint32(i * 12, true));
  }
}

/** Calls `handle(fd, events)` for every readiness event, for good. */
async function loop(
  handle: (fd: number, events: number) => void,
  nonblockingWait: boolean,
): Promise<never> {
  for (;;) {
    const n = nonblockingWait
      ? await c.epoll_wait_nonblocking(ep, events, MAX_EVENTS, -1)
      : c.epoll_wait(ep, events, MAX_EVENTS, -1);
    dispatch(n, handle);
  }
}

/** One way of a TCP pair: what `to` has not taken yet, and whether `from` ended. */
interface Way {
  from: number;
  to: number;
  pending: Uint8Array | null;
  eof: boolean;
}
/** A client connection and its backend connection; `masks` has each fd's epoll mask now. */
interface Pair {
  up: Way;
  down: Way;
  masks: Map<number, number>;
}

function tcp(listen: string, backend: string, nonblockingWait: boolean): Promise<never> {
  const lfd = listenOn(SOCK_STREAM, sockaddr(listen));
  const to = sockaddr(backend);
  const pairs = new Map<number, Pair>();
  const buf = new Uint8Array(64 * 1024);
  ctl(EPOLL_CTL_ADD, lfd, EPOLLIN);

  const closePair = (p: Pair) => {
    for (const fd of [p.up.from, p.up.to]) {
      if (!pairs.delete(fd)) continue;
      c.epoll_ctl(ep, EPOLL_CTL_DEL, fd, ev);
      c.close(fd);
    }
  };
  /** Writes what `w` holds: true when all of it went, false when some waits, null on error. */
  const flush = (w: Way): boolean | null => {
    const p = w.pending!;
    const n = Number(c.write(w.to, p, BigInt(p.length)));
    if (n < 0) return errno() === EAGAIN ? false : null;
    w.pending = n === p.length ? null : p.subarray(n);
    return w.pending === null;
  };
  /** Each fd reads while its way holds nothing and is open, and waits to write what it holds. */
  const remask = (p: Pair) => {
    for (const [fd, reading, writing] of [[p.up.from, p.up, p.down], [p.up.to, p.down, p.up]]) {
      const mask = (reading.eof || reading.pending ? 0 : EPOLLIN) |
        (writing.pending ? EPOLLOUT : 0);
      if (p.masks.get(fd) === mask) continue;
      p.masks.set(fd, mask);
      ctl(EPOLL_CTL_MOD, fd, mask);
    }
  };
  const accept = () => {
    for (;;) {
      const cfd = c.accept4(lfd, null, null, NONBLOCKING_FD);
      if (cfd < 0) return;
      const ufd = dial(to);
      if (ufd < 0) {
        c.close(cfd);
        continue;
      }
      c.setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, ONE, 4);
      const p: Pair = {
        up: { from: cfd, to: ufd, pending: null, eof: false },
        down: { from: ufd, to: cfd, pending: null, eof: false },
        // EPOLLOUT on the backend until the connect is done; remask drops it.
        masks: new Map([[cfd, EPOLLIN], [ufd, EPOLLIN | EPOLLOUT]]),
      };
      pairs.set(cfd, p).set(ufd, p);
      ctl(EPOLL_CTL_ADD, cfd, EPOLLIN);
      ctl(EPOLL_CTL_ADD, ufd, EPOLLIN | EPOLLOUT);
    }
  };

  return loop((fd, events) => {
    if (fd === lfd) return accept();
    const p = pairs.get(fd);
    if (!p) return;
    const reading = fd === p.up.from ? p.up : p.down;
    const writing = fd === p.up.from ? p.down : p.up;
    if (events & EPOLLOUT && writing.pending) {
      const done = flush(writing);
      if (done === null) return closePair(p);
      if (done && writing.eof) c.shutdown(writing.to, SHUT_WR);
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR) && !reading.eof && !reading.pending) {
      const n = Number(c.read(fd, buf, BigInt(buf.length)));
      if (n < 0 && errno() !== EAGAIN) return closePair(p);
      if (n === 0) {
        reading.eof = true;
        c.shutdown(reading.to, SHUT_WR);
      } else if (n > 0) {
        reading.pending = buf.subarray(0, n);
        const done = flush(reading);
        if (done === null) return closePair(p);
        // What stays must outlive the next read into `buf`.
        if (!done) reading.pending = reading.pending!.slice();
      }
    }
    if (p.up.eof && p.down.eof && !p.up.pending && !p.down.pending) return closePair(p);
    remask(p);
  }, nonblockingWait);
}

function udp(listen: string, backend: string, nonblockingWait: boolean): Promise<never> {
  const lfd = listenOn(SOCK_DGRAM, sockaddr(listen));
  const to = sockaddr(backend);
  /** Flow sockets by the client's address and port, and each flow socket's client address. */
  const flows = new Map<number, number>();
  const clients = new Map<number, Uint8Array>();
  const buf = new Uint8Array(65_535);
  const from = new Uint8Array(16);
  const fromView = new DataView(from.buffer);
  const fromLen = new Uint32Array(1);
  const fromLenBytes = new Uint8Array(fromLen.buffer);
  ctl(EPOLL_CTL_ADD, lfd, EPOLLIN);
  const receive = () => {
    for (;;) {
      fromLen[0] = 16;
      const n = Number(c.recvfrom(lfd, buf, BigInt(buf.length), 0, from, fromLenBytes));
      if (n < 0) return;
      const key = fromView.getUint32(4, false) * 65536 + fromView.getUint16(2, false);
      let ufd = flows.get(key);
      if (ufd === undefined) {
        ufd = must("socket", c.socket(AF_INET, SOCK_DGRAM | NONBLOCKING_FD, 0));
        must("connect", c.connect(ufd, to, 16));
        flows.set(key, ufd);
        clients.set(ufd, from.slice());
        ctl(EPOLL_CTL_ADD, ufd, EPOLLIN);
      }
      c.write(ufd, buf, BigInt(n));
    }
  };
  return loop((fd) => {
    if (fd === lfd) return receive();
    const client = clients.get(fd);
    if (!client) return;
    for (;;) {
      const n = Number(c.read(fd, buf, BigInt(buf.length)));
      if (n < 0) return;
      c.sendto(lfd, buf, BigInt(n), 0, client, 16);
    }
  }, nonblockingWait);
}

/** An fd's edge-triggered readiness, and the read or write waiting for it. */
interface Ready {
  onReadable: (() => void) | null;
  onWritable: (() => void) | null;
}
const waiting = new Map<number, Ready>();

/** A TCP connection with the `read`/`write` promise API of a `Deno.Conn`. */
class PromiseConn {
  readonly #fd: number;
  readonly #ready: Ready = { onReadable: null, onWritable: null };
  constructor(fd: number) {
    this.#fd = fd;
    waiting.set(fd, this.#ready);
    ctl(EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLOUT | EPOLLET);
  }
  async read(p: Uint8Array): Promise<number | null> {
    for (;;) {
      const n = Number(c.read(this.#fd, p, BigInt(p.length)));
      if (n > 0) return n;
      if (n === 0) return null;
      if (errno() !== EAGAIN) throw new Error(`read failed: errno ${errno()}`);
      await new Promise<void>((res) => this.#ready.onReadable = res);
    }
  }
  async write(p: Uint8Array): Promise<number> {
    for (;;) {
      const n = Number(c.write(this.#fd, p, BigInt(p.length)));
      if (n >= 0) return n;
      if (errno() !== EAGAIN) throw new Error(`write failed: errno ${errno()}`);
      await new Promise<void>((res) => this.#ready.onWritable = res);
    }
  }
  closeWrite(): void {
    c.shutdown(this.#fd, SHUT_WR);
  }
  close(): void {
    if (waiting.delete(this.#fd)) c.close(this.#fd);
  }
}

async function copy(from: PromiseConn, to: PromiseConn): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await from.read(buf);
    if (n === null) break;
    let off = 0;
    while (off < n) off += await to.write(buf.subarray(off, n));
  }
  to.closeWrite();
}

async function tcpPromise(listen: string, backend: string): Promise<never> {
  const lfd = listenOn(SOCK_STREAM, sockaddr(listen));
  const to = sockaddr(backend);
  ctl(EPOLL_CTL_ADD, lfd, EPOLLIN);
  const accept = () => {
    for (;;) {
      const cfd = c.accept4(lfd, null, null, NONBLOCKING_FD);
      if (cfd < 0) return;
      const ufd = dial(to);
      if (ufd < 0) {
        c.close(cfd);
        continue;
      }
      c.setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, ONE, 4);
      const a = new PromiseConn(cfd), b = new PromiseConn(ufd);
      Promise.all([copy(a, b), copy(b, a)]).catch(() => {}).finally(() => (a.close(), b.close()));
    }
  };
  for (;;) {
    dispatch(c.epoll_wait(ep, events, MAX_EVENTS, 20), (fd, e) => {
      if (fd === lfd) return accept();
      const r = waiting.get(fd);
      if (!r) return;
      const read = e & (EPOLLIN | EPOLLHUP | EPOLLERR) ? r.onReadable : null;
      const write = e & (EPOLLOUT | EPOLLHUP | EPOLLERR) ? r.onWritable : null;
      if (read) r.onReadable = null, read();
      if (write) r.onWritable = null, write();
    });
    for (let k = 0; k < 16; k++) await null;
  }
}

if (import.meta.main) {
  const [mode, ...rest] = Deno.args;
  const opt = (name: string) => rest[rest.indexOf(name) + 1] ?? "";
  const listen = opt("--listen");
  const backend = opt("--backend");
  const nonblockingWait = rest.includes("--nonblocking-wait");
  if (!["tcp", "udp", "tcp-promise"].includes(mode ?? "") || !listen || !backend) {
    console.error(
      "usage: ffi_forwarders.ts tcp|udp|tcp-promise [--nonblocking-wait] " +
        "--listen IP:PORT --backend IP:PORT",
    );
    Deno.exit(2);
  }
  await (mode === "tcp"
    ? tcp(listen, backend, nonblockingWait)
    : mode === "udp"
    ? udp(listen, backend, nonblockingWait)
    : tcpPromise(listen, backend));
}
