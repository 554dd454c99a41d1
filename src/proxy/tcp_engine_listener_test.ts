/**
 * The TCP listener on meshd's own loop, on 127.0.62.2 (its drain, on 127.0.63.2): a route built
 * from a MeshConfig, raw
 * echo backends, real connections from the test (this isolate also runs the loop, which gives
 * the thread up whenever it has nothing to do).
 */
import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { freePort, waitFor } from "../_testing.ts";
import { Reactor } from "../engine/reactor.ts";
import { openSockets, RefusingReactor, socketFds } from "../engine/_testing.ts";
import { EndpointPool } from "./endpoint_pool.ts";
import { buildRouteTable, newRouteState, type Route } from "./route_table.ts";
import { TcpEngineListener, type TcpEngineListenerOptions } from "./tcp_engine_listener.ts";
import { echoOver, tcpEchoBackend } from "./_testing.ts";
import { AccessLog } from "./access_log.ts";
import { ConnectionLimiter } from "./conn_limiter.ts";
import { bindSocket, closeFd, dialTcp, localAddress } from "../engine/sockets.ts";
import { AF_INET, libcNet, SOCK_NONBLOCK, SOCK_STREAM, sockaddr } from "../../ffi/libc_net.ts";

const HOST = "127.0.62.2";
const quiet = new Logger({ level: "error", write: () => {} });

/** An echo backend on `HOST`. */
const echoBackend = () => tcpEchoBackend(HOST);

/**
 * A route to `ports` (endpoints on `options.hostname`, default `HOST`) and a listener for it on
 * a running loop.
 */
async function withListener(
  ports: number[],
  options: Partial<TcpEngineListenerOptions> & { accessLog?: AccessLog },
  fn: (listener: TcpEngineListener, route: Route) => Promise<void>,
): Promise<void> {
  const { accessLog, ...listenerOptions } = options;
  const host = options.hostname ?? HOST;
  const listenPort = freePort(host);
  const state = newRouteState({ accessLog: accessLog ?? null });
  const table = buildRouteTable(
    meshConfig([{
      name: "echo",
      ports: [{
        port: 7,
        protocol: "tcp",
        listenPort,
        endpoints: ports.map((p) => endpoint(host, p)),
      }],
    }]),
    state,
  );
  const route = table.tcp.get(listenPort)!;
  const reactor = new Reactor();
  const listener = new TcpEngineListener({
    reactor,
    hostname: host,
    port: listenPort,
    route: () => route,
    pool: state.pool,
    logger: quiet,
    ...listenerOptions,
  });
  const running = reactor.run();
  try {
    await fn(listener, route);
  } finally {
    await listener.close(true);
    reactor.stop();
    await running;
  }
}

Deno.test("TcpEngineListener relays both ways and counts the bytes of each in its route's metrics", async () => {
  const backend = echoBackend();
  try {
    await withListener([backend.port], {}, async (listener, route) => {
      const conn = await Deno.connect({ hostname: HOST, port: listener.addr.port });
      assert.equal(await echoOver(conn, "x".repeat(1000)), "x".repeat(1000));
      assert.equal(await echoOver(conn, "y".repeat(234)), "y".repeat(234));
      await conn.closeWrite();
      assert.equal(await conn.read(new Uint8Array(1)), null, "the backend's end came through");
      conn.close();
      await waitFor(
        "the connection to end in the listener",
        () => listener.open === 0 || undefined,
      );
      assert.equal(route.metrics.bytesIn.value, 1234);
      assert.equal(route.metrics.bytesOut.value, 1234);
      assert.equal(route.metrics.requests.value, 1);
    });
  } finally {
    await backend.close();
  }
});

Deno.test("TcpEngineListener tries another endpoint when one refuses the connect", async () => {
  const backend = echoBackend();
  const gone = Deno.listen({ hostname: HOST, port: 0 });
  const refusing = gone.addr.port;
  gone.close();
  try {
    await withListener([refusing, backend.port], {}, async (listener) => {
      // Each connection reaches the live endpoint, whichever the pool picks first.
      for (let i = 0; i < 4; i++) {
        const conn = await Deno.connect({ hostname: HOST, port: listener.addr.port });
        assert.equal(await echoOver(conn, `hello ${i}`), `hello ${i}`);
        conn.close();
      }
      assert.equal(backend.connections(), 4);
    });
  } finally {
    await backend.close();
  }
});

Deno.test("TcpEngineListener closes the client when no endpoint accepts", async () => {
  const gone = Deno.listen({ hostname: HOST, port: 0 });
  const refusing = gone.addr.port;
  gone.close();
  await withListener([refusing], {}, async (listener, route) => {
    const conn = await Deno.connect({ hostname: HOST, port: listener.addr.port });
    const got = await conn.read(new Uint8Array(1)).catch(() => null);
    assert.equal(got, null);
    conn.close();
    assert.equal(route.metrics.requests.value, 1);
    assert.equal(listener.open, 0);
  });
});

Deno.test("TcpEngineListener closes a connection idle past idleTimeoutMs and keeps one that carries bytes", async () => {
  const backend = echoBackend();
  try {
    await withListener([backend.port], { idleTimeoutMs: 1500 }, async (listener) => {
      const idle = await Deno.connect({ hostname: HOST, port: listener.addr.port });
      const busy = await Deno.connect({ hostname: HOST, port: listener.addr.port });
      assert.equal(await echoOver(idle, "a"), "a");
      let closed = false;
      const idleEnded = idle.read(new Uint8Array(1));
      idleEnded.then(() => closed = true, () => closed = true);
      const t0 = Date.now();
      for (let i = 0; !closed && Date.now() - t0 < 6000; i++) {
        assert.equal(await echoOver(busy, `b${i}`), `b${i}`, "the busy connection broke");
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.ok(closed, `the idle connection was still open after ${Date.now() - t0} ms`);
      assert.ok(Date.now() - t0 >= 1500, `closed after ${Date.now() - t0} ms, under the timeout`);
      assert.equal(await echoOver(busy, "still"), "still");
      assert.equal(listener.open, 1);
      idle.close();
      busy.close();
    });
  } finally {
    await backend.close();
  }
});

Deno.test("TcpEngineListener.close stops accepting at once and lets open connections finish", async () => {
  const backend = echoBackend();
  try {
    await withListener([backend.port], {}, async (listener) => {
      const conn = await Deno.connect({ hostname: HOST, port: listener.addr.port });
      assert.equal(await echoOver(conn, "open"), "open");
      // It stops accepting at once (a config that drops the port applies without waiting for
      // its connections); the open connection still works, and counts.
      await listener.close();
      await assert.rejects(Deno.connect({ hostname: HOST, port: listener.addr.port }));
      assert.equal(await echoOver(conn, "still"), "still");
      assert.equal(listener.open, 1);
      conn.close();
      await waitFor("the connection to end", () => listener.open === 0 || undefined);
    });
  } finally {
    await backend.close();
  }
});

Deno.test("TcpEngineListener.close with abort ends open connections", async () => {
  const backend = echoBackend();
  try {
    await withListener([backend.port], {}, async (listener) => {
      const conn = await Deno.connect({ hostname: HOST, port: listener.addr.port });
      assert.equal(await echoOver(conn, "open"), "open");
      await listener.close(true);
      assert.equal(listener.open, 0);
      assert.equal(await conn.read(new Uint8Array(1)).catch(() => null), null);
      conn.close();
    });
  } finally {
    await backend.close();
  }
});

Deno.test("TcpEngineListener gives a connection's slot back to the limiter as the connection ends, in that turn of the loop", async () => {
  // It was given back by a promise callback, which a busy loop runs only when it lets the
  // isolate run (every 5 ms): meanwhile the loop accepted new connections against caps that
  // still counted the ended ones, and refused some from a source under its cap (source_limit).
  const host = "127.0.67.204";
  const backend = tcpEchoBackend(host);
  const limiter = new ConnectionLimiter({ max: 10, perSource: 10 }, () => {});
  const openAtEnd: number[] = [];
  const accessLog = new AccessLog({ mode: "json", write: () => void openAtEnd.push(limiter.open) });
  try {
    await withListener([backend.port], { hostname: host, limiter, accessLog }, async (listener) => {
      const conn = await Deno.connect({ hostname: host, port: listener.addr.port });
      assert.equal(await echoOver(conn, "x"), "x");
      assert.equal(limiter.open, 1);
      conn.close();
      await waitFor("the connection's access log line", () => openAtEnd.length > 0 || undefined);
      assert.deepEqual(openAtEnd, [0], "slots taken when its access log line was written");
    });
  } finally {
    await backend.close();
  }
});

/** File descriptors this process holds now. */
function openFds(): number {
  return [...Deno.readDirSync("/proc/self/fd")].length;
}

Deno.test("TcpEngineListener.close with abort ends connections still dialling at once, and leaks no descriptor", async () => {
  const host = "127.0.64.3";
  // A backend whose accept queue is full: the kernel drops the SYNs of further connects, which
  // then wait for their deadline.
  const backlog = bindSocket("tcp", host, 0, { backlog: 0 });
  const fillers = [0, 1, 2].map(() => dialTcp(host, localAddress(backlog).port));
  try {
    const before = openFds();
    let closedIn = 0;
    const lines: string[] = [];
    const accessLog = new AccessLog({ mode: "json", write: (l) => lines.push(l) });
    await withListener(
      [localAddress(backlog).port],
      { hostname: host, connectTimeoutMs: 20_000, accessLog },
      async (l, route) => {
        const conn = await Deno.connect({ hostname: host, port: l.addr.port });
        await waitFor("the connection to be dialling", () => l.open === 1 || undefined);
        const t0 = performance.now();
        await l.close(true);
        closedIn = performance.now() - t0;
        assert.equal(l.open, 0);
        assert.equal(await conn.read(new Uint8Array(1)).catch(() => null), null);
        conn.close();
        // Cut short by the proxy, not failed by the endpoint: nothing held against it, and its
        // line says meshd stopped it (as on Deno's I/O).
        assert.deepEqual(route.readyStates.map((e) => [e.failures, e.inflight]), [[0, 0]]);
        assert.deepEqual(lines.map((l) => JSON.parse(l).reason), ["shutdown"]);
      },
    );
    assert.ok(closedIn < 2000, `close(true) took ${Math.round(closedIn)} ms`);
    assert.equal(openFds(), before, "descriptors open after the listener closed");
  } finally {
    for (const fd of fillers) closeFd(fd);
    closeFd(backlog);
  }
});

Deno.test("TcpEngineListener lets the loop's other work run while connections keep coming", async () => {
  // Each accepted connection opens the next (a connect on loopback is in the accept queue when
  // the call returns): the listening socket never runs dry. Accepting to EAGAIN in one event,
  // the listener would hold the loop for as long as that lasts.
  const host = "127.0.64.4";
  const { call } = libcNet();
  const listenPort = freePort(host);
  const state = newRouteState();
  const reactor = new Reactor();
  const clients: number[] = [];
  const limit = 3000;
  let accepted = 0;
  let timerAt = -1;
  const next = () => {
    const fd = call.socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    const sa = sockaddr(host, listenPort);
    call.connect(fd, sa, sa.length);
    clients.push(fd);
  };
  const listener = new TcpEngineListener({
    reactor,
    hostname: host,
    port: listenPort,
    // Read once per accepted connection: no service, so each is closed at once.
    route: () => {
      if (++accepted < limit) next();
      return undefined;
    },
    pool: state.pool,
    logger: quiet,
  });
  const running = reactor.run();
  try {
    let fired!: () => void;
    const done = new Promise<void>((r) => fired = r);
    reactor.after(0, () => {
      timerAt = accepted;
      fired();
    });
    next();
    await done;
    assert.ok(timerAt >= 0 && timerAt < 1000, `the timer ran after ${timerAt} accepts`);
  } finally {
    await listener.close(true);
    reactor.stop();
    await running;
    for (const fd of clients) closeFd(fd);
  }
});

Deno.test("TcpEngineListener counts a connection still dialling its endpoint as open until the dial ends", async () => {
  // An endpoint whose accept queue is full (backlog 0 holds one connection, which the test
  // makes and nobody accepts): the kernel drops the listener's SYN, so its dial waits.
  const host = "127.0.63.2";
  const full = bindSocket("tcp", host, 0, { backlog: 0 });
  let fullOpen = true;
  const filler = await Deno.connect({ hostname: host, port: localAddress(full).port });
  try {
    await withListener(
      [localAddress(full).port],
      { hostname: host, connectTimeoutMs: 10_000 },
      async (listener, route) => {
        const conn = await Deno.connect({ hostname: host, port: listener.addr.port });
        await waitFor(
          "the listener to dial",
          () => route.metrics.requests.value === 1 || undefined,
        );
        assert.equal(listener.open, 1, "a connection still dialling is not counted as open");
        let closed = false;
        const closing = listener.close().then(() => closed = true);
        assert.equal(listener.open, 1, "closing the listener dropped the dialling connection");
        // The endpoint goes: the SYN sent again (after 1 s) is refused, and the dial ends.
        closeFd(full);
        fullOpen = false;
        assert.equal(await conn.read(new Uint8Array(1)).catch(() => null), null);
        await closing;
        assert.ok(closed);
        assert.equal(listener.open, 0);
        conn.close();
      },
    );
  } finally {
    filler.close();
    if (fullOpen) closeFd(full);
  }
});

Deno.test("TcpEngineListener closes its socket when the loop will not take it, so the port is free", async () => {
  // A listening socket left open stays in the port's SO_REUSEPORT group and takes a share of
  // new connections that nobody accepts; the proxy retries a failed bind, leaving one more.
  const host = "127.0.65.4";
  const port = freePort(host);
  const reactor = new RefusingReactor();
  const running = reactor.run();
  try {
    const before = openSockets();
    reactor.refuse = true;
    assert.throws(
      () =>
        new TcpEngineListener({
          reactor,
          hostname: host,
          port,
          reusePort: true,
          route: () => undefined,
          pool: new EndpointPool(),
          logger: quiet,
        }),
      /epoll_ctl failed/,
    );
    assert.equal(openSockets(), before, "the listening socket is closed");
    // Bound without SO_REUSEPORT: it would fail beside a socket left listening.
    Deno.listen({ hostname: host, port }).close();
  } finally {
    reactor.stop();
    await running;
  }
});

Deno.test("TcpEngineListener.close with abort, called twice while a connection dials, resolves both calls", async () => {
  // The second call took the place of the first one's wait: the first never resolved.
  const host = "127.0.65.6";
  const backlog = bindSocket("tcp", host, 0, { backlog: 0 });
  const fillers = [0, 1, 2].map(() => dialTcp(host, localAddress(backlog).port));
  try {
    await withListener(
      [localAddress(backlog).port],
      { hostname: host, connectTimeoutMs: 20_000 },
      async (l) => {
        const conn = await Deno.connect({ hostname: host, port: l.addr.port });
        await waitFor("the connection to be dialling", () => l.open === 1 || undefined);
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = new Promise<string>((r) => timer = setTimeout(() => r("hung"), 5000));
        const calls = [l.close(true).then(() => "first"), l.close(true).then(() => "second")];
        const settled = await Promise.all(calls.map((c) => Promise.race([c, late])));
        clearTimeout(timer);
        assert.deepEqual(settled, ["first", "second"]);
        conn.close();
      },
    );
  } finally {
    for (const fd of fillers) closeFd(fd);
    closeFd(backlog);
  }
});

Deno.test("TcpEngineListener goes on pausing and trying when the loop will not take its socket back after a failed accept", async () => {
  // After a failed accept (EMFILE, say) the listener leaves the loop for a pause; if the loop
  // would not take it back then, it stayed out for good, its connections queued for no one.
  const host = "127.0.65.7";
  const errors: unknown[] = [];
  const reactor = new RefusingReactor({ onError: (e) => errors.push(e) });
  const drops: string[] = [];
  const had = socketFds();
  const l = new TcpEngineListener({
    reactor,
    hostname: host,
    port: 0,
    route: () => undefined,
    pool: new EndpointPool(),
    logger: quiet,
    drop: (reason) => drops.push(reason),
  });
  const fd = [...socketFds()].find((n) => !had.has(n))!;
  const running = reactor.run();
  try {
    // A listening socket shut for reading is readable, and accept4 fails on it (EINVAL).
    reactor.refuse = true;
    libcNet().call.shutdown(fd, 0);
    // 10, 20 and 40 ms pauses: each try the loop refuses is one more failure, and one more pause.
    await waitFor("three failures", () => drops.length >= 3 || undefined, 5000);
    assert.deepEqual(errors, [], "no handler failed");
  } finally {
    await l.close(true);
    reactor.stop();
    await running;
  }
});
