/**
 * SplitPlane on 127.0.65.20: HTTP served in this isolate, TCP and UDP by an L4 worker on
 * meshd's own loop, one config for both, metrics summed.
 */
import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { freePort, waitFor } from "../_testing.ts";
import { echoOver, httpBackend } from "./_testing.ts";
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
