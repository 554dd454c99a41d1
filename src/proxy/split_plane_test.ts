/**
 * SplitPlane on 127.0.65.20: HTTP served in this isolate, TCP and UDP by an L4 worker on
 * meshd's own loop, one config for both, metrics summed.
 */
import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { freePort, waitFor } from "../_testing.ts";
import { echoOver, httpBackend, httpServed, tcpEchoBackend, tcpServed } from "./_testing.ts";
import { SplitPlane } from "./split_plane.ts";

const HOST = "127.0.65.20";
const quiet = new Logger({ level: "error", write: () => {} });

Deno.test("SplitPlane serves HTTP here and TCP in its L4 worker from one config, and sums their metrics", async () => {
  const web = await httpBackend("w", HOST);
  const echo = Deno.listen({ hostname: HOST, port: 0 });
  const echoing = (async () => {
    for await (const conn of echo) conn.readable.pipeTo(conn.writable).catch(() => {});
  })().catch(() => {});
  const tcpPort = freePort(HOST);
  const plane = new SplitPlane({
    proxy: { hostname: HOST, httpPort: 0, logger: quiet },
    worker: { hostname: HOST, httpPort: 0 },
  });
  await plane.start();
  try {
    await plane.apply(meshConfig([
      { name: "web", ports: [{ port: 80, endpoints: [endpoint(HOST, web.port)] }] },
      {
        name: "echo",
        ports: [{
          port: 7,
          protocol: "tcp",
          listenPort: tcpPort,
          endpoints: [endpoint(HOST, echo.addr.port)],
        }],
      },
    ], { version: 3 }));
    assert.equal(plane.version, 3);
    assert.deepEqual(plane.listener("tcp", tcpPort), {
      address: `${HOST}:${tcpPort}`,
      served: true,
    });

    // HTTP in this isolate.
    const httpPort = Number(plane.httpAddress.split(":").pop());
    const c = await Deno.connect({ hostname: HOST, port: httpPort });
    await c.write(
      new TextEncoder().encode(
        "GET / HTTP/1.1\r\nHost: web.default.mesh\r\nConnection: close\r\n\r\n",
      ),
    );
    assert.match(await new Response(c.readable).text(), /^HTTP\/1\.1 200 /);

    // TCP in the worker: the port is the L4 worker's socket alone.
    const t = await Deno.connect({ hostname: HOST, port: tcpPort });
    assert.equal(await echoOver(t, "ping"), "ping");
    await waitFor("the worker to report the connection", () => plane.inFlight >= 1 || undefined);
    t.close();
    const own = plane.listening().own;
    assert.equal(own.tcp.get(tcpPort), 1);
    assert.equal(own.tcp.get(httpPort), 1);

    // One /metrics: each family once, the HTTP request and the TCP connection each counted.
    const text = await plane.metrics();
    const helps = text.split("\n").filter((l) => l.startsWith("# HELP "));
    assert.equal(new Set(helps).size, helps.length, "each family once");
    assert.match(
      text,
      /^meshd_requests_total\{service="default\/web",port="80",protocol="http"\} 1$/m,
    );
    assert.match(
      text,
      /^meshd_requests_total\{service="default\/echo",port="7",protocol="tcp"\} 1$/m,
    );
    assert.match(text, /^meshd_proxy_workers 1$/m);

    // A config without the TCP service: the worker lets the port go.
    await plane.apply(meshConfig([
      { name: "web", ports: [{ port: 80, endpoints: [endpoint(HOST, web.port)] }] },
    ], { version: 4 }));
    assert.equal(plane.version, 4);
    assert.equal(plane.listener("tcp", tcpPort).served, false);
    await assert.rejects(Deno.connect({ hostname: HOST, port: tcpPort }));
  } finally {
    await plane.stop();
    echo.close();
    await echoing;
    await web.close();
  }
});

Deno.test("SplitPlane holds --max-connections-per-source over HTTP and TCP together: N in all, not N/2 a side", async () => {
  // Each side held half of each cap: a client with a per-source cap of 4 was refused at its
  // third HTTP connection, with no TCP connection open.
  const host = "127.0.70.1";
  const web = await httpBackend("w", host);
  const echo = tcpEchoBackend(host);
  const tcpPort = freePort(host);
  const limits = { maxConnections: 100, maxConnectionsPerSource: 4 };
  const plane = new SplitPlane({
    proxy: { hostname: host, httpPort: 0, logger: quiet, limits },
    worker: { hostname: host, httpPort: 0, limits },
  });
  const conns: Deno.Conn[] = [];
  const open = async (port: number) => {
    const c = await Deno.connect({ hostname: host, port });
    conns.push(c);
    return c;
  };
  await plane.start();
  try {
    await plane.apply(meshConfig([
      { name: "web", ports: [{ port: 80, endpoints: [endpoint(host, web.port)] }] },
      {
        name: "echo",
        ports: [{
          port: 7,
          protocol: "tcp",
          listenPort: tcpPort,
          endpoints: [endpoint(host, echo.port)],
        }],
      },
    ]));
    const httpPort = Number(plane.httpAddress.split(":").pop());
    const first = await open(httpPort);
    for (let i = 0; i < 3; i++) {
      assert.ok(
        await httpServed(i === 0 ? first : await open(httpPort), "web.default.mesh"),
        `HTTP connection ${i + 1} of 4 served`,
      );
    }
    assert.ok(await tcpServed(await open(tcpPort)), "TCP connection 4 of 4 served");
    // The fifth from the source, on either side, is over the cap.
    assert.equal(await tcpServed(await open(tcpPort)), false, "a fifth over TCP is refused");
    assert.equal(
      await httpServed(await open(httpPort), "web.default.mesh"),
      false,
      "a fifth over HTTP is refused",
    );
    assert.match(await plane.metrics(), /^meshd_dropped_total\{reason="source_limit"\} 2$/m);
    // One HTTP connection closed gives its slot to the TCP side.
    first.close();
    await waitFor(
      "a TCP connection served once an HTTP one closed",
      async () => await tcpServed(await open(tcpPort)) || undefined,
    );
  } finally {
    for (const c of conns) {
      try {
        c.close();
      } catch { /* closed already */ }
    }
    await plane.stop();
    await echo.close();
    await web.close();
  }
});

Deno.test("SplitPlane with l4Optional serves TCP here when its L4 worker does not start, after one warning; without it, start fails", async () => {
  const lines: string[] = [];
  const logger = new Logger({ level: "info", write: (l) => lines.push(l) });
  const entry = new URL("./testdata/failing_l4_worker.ts", import.meta.url);
  const strict = new SplitPlane({
    proxy: { hostname: HOST, httpPort: 0, logger: quiet },
    worker: { hostname: HOST, httpPort: 0 },
    entry,
  });
  await assert.rejects(strict.start(), /cannot start its event loop: .*EMFILE/);

  const echo = tcpEchoBackend(HOST);
  const tcpPort = freePort(HOST);
  const plane = new SplitPlane({
    proxy: { hostname: HOST, httpPort: 0, logger },
    worker: { hostname: HOST, httpPort: 0 },
    entry,
    l4Optional: true,
  });
  await plane.start();
  try {
    assert.equal(plane.l4Worker, false);
    const warned = lines.filter((l) => l.includes("L4 worker did not start"));
    assert.equal(warned.length, 1, lines.join("\n"));
    assert.match(warned[0]!, /EMFILE/);
    await plane.apply(meshConfig([{
      name: "echo",
      ports: [{
        port: 7,
        protocol: "tcp",
        listenPort: tcpPort,
        endpoints: [endpoint(HOST, echo.port)],
      }],
    }], { version: 5 }));
    assert.equal(plane.version, 5);
    assert.deepEqual(plane.listener("tcp", tcpPort), {
      address: `${HOST}:${tcpPort}`,
      served: true,
    });
    const t = await Deno.connect({ hostname: HOST, port: tcpPort });
    assert.equal(await echoOver(t, "ping"), "ping");
    t.close();
    assert.deepEqual(plane.listening().tcp.includes(tcpPort), true);
    const text = await plane.metrics();
    assert.match(
      text,
      /^meshd_requests_total\{service="default\/echo",port="7",protocol="tcp"\} 1$/m,
    );
    assert.match(text, /^meshd_proxy_workers 0$/m);
  } finally {
    await plane.stop();
    await echo.close();
  }
});
