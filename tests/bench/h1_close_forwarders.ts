/**
 * The least a process can do to proxy HTTP/1.1 with a new client connection per request and
 * pooled backend connections, as meshd and HAProxy (`http-reuse always`) do: a measurement tool
 * for `h1_ceiling_bench.ts`, not a proxy. Each request is taken from one read, its
 * `Connection: close` line is dropped so the backend connection stays open, and the response,
 * also taken from one read, goes back with `Connection: close` added; then the client
 * connection is closed and the backend one goes back to the pool. No routing, timeout or
 * error handling beyond closing. Right only for a load whose messages each fit in one read,
 * such as wrk's.
 *
 *   deno run --allow-net --allow-ffi tests/bench/h1_close_forwarders.ts deno|ffi|ffi-promise LISTEN_HOST LISTEN_PORT BACKEND_HOST BACKEND_PORT
 *
 * - `deno`: Deno's I/O (`Deno.listen`, `read`/`write` promises), as meshd's HTTP proxy uses.
 * - `ffi`: meshd's own event loop (`src/engine/`), a handler per readiness event, no promise.
 * - `ffi-promise`: `deno`'s code on that loop, through `read`/`write` promises
 *   (`ffi_forwarders.ts`'s `PromiseConn`).
 *
 * @module
 */
import { Reactor } from "../../src/engine/reactor.ts";
import { acceptOne, bindSocket, closeFd, dialTcp } from "../../src/engine/sockets.ts";
import { EAGAIN, EPOLLIN, EPOLLOUT, libcNet } from "../../ffi/libc_net.ts";
import { PromiseConn } from "./ffi_forwarders.ts";

const [mode, listenHost, listenPort, backendHost, backendPort] = Deno.args;

const CLOSE_LINE = new TextEncoder().encode("Connection: close\r\n");

/** The request without its `Connection: close` line (wrk writes it as given). */
function keepBackendOpen(req: Uint8Array): Uint8Array {
  const at = indexOfLine(req, "connection: close\r\n");
  if (at < 0) return req;
  const out = new Uint8Array(req.length - CLOSE_LINE.length);
  out.set(req.subarray(0, at));
  out.set(req.subarray(at + CLOSE_LINE.length), at);
  return out;
}

/** The response with a `Connection: close` line at the end of its head. */
function closeClient(res: Uint8Array): Uint8Array {
  let end = -1;
  for (let i = 0; i + 3 < res.length; i++) {
    if (res[i] === 13 && res[i + 1] === 10 && res[i + 2] === 13 && res[i + 3] === 10) {
      end = i + 2;
      break;
    }
  }
  if (end < 0) return res;
  const out = new Uint8Array(res.length + CLOSE_LINE.length);
  out.set(res.subarray(0, end));
  out.set(CLOSE_LINE, end);
  out.set(res.subarray(end), end + CLOSE_LINE.length);
  return out;
}

/** Where a line (lower case, after a CRLF) starts in `bytes`, case-insensitively; -1 if none. */
function indexOfLine(bytes: Uint8Array, lower: string): number {
  outer: for (let i = 2; i + lower.length <= bytes.length; i++) {
    if (bytes[i - 1] !== 10) continue;
    for (let j = 0; j < lower.length; j++) {
      if ((bytes[i + j]! | 0x20) !== (lower.charCodeAt(j) | 0x20)) continue outer;
    }
    return i;
  }
  return -1;
}

interface Conn {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
}

/** Serves one client connection: the same code over Deno's connections or `PromiseConn`s. */
function server(connect: () => Promise<Conn>): (client: Conn) => Promise<void> {
  const pool: Conn[] = [];
  return async (client) => {
    const buf = new Uint8Array(16 * 1024);
    let backend: Conn | undefined;
    try {
      const n = await client.read(buf);
      if (n === null) return;
      backend = pool.pop() ?? await connect();
      await backend.write(keepBackendOpen(buf.subarray(0, n)));
      const res = new Uint8Array(64 * 1024);
      const m = await backend.read(res);
      if (m === null) return;
      await client.write(closeClient(res.subarray(0, m)));
      pool.push(backend);
      backend = undefined;
    } catch {
      /* either side went away */
    } finally {
      try {
        client.close();
      } catch { /* closed */ }
      try {
        backend?.close();
      } catch { /* closed */ }
    }
  };
}

function viaDeno(): void {
  const serve = server(() => Deno.connect({ hostname: backendHost!, port: Number(backendPort) }));
  (async () => {
    for await (const c of Deno.listen({ hostname: listenHost!, port: Number(listenPort) })) {
      c.setNoDelay(true);
      serve(c);
    }
  })();
}

/** The code of `deno` on meshd's event loop: `read`/`write` promises over its handlers. */
function viaEnginePromises(): void {
  const reactor = new Reactor();
  const serve = server(() =>
    Promise.resolve(new PromiseConn(reactor, dialTcp(backendHost!, Number(backendPort))))
  );
  const lfd = bindSocket("tcp", listenHost!, Number(listenPort));
  reactor.add(lfd, EPOLLIN, () => {
    for (let c = acceptOne(lfd); c; c = acceptOne(lfd)) serve(new PromiseConn(reactor, c.fd));
    reactor.settle();
  });
  reactor.run();
}

function viaEngine(): void {
  const { call, errno } = libcNet();
  const reactor = new Reactor();
  const buf = new Uint8Array(64 * 1024);
  const read = (fd: number): number => Number(call.read(fd, buf, BigInt(buf.length)));
  const write = (fd: number, p: Uint8Array): number => Number(call.write(fd, p, BigInt(p.length)));
  const drop = (fd: number): void => {
    reactor.remove(fd);
    closeFd(fd);
  };
  interface Backend {
    fd: number;
    client: number;
    pending: Uint8Array | null;
  }
  const pool: Backend[] = [];
  const onBackend = (b: Backend): void => {
    if (b.pending) {
      // Connected: send what waited for it.
      reactor.modify(b.fd, EPOLLIN);
      write(b.fd, b.pending);
      b.pending = null;
      return;
    }
    const m = read(b.fd);
    if (m < 0 && errno() === EAGAIN) return;
    const client = b.client;
    b.client = -1;
    if (m <= 0) {
      drop(b.fd);
      const i = pool.indexOf(b);
      if (i >= 0) pool.splice(i, 1);
      if (client >= 0) closeFd(client);
      return;
    }
    if (client < 0) return;
    write(client, closeClient(buf.subarray(0, m)));
    closeFd(client);
    pool.push(b);
  };
  /** Serves a readable client; false when nothing was there to read yet. */
  const onClient = (fd: number, listed: boolean): boolean => {
    const n = read(fd);
    if (n < 0 && errno() === EAGAIN) return false;
    if (listed) reactor.remove(fd);
    if (n <= 0) {
      closeFd(fd);
      return true;
    }
    const req = keepBackendOpen(buf.slice(0, n));
    let b = pool.pop();
    if (b) {
      b.client = fd;
      write(b.fd, req);
      return true;
    }
    const nb: Backend = {
      fd: dialTcp(backendHost!, Number(backendPort)),
      client: fd,
      pending: req,
    };
    reactor.add(nb.fd, EPOLLOUT, () => onBackend(nb));
    b = nb;
    return true;
  };
  const lfd = bindSocket("tcp", listenHost!, Number(listenPort));
  reactor.add(lfd, EPOLLIN, () => {
    for (let c = acceptOne(lfd); c; c = acceptOne(lfd)) {
      const fd = c.fd;
      // The request has mostly come by the time the connection is accepted: read it at once,
      // as HAProxy does, and put the socket in the epoll set only when it has not.
      if (!onClient(fd, false)) reactor.add(fd, EPOLLIN, () => onClient(fd, true));
    }
  });
  reactor.run();
}

if (mode === "deno") viaDeno();
else if (mode === "ffi-promise") viaEnginePromises();
else if (mode === "ffi") viaEngine();
else {
  console.error(
    "usage: h1_close_forwarders.ts deno|ffi|ffi-promise LISTEN_HOST LISTEN_PORT BACKEND_HOST BACKEND_PORT",
  );
  Deno.exit(2);
}
