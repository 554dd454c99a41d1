import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { ProxyPool, ProxyWorkerError, workerLimits } from "./proxy_pool.ts";
import { openSockets } from "../engine/_testing.ts";
import { endpoint } from "../topology/_testing.ts";
import { freePort as freePortOn } from "../_testing.ts";
import { echoOver, tcpEchoBackend, tcpServed } from "./_testing.ts";

const HOST = "127.0.63.20";

function freePort(): number {
  const l = Deno.listen({ hostname: HOST, port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A config with one TCP service per listen port. */
function config(version: number, ports: number[]): MeshConfig {
  return {
    version,
    domain: "mesh",
    acl: false,
    identities: {},
    services: ports.map((p) => ({
      name: `s${p}`,
      namespace: "t",
      clusterIP: null,
      scheme: "http",
      retryAttempts: 0,
      circuitBreaker: null,
      rateLimit: null,
      ports: [{
        name: "tcp",
        port: 80,
        protocol: "tcp",
        listenPort: p,
        endpoints: [],
        split: null,
        access: null,
      }],
    })),
  };
}

async function waitUntil(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

Deno.test("ProxyPool.apply() is all or nothing, and a dead worker is started again on the config in force", async () => {
  const lines: string[] = [];
  const pool = new ProxyPool({
    workers: 2,
    proxy: { hostname: HOST, httpPort: 0 },
    logger: new Logger({ level: "warn", format: "json", write: (l) => lines.push(l) }),
    entry: new URL("./testdata/faulty_proxy_worker.ts", import.meta.url),
  });
  const [p, q] = [freePort(), freePort()];
  try {
    await pool.start();
    await pool.apply(config(1, [p]));
    assert.equal(pool.version, 1);
    assert.equal(pool.listening().own.tcp.get(p), 2, "both workers bind the TCP port");
    assert.deepEqual(pool.listener("tcp", p), { address: `${HOST}:${p}`, served: true });

    // Worker 1 refuses version 13: worker 0, which took it, goes back to version 1.
    await assert.rejects(
      () => pool.apply(config(13, [p, q])),
      (e: Error) => {
        assert.ok(e instanceof ProxyWorkerError);
        assert.match(
          e.message,
          /^Cannot apply config version 13 in proxy worker 1: refused by the test; every worker keeps version 1$/,
        );
        return true;
      },
    );
    assert.equal(pool.version, 1);
    assert.equal(pool.listening().own.tcp.get(q), undefined, "the new port is let go again");
    assert.equal(pool.listening().own.tcp.get(p), 2);

    // Worker 1 dies on version 66: the apply fails, and the worker comes back on version 1.
    await assert.rejects(() => pool.apply(config(66, [p])), /proxy worker 1 died/);
    assert.match(
      lines.join("\n"),
      /"msg":"proxy worker died; starting it again".*crashed by the test/,
    );
    await waitUntil(
      "worker 1 back on version 1",
      () => pool.version === 1 && pool.listening().own.tcp.get(p) === 2,
    );
    assert.match(await pool.metrics(), /^meshd_proxy_worker_restarts_total 1$/m);

    // And it takes the next config with the other.
    await pool.apply(config(2, [q]));
    assert.equal(pool.version, 2);
    assert.equal(pool.listening().own.tcp.get(q), 2);
  } finally {
    await pool.stop();
  }
});

Deno.test("ProxyPool starts a worker whose thread is stuck again, with no config or /metrics call to find it", async () => {
  const lines: string[] = [];
  const pool = new ProxyPool({
    workers: 2,
    proxy: { hostname: HOST, httpPort: 0 },
    logger: new Logger({ level: "info", format: "json", write: (l) => lines.push(l) }),
    entry: new URL("./testdata/faulty_proxy_worker.ts", import.meta.url),
    // Long enough for a worker's first start on a busy machine.
    callTimeoutMs: 10_000,
    pingEveryMs: 100,
  });
  const p = freePort();
  try {
    await pool.start();
    await pool.apply(config(1, [p]));
    // Worker 1 takes version 77, and its thread is stuck 1 s later; version 78 before then is
    // what it is started again on.
    await pool.apply(config(77, [p]));
    await pool.apply(config(78, [p]));
    await waitUntil(
      "worker 1 started again",
      () => lines.some((l) => l.includes('"msg":"proxy worker started again"')),
      30_000,
    );
    assert.match(
      lines.join("\n"),
      /"msg":"proxy worker died; starting it again".*"worker":1.*did not answer \\"ping\\" within 10000 ms/,
    );
    await waitUntil(
      "both workers on version 78",
      () => pool.version === 78 && pool.listening().own.tcp.get(p) === 2,
    );
    assert.match(await pool.metrics(), /^meshd_proxy_worker_restarts_total 1$/m);
  } finally {
    await pool.stop();
  }
});

Deno.test("ProxyPool logs a worker that dies of an uncaught error in one line, and Deno prints nothing of it", async () => {
  // Deno printed the worker's uncaught error on stderr, with its stack in lines of their own
  // and in colour, before the pool's handler could prevent it: a log reader got a line per
  // stack frame beside the pool's one line, and JSON logs lines that are not JSON.
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      new URL("./testdata/crashing_pool.ts", import.meta.url).pathname,
      "127.0.67.203",
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  const lines = new TextDecoder().decode(out.stderr).split("\n").filter((l) => l !== "");
  assert.equal(out.code, 0, lines.join("\n"));
  const notJson = lines.filter((l) => {
    try {
      JSON.parse(l);
      return false;
    } catch {
      return true;
    }
  });
  assert.deepEqual(notJson, [], "stderr lines that are not the pool's log");
  const died = lines.map((l) => JSON.parse(l)).filter((e) => /proxy worker died/.test(e.msg));
  assert.equal(died.length, 1, lines.join("\n"));
  assert.equal(died[0].error, "Uncaught Error: crashed by the test");
});

Deno.test("ProxyPool closes the sockets of an L4 worker that died, so the one started again takes every connection", async () => {
  // The engine opens its sockets through libc, which Deno does not close with the worker: its
  // listening socket stayed in the port's SO_REUSEPORT group and took a share of the new
  // connections, which nobody accepted.
  const host = "127.0.64.5";
  const echo = Deno.listen({ hostname: host, port: 0 });
  const serving = (async () => {
    for await (const c of echo) {
      (async () => {
        const b = new Uint8Array(64);
        for (let n; (n = await c.read(b)) !== null;) await c.write(b.subarray(0, n));
      })().catch(() => {}).finally(() => c.close());
    }
  })().catch(() => {});
  const lines: string[] = [];
  const pool = new ProxyPool({
    workers: 1,
    l4Worker: true,
    proxy: { hostname: host, httpPort: 0 },
    logger: new Logger({ level: "info", format: "json", write: (l) => lines.push(l) }),
    entry: new URL("./testdata/faulty_proxy_worker.ts", import.meta.url),
  });
  const l = Deno.listen({ hostname: host, port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  const withEndpoint = (c: MeshConfig): MeshConfig => ({
    ...c,
    services: c.services.map((s) => ({
      ...s,
      ports: s.ports.map((port) => ({
        ...port,
        endpoints: [{
          address: host,
          port: echo.addr.port,
          ready: true,
          serving: true,
          terminating: false,
          nodeName: null,
          serviceAccount: null,
        }],
      })),
    })),
  });
  /** Whether a connection to the TCP port is echoed within `ms`. */
  const echoes = async (ms: number): Promise<boolean> => {
    const c = await Deno.connect({ hostname: host, port: p });
    const timer = setTimeout(() => c.close(), ms);
    try {
      await c.write(new Uint8Array([1, 2, 3]));
      return (await c.read(new Uint8Array(8)).catch(() => null)) === 3;
    } finally {
      clearTimeout(timer);
      try {
        c.close();
      } catch { /* closed by the timer */ }
    }
  };
  /** Sockets this process holds (Deno's own runtime of a dead worker may keep others a while). */
  const sockets = () =>
    [...Deno.readDirSync("/proc/self/fd")].filter((e) => {
      try {
        return Deno.readLinkSync(`/proc/self/fd/${e.name}`).startsWith("socket:");
      } catch {
        return false; // closed since it was listed
      }
    }).length;
  try {
    await pool.start();
    await pool.apply(withEndpoint(config(1, [p])));
    assert.ok(await echoes(2000), "echoed before the worker died");
    const before = sockets();
    // Worker 1, the L4 worker, dies on version 66 and starts again on version 1.
    await assert.rejects(() => pool.apply(withEndpoint(config(66, [p]))), /proxy worker 1 died/);
    await waitUntil(
      "worker 1 back on version 1",
      () => pool.version === 1 && pool.listening().own.tcp.get(p) === 1,
    );
    // The dead worker's sockets are closed shortly after it ended: the assertions below say
    // what is wrong if they are not.
    await waitUntil("the dead worker's sockets closed", () => sockets() <= before, 3000)
      .catch(() => {});
    let echoed = 0;
    for (let i = 0; i < 20; i++) if (await echoes(1000)) echoed++;
    assert.equal(echoed, 20, "connections echoed after the L4 worker started again");
    const after = sockets();
    assert.ok(after <= before, `${before} sockets before the worker died, ${after} after`);
    assert.match(
      lines.join("\n"),
      /"msg":"closed the sockets of a dead proxy worker".*"descriptors":[1-9]/,
    );
  } finally {
    await pool.stop();
    echo.close();
    await serving;
  }
});

Deno.test("ProxyPool.stop closes the sockets of an L4 worker that died just before", async () => {
  // The pool closes a dead L4 worker's sockets shortly after ending it; stop() cleared that
  // timer, so a listening socket of its engine stayed open (in its SO_REUSEPORT group, taking
  // connections for no one) for as long as the process lived.
  const host = "127.0.65.8";
  const l = Deno.listen({ hostname: host, port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  const before = openSockets();
  const pool = new ProxyPool({
    workers: 1,
    l4Worker: true,
    proxy: { hostname: host, httpPort: 0 },
    logger: new Logger({ level: "error", write: () => {} }),
    entry: new URL("./testdata/faulty_proxy_worker.ts", import.meta.url),
  });
  try {
    await pool.start();
    await pool.apply(config(1, [p]));
    // Worker 1, the L4 worker, dies on version 66.
    await assert.rejects(() => pool.apply(config(66, [p])), /proxy worker 1 died/);
  } finally {
    await pool.stop();
  }
  // Bound without SO_REUSEPORT: it fails beside the engine's socket left listening there.
  Deno.listen({ hostname: host, port: p }).close();
  // Deno closes a worker's own sockets once its thread is gone; the engine's are the pool's.
  // (Fewer than before: an earlier test's sockets may close meanwhile.)
  await waitUntil("the workers' sockets closed", () => openSockets() <= before, 3000)
    .catch(() => {});
  assert.ok(openSockets() <= before, `${before} sockets before, ${openSockets()} after stop`);
});

/** A config with one TCP service at `listenPort`, sent to `backend`. */
function echoConfig(version: number, host: string, listenPort: number, backend: number) {
  const c = config(version, [listenPort]);
  c.services[0]!.ports[0]!.endpoints = [endpoint(host, backend)];
  return c;
}

/** Opens connections to `port` one after another; the served ones are kept, the others closed. */
async function openServed(host: string, port: number, tries: number): Promise<Deno.Conn[]> {
  const served: Deno.Conn[] = [];
  for (let i = 0; i < tries; i++) {
    const c = await Deno.connect({ hostname: host, port });
    if (await tcpServed(c, 2000)) served.push(c);
    else {
      try {
        c.close();
      } catch { /* closed by tcpServed */ }
    }
  }
  return served;
}

Deno.test("ProxyPool holds --max-connections-per-source over its workers: N from one source, whichever worker took each", async () => {
  // Each worker held ceil(N / workers) of it: 3 became 2 a worker, 4 in all, and which of a
  // source's connections were refused depended on how the kernel spread them.
  const host = "127.0.70.2";
  const echo = tcpEchoBackend(host);
  const p = freePortOn(host);
  const pool = new ProxyPool({
    workers: 2,
    proxy: { hostname: host, httpPort: 0, limits: { maxConnectionsPerSource: 3 } },
    logger: new Logger({ level: "error", write: () => {} }),
  });
  let held: Deno.Conn[] = [];
  try {
    await pool.start();
    await pool.apply(echoConfig(1, host, p, echo.port));
    held = await openServed(host, p, 12);
    assert.equal(held.length, 3, "connections served from one source of 12");
    assert.match(await pool.metrics(), /^meshd_dropped_total\{reason="source_limit"\} 9$/m);
  } finally {
    for (const c of held) c.close();
    await pool.stop();
    await echo.close();
  }
});

Deno.test("ProxyPool gives back the connections of a worker that died: the source gets its whole cap again", async () => {
  const host = "127.0.70.3";
  const echo = tcpEchoBackend(host);
  const p = freePortOn(host);
  const cap = 6;
  const lines: string[] = [];
  const pool = new ProxyPool({
    workers: 2,
    proxy: { hostname: host, httpPort: 0, limits: { maxConnectionsPerSource: cap } },
    logger: new Logger({ level: "error", format: "json", write: (l) => lines.push(l) }),
    entry: new URL("./testdata/faulty_proxy_worker.ts", import.meta.url),
  });
  const conns: Deno.Conn[] = [];
  try {
    await pool.start();
    await pool.apply(echoConfig(1, host, p, echo.port));
    conns.push(...await openServed(host, p, cap + 2));
    assert.equal(conns.length, cap);
    // Worker 1 dies on version 66 with its share of them, and starts again on version 1.
    await assert.rejects(() => pool.apply(echoConfig(66, host, p, echo.port)), /worker 1 died/);
    await waitUntil(
      "worker 1 back on version 1",
      () => pool.version === 1 && pool.listening().own.tcp.get(p) === 2,
    );
    const died = lines.map((l) => JSON.parse(l)).find((e) => /proxy worker died/.test(e.msg));
    let alive = 0;
    for (const c of conns) if (await tcpServed(c, 1000)) alive++;
    // The survivors, on worker 0, count still; the dead worker's count no more.
    conns.push(...await openServed(host, p, cap + 2 - alive));
    assert.equal(conns.length - cap, cap - alive, `new connections served, ${alive} survived`);
    assert.equal(died?.connections, cap - alive, "the dead worker's connections, logged");
  } finally {
    for (const c of conns) {
      try {
        c.close();
      } catch { /* closed already */ }
    }
    await pool.stop();
    await echo.close();
  }
});

Deno.test("ProxyPool keeps a dead L4 worker's descriptor numbers from other sockets while its thread still runs", async () => {
  // Worker.terminate() does not stop a task that is running: an L4 worker ended for not
  // answering goes on once its task ends, with the descriptor numbers it had. Closed at its
  // death, those numbers went to the next sockets the process opened (the new worker's, the
  // clients'), and what the old thread then wrote reached them.
  const host = "127.0.64.9";
  const backend = tcpEchoBackend(host);
  const lines: string[] = [];
  const pool = new ProxyPool({
    workers: 1,
    l4Worker: true,
    proxy: { hostname: host, httpPort: 0 },
    logger: new Logger({ level: "info", format: "json", write: (l) => lines.push(l) }),
    entry: new URL("./testdata/faulty_proxy_worker.ts", import.meta.url),
    // Long enough for a worker's first start on a busy machine, short beside the stall.
    callTimeoutMs: 4000,
    pingEveryMs: 100,
  });
  const l = Deno.listen({ hostname: host, port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  const withEndpoint = (version: number): MeshConfig => {
    const c = config(version, [p]);
    c.services[0]!.ports[0]!.endpoints = [endpoint(host, backend.port)];
    return c;
  };
  const clients: Deno.TcpConn[] = [];
  try {
    await pool.start();
    await pool.apply(withEndpoint(1));
    // Connections through the L4 worker, so its engine holds a number for each side of each.
    for (let i = 0; i < 8; i++) {
      const c = await Deno.connect({ hostname: host, port: p });
      clients.push(c);
      assert.ok(await tcpServed(c), `connection ${i} served before the stall`);
    }
    // 1 s after version 88 the L4 worker (worker 1) is stuck for 12 s, then writes "zombie" to
    // every number its engine held.
    await pool.apply(withEndpoint(88));
    const wakes = Date.now() + 13_000;
    await waitUntil(
      "the L4 worker started again",
      () => lines.some((l) => l.includes('"msg":"proxy worker started again"')),
      11_000,
    );
    await waitUntil("the new L4 worker serving", () => pool.listening().own.tcp.get(p) === 1);
    for (const c of clients.splice(0)) c.close();
    for (let i = 0; i < 16; i++) {
      const c = await Deno.connect({ hostname: host, port: p });
      clients.push(c);
      assert.ok(await tcpServed(c), `connection ${i} served by the new worker`);
    }
    assert.ok(
      Date.now() < wakes - 500,
      "the new connections were not open before the old thread woke",
    );
    await new Promise((r) => setTimeout(r, wakes + 1500 - Date.now()));
    // Each is still served, and its echo is its own: bytes the old thread wrote to a number
    // now another socket's would come back first.
    for (const [i, c] of clients.entries()) {
      assert.equal(await echoOver(c, "ping"), "ping", `connection ${i}`);
    }
    assert.match(
      lines.join("\n"),
      /its thread still runs, so their numbers are held until it ends/,
    );
  } finally {
    for (const c of clients) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await pool.stop();
    await backend.close();
  }
});

Deno.test("workerLimits() divides the UDP flows in all and per source among workers, but not a port's cap: one worker binds each UDP port", () => {
  const all = {
    maxConnections: 100,
    maxConnectionsPerSource: 10,
    maxUdpFlows: 1000,
    maxUdpFlowsPerListener: 500,
    maxUdpFlowsPerSource: 62,
  };
  assert.deepEqual(workerLimits(all, 2, "all"), {
    maxConnections: 100,
    maxConnectionsPerSource: 10,
    maxUdpFlows: 500,
    maxUdpFlowsPerListener: 500,
    maxUdpFlowsPerSource: 31,
  });
  // Bounded by the worker's share of the flows in all.
  assert.equal(workerLimits(all, 4, "all").maxUdpFlowsPerListener, 250);
  assert.equal(workerLimits(all, 3, "http").maxUdpFlowsPerSource, 21);
  // The L4 worker holds every UDP flow.
  assert.deepEqual(workerLimits(all, 3, "l4"), all);
});
