/**
 * Minimal forwarders on meshd's own event loop (`src/engine/`: libc's epoll and nonblocking
 * sockets through FFI, a handler per readiness event) instead of Deno's I/O: a measurement
 * tool, not product code. The data plane benchmark (`dataplane_bench.ts`, target `ffi`)
 * measures the `tcp` and `udp` modes beside the bare Deno forwarders of `l4_forwarders.ts`
 * (target `ceiling`), to show how much of the userspace TCP and UDP gap is Deno's I/O layer.
 * Each forwards everything to one backend, with no routing, access control, metrics, logs,
 * retries or timeouts. One thread.
 *
 *   deno run --allow-ffi tests/bench/ffi_forwarders.ts MODE [--spin-ms N] --listen IP:PORT --backend IP:PORT
 *
 * Modes:
 * - `tcp`: a {@linkcode TcpRelay} per client connection, to a nonblocking connect to the
 *   backend: no promise on the path.
 * - `udp`: a {@linkcode UdpRelay}: a client's first datagram opens a socket connected to the
 *   backend; its replies go back to the client from the listener's socket.
 * - `tcp-promise`: connections with Deno's `read`/`write` promise API over the same loop (an
 *   edge-triggered handler settles the read or write that waits), and `l4_forwarders.ts`'s copy
 *   loop: what promises cost on their own.
 * - `--spin-ms N`: the loop's `spinMs` (default 1). With 0, it waits on Deno's blocking pool
 *   (a promise, another thread) whenever nothing is ready at once, as a loop sharing the
 *   thread with Deno's own I/O would have to.
 *
 * @module
 */
import { Reactor } from "../../src/engine/reactor.ts";
import { TcpRelay } from "../../src/engine/tcp_relay.ts";
import { UdpRelay } from "../../src/engine/udp_relay.ts";
import { acceptOne, bindSocket, closeFd, dialTcp } from "../../src/engine/sockets.ts";
import {
  EAGAIN,
  EPOLLERR,
  EPOLLET,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  libcNet,
  SHUT_WR,
} from "../../ffi/libc_net.ts";

function hostPort(s: string): [string, number] {
  const i = s.lastIndexOf(":");
  return [s.slice(0, i), Number(s.slice(i + 1))];
}

function tcp(reactor: Reactor, listen: string, backend: string): void {
  const lfd = bindSocket("tcp", ...hostPort(listen));
  const [address, port] = hostPort(backend);
  reactor.add(lfd, EPOLLIN, () => {
    for (let c = acceptOne(lfd); c; c = acceptOne(lfd)) {
      let up: number;
      try {
        up = dialTcp(address, port);
      } catch {
        closeFd(c.fd);
        continue;
      }
      new TcpRelay(reactor, c.fd, up, { onEnd: () => {} });
    }
  });
}

function udp(reactor: Reactor, listen: string, backend: string): void {
  const [address, port] = hostPort(backend);
  new UdpRelay(reactor, bindSocket("udp", ...hostPort(listen)), {
    open: () => ({ address, port }),
  });
}

/** A TCP connection with the `read`/`write` promise API of a `Deno.Conn`, on `reactor`. */
export class PromiseConn {
  readonly #fd: number;
  readonly #reactor: Reactor;
  #onReadable: (() => void) | null = null;
  #onWritable: (() => void) | null = null;
  constructor(reactor: Reactor, fd: number) {
    this.#fd = fd;
    this.#reactor = reactor;
    reactor.add(fd, EPOLLIN | EPOLLOUT | EPOLLET, (events) => {
      const read = events & (EPOLLIN | EPOLLHUP | EPOLLERR) ? this.#onReadable : null;
      const write = events & (EPOLLOUT | EPOLLHUP | EPOLLERR) ? this.#onWritable : null;
      if (read) this.#onReadable = null, read();
      if (write) this.#onWritable = null, write();
      if (read || write) reactor.settle();
    });
  }
  async read(p: Uint8Array): Promise<number | null> {
    const { call, errno } = libcNet();
    for (;;) {
      const n = Number(call.read(this.#fd, p, BigInt(p.length)));
      if (n > 0) return n;
      if (n === 0) return null;
      if (errno() !== EAGAIN) throw new Error(`read failed: errno ${errno()}`);
      await new Promise<void>((res) => this.#onReadable = res);
    }
  }
  async write(p: Uint8Array): Promise<number> {
    const { call, errno } = libcNet();
    for (;;) {
      const n = Number(call.write(this.#fd, p, BigInt(p.length)));
      if (n >= 0) return n;
      if (errno() !== EAGAIN) throw new Error(`write failed: errno ${errno()}`);
      await new Promise<void>((res) => this.#onWritable = res);
    }
  }
  closeWrite(): void {
    libcNet().call.shutdown(this.#fd, SHUT_WR);
  }
  close(): void {
    this.#reactor.remove(this.#fd);
    closeFd(this.#fd);
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

function tcpPromise(reactor: Reactor, listen: string, backend: string): void {
  const lfd = bindSocket("tcp", ...hostPort(listen));
  const [address, port] = hostPort(backend);
  reactor.add(lfd, EPOLLIN, () => {
    for (let c = acceptOne(lfd); c; c = acceptOne(lfd)) {
      const a = new PromiseConn(reactor, c.fd);
      const b = new PromiseConn(reactor, dialTcp(address, port));
      Promise.all([copy(a, b), copy(b, a)]).catch(() => {}).finally(() => (a.close(), b.close()));
    }
  });
}

if (import.meta.main) {
  const [mode, ...rest] = Deno.args;
  const opt = (name: string) => rest.includes(name) ? rest[rest.indexOf(name) + 1] ?? "" : "";
  const listen = opt("--listen");
  const backend = opt("--backend");
  const spin = opt("--spin-ms");
  const modes = { tcp, udp, "tcp-promise": tcpPromise };
  if (!(mode! in modes) || !listen || !backend || (spin !== "" && !(Number(spin) >= 0))) {
    console.error(
      "usage: ffi_forwarders.ts tcp|udp|tcp-promise [--spin-ms N] " +
        "--listen IP:PORT --backend IP:PORT",
    );
    Deno.exit(2);
  }
  const reactor = new Reactor({ spinMs: spin === "" ? 1 : Number(spin) });
  modes[mode as keyof typeof modes](reactor, listen, backend);
  await reactor.run();
}
