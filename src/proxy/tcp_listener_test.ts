/**
 * The TCP listener alone, on 127.0.62.1 (its drain, on 127.0.63.1): a route built from a
 * MeshConfig, a raw echo backend, real connections from the test.
 */
import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { freePort, waitFor } from "../_testing.ts";
import { AccessLog } from "./access_log.ts";
import { BufferPool } from "./buffer_pool.ts";
import { buildRouteTable, newRouteState, type Route } from "./route_table.ts";
import { TcpListener, type TcpListenerOptions } from "./tcp_listener.ts";
import { echoOver, tcpEchoBackend } from "./_testing.ts";

const HOST = "127.0.62.1";
const quiet = new Logger({ level: "error", write: () => {} });

/**
 * An echo backend, a route to it and a listener for the route, all on `options.hostname`
 * (default `HOST`); closed after `fn`.
 */
async function withListener(
  options: Partial<TcpListenerOptions> & { accessLog?: AccessLog },
  fn: (listener: TcpListener, route: Route) => Promise<void>,
): Promise<void> {
  const { accessLog, ...listenerOptions } = options;
  const host = options.hostname ?? HOST;
  const backend = tcpEchoBackend(host);
  const listenPort = freePort(host);
  const state = newRouteState({ accessLog: accessLog ?? null });
  const table = buildRouteTable(
    meshConfig([{
      name: "echo",
      ports: [{
        port: 7,
        protocol: "tcp",
        listenPort,
        endpoints: [endpoint(host, backend.port)],
      }],
    }]),
    state,
  );
  const route = table.tcp.get(listenPort)!;
  const listener = new TcpListener({
    hostname: host,
    port: listenPort,
    route: () => route,
    pool: state.pool,
    logger: quiet,
    ...listenerOptions,
  });
  try {
    await fn(listener, route);
  } finally {
    await listener.close(true);
    await backend.close();
  }
}

Deno.test("TcpListener gives its copy buffers back when a connection ends, so the next allocates none", async () => {
  const buffers = {
    small: new BufferPool({ size: 8 * 1024, keep: 8 }),
    large: new BufferPool({ size: 64 * 1024, keep: 8 }),
  };
  await withListener({ buffers }, async (listener) => {
    for (let i = 0; i < 5; i++) {
      const conn = await Deno.connect({ hostname: HOST, port: listener.addr.port });
      assert.equal(await echoOver(conn, `hello ${i}`), `hello ${i}`);
      await conn.closeWrite();
      assert.equal(await conn.read(new Uint8Array(16)), null);
      conn.close();
      await waitFor(
        "the connection to end in the listener",
        () => listener.open === 0 || undefined,
      );
    }
    // One buffer each way for the first connection, reused by the four after it.
    const { small, large } = buffers;
    assert.equal(small.allocated, 2, `allocated ${small.allocated} buffers for 5 connections`);
    assert.equal(small.free, 2);
    assert.equal(large.allocated, 0, "a few bytes each way took a large buffer");
  });
});

Deno.test("TcpListener holds small copy buffers on a quiet connection and large ones only while reads fill them", async () => {
  const buffers = {
    small: new BufferPool({ size: 8 * 1024, keep: 8 }),
    large: new BufferPool({ size: 64 * 1024, keep: 8 }),
  };
  const { small, large } = buffers;
  await withListener({ buffers }, async (listener) => {
    const conn = await Deno.connect({ hostname: HOST, port: listener.addr.port });
    try {
      assert.equal(await echoOver(conn, "ping"), "ping");
      assert.deepEqual([small.allocated, small.free, large.allocated], [2, 0, 0]);
      // A MiB each way: reads fill 8 KiB, so both loops move to 64 KiB buffers.
      const bulk = "z".repeat(1024 * 1024);
      assert.equal(await echoOver(conn, bulk), bulk);
      assert.ok(large.allocated >= 1, "a MiB went through small buffers only");
      // Quiet again: the next small read hands each large buffer back.
      assert.equal(await echoOver(conn, "pong"), "pong");
      await waitFor(
        "both copy loops to give their large buffers back",
        () => large.free === large.allocated || undefined,
      );
      assert.equal(listener.open, 1, "the connection closed");
      assert.equal(small.allocated - small.free, 2, "the open connection holds two small buffers");
    } finally {
      conn.close();
    }
  });
});

Deno.test("TcpListener counts the bytes of each direction in its route's metrics", async () => {
  await withListener({}, async (listener, route) => {
    const conn = await Deno.connect({ hostname: HOST, port: listener.addr.port });
    assert.equal(await echoOver(conn, "x".repeat(1000)), "x".repeat(1000));
    assert.equal(await echoOver(conn, "y".repeat(234)), "y".repeat(234));
    conn.close();
    await waitFor("the connection to end in the listener", () => listener.open === 0 || undefined);
    assert.equal(route.metrics.bytesIn.value, 1234);
    assert.equal(route.metrics.bytesOut.value, 1234);
    assert.equal(route.metrics.requests.value, 1);
  });
});

Deno.test("TcpListener closes a connection idle past idleTimeoutMs and keeps one that carries bytes", async () => {
  // The sweep runs each second; a connection that read since the last sweep counts as active.
  await withListener({ idleTimeoutMs: 1500 }, async (listener) => {
    const idle = await Deno.connect({ hostname: HOST, port: listener.addr.port });
    const busy = await Deno.connect({ hostname: HOST, port: listener.addr.port });
    assert.equal(await echoOver(idle, "a"), "a");
    const idleEnded = idle.read(new Uint8Array(1));
    let closed = false;
    idleEnded.then(() => closed = true, () => closed = true);
    const t0 = Date.now();
    // Bytes on the busy connection every 200 ms until the idle one is closed (at most 6 s).
    let rounds = 0;
    while (!closed && Date.now() - t0 < 6000) {
      assert.equal(await echoOver(busy, `b${rounds}`), `b${rounds}`, "the busy connection broke");
      rounds++;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(closed, `the idle connection was still open after ${Date.now() - t0} ms`);
    assert.equal(await idleEnded, null);
    // The busy connection outlived the idle one by more than the timeout, and still works.
    assert.ok(Date.now() - t0 >= 1500, `closed after ${Date.now() - t0} ms, under the timeout`);
    assert.equal(await echoOver(busy, "still"), "still");
    assert.equal(listener.open, 1);
    idle.close();
    busy.close();
  });
});

/** The drain tests' own address. */
const DRAIN_HOST = "127.0.63.1";

/** A `connect` that holds each dial until `release()`, and says whether one began. */
function heldConnect(): {
  connect: TcpListenerOptions["connect"];
  dialling(): boolean;
  release(): void;
} {
  let release = () => {};
  const held = new Promise<void>((r) => release = r);
  let dialling = false;
  return {
    connect: async (hostname, port) => {
      dialling = true;
      await held;
      return await Deno.connect({ hostname, port });
    },
    dialling: () => dialling,
    release,
  };
}

Deno.test("TcpListener counts a connection still dialling its endpoint as open, and serves it after close(false)", async () => {
  // A draining meshd leaves once `open` (summed in NodeProxy.inFlight) is 0: a connection
  // accepted just before the listener closed, still dialling, must count, or it is cut off.
  const dial = heldConnect();
  await withListener({ hostname: DRAIN_HOST, connect: dial.connect }, async (listener) => {
    const conn = await Deno.connect({ hostname: DRAIN_HOST, port: listener.addr.port });
    try {
      await waitFor("the listener to dial the endpoint", () => dial.dialling() || undefined);
      assert.equal(listener.open, 1, "a connection still dialling is not counted as open");
      await listener.close(false);
      assert.equal(listener.open, 1, "closing the listener dropped the dialling connection");
      dial.release();
      assert.equal(await echoOver(conn, "ping"), "ping");
      await conn.closeWrite();
      assert.equal(await conn.read(new Uint8Array(16)), null);
    } finally {
      conn.close();
    }
    await waitFor("the connection to end in the listener", () => listener.open === 0 || undefined);
  });
});

Deno.test("TcpListener.close with abort closes a connection still dialling, and its endpoint's once made", async () => {
  const lines: string[] = [];
  const accessLog = new AccessLog({ mode: "json", write: (l) => lines.push(l) });
  const dial = heldConnect();
  await withListener(
    { hostname: DRAIN_HOST, connect: dial.connect, accessLog },
    async (listener, route) => {
      const conn = await Deno.connect({ hostname: DRAIN_HOST, port: listener.addr.port });
      try {
        await waitFor("the listener to dial the endpoint", () => dial.dialling() || undefined);
        await listener.close(true);
        const end = await conn.read(new Uint8Array(16)).catch((e) => e.name);
        assert.ok(end === null || end === "ConnectionReset", `the client read ${end}`);
        dial.release();
        await waitFor("the dial to end", () => lines.length > 0 || undefined);
        // Not relayed: nothing was copied, and the line says meshd stopped it.
        const text = lines[0]!;
        assert.equal(JSON.parse(text).reason, "shutdown", text);
        assert.equal(route.metrics.duration.count, 0, "the connection was relayed after all");
        assert.equal(listener.open, 0);
      } finally {
        conn.close();
      }
    },
  );
});

Deno.test("TcpListener logs a burst of refused connections once per interval, then says how many it left out", async () => {
  const host = "127.0.69.30";
  const listenPort = freePort(host);
  const state = newRouteState();
  const route = buildRouteTable(
    meshConfig([{
      name: "echo",
      ports: [{
        port: 7,
        protocol: "tcp",
        listenPort,
        endpoints: [endpoint(host, 9, { ready: false })],
      }],
    }]),
    state,
  ).tcp.get(listenPort)!;
  const lines: string[] = [];
  let now = 0;
  const listener = new TcpListener({
    hostname: host,
    port: listenPort,
    route: () => route,
    pool: state.pool,
    logger: new Logger({ level: "info", write: (l) => lines.push(l) }),
    logIntervalMs: 1000,
    logClock: () => now,
  });
  const refusedOnce = async () => {
    const conn = await Deno.connect({ hostname: host, port: listenPort });
    try {
      assert.equal(await conn.read(new Uint8Array(1)), null, "the connection is closed");
    } finally {
      conn.close();
    }
  };
  try {
    for (let i = 0; i < 20; i++) {
      now = i * 10; // within the interval
      await refusedOnce();
    }
    assert.equal(lines.length, 1, lines.join("\n"));
    assert.match(lines[0]!, /msg="tcp connection refused: no ready endpoint"/);
    assert.doesNotMatch(lines[0]!, /suppressed/);
    assert.equal(route.metrics.denied("no_endpoint").value, 20, "the metric counts each");
    now = 1000; // the interval has passed since the first line
    await refusedOnce();
    assert.equal(lines.length, 2);
    assert.match(lines.at(-1)!, /suppressed=19/);
    // Every refusal is logged or counted in the suppressed field of a line after it.
    const told = lines.reduce((n, l) => n + 1 + Number(/suppressed=(\d+)/.exec(l)?.[1] ?? 0), 0);
    assert.equal(told, 21, lines.join("\n"));
  } finally {
    await listener.close(true);
  }
});
