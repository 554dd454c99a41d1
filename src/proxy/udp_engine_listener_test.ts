import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { freePort, waitFor } from "../_testing.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { ENOBUFS, libcNet } from "../../ffi/libc_net.ts";
import { openSockets, RefusingReactor } from "../engine/_testing.ts";
import { Reactor } from "../engine/reactor.ts";
import { EndpointPool } from "./endpoint_pool.ts";
import type { DropReason } from "./proxy_metrics.ts";
import { buildRouteTable, newRouteState } from "./route_table.ts";
import { UdpEngineListener } from "./udp_engine_listener.ts";

const quiet = new Logger({ level: "error", write: () => {} });

Deno.test("UdpEngineListener closes its socket when the loop will not take it, so the port is free", async () => {
  // A bound socket left open holds the port: the proxy's bind retry could not take it again.
  const host = "127.0.65.5";
  const port = freePort(host);
  const reactor = new RefusingReactor();
  const running = reactor.run();
  try {
    const before = openSockets();
    reactor.refuse = true;
    assert.throws(
      () =>
        new UdpEngineListener({
          reactor,
          hostname: host,
          port,
          route: () => undefined,
          pool: new EndpointPool(),
          logger: quiet,
        }),
      /epoll_ctl failed/,
    );
    assert.equal(openSockets(), before, "the socket is closed");
    Deno.listenDatagram({ transport: "udp", hostname: host, port }).close();
  } finally {
    reactor.stop();
    await running;
  }
});

Deno.test("UdpEngineListener charges no endpoint for a send that failed for want of buffer space here", async () => {
  const host = "127.0.69.21";
  const backend = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
  const echoing = (async () => {
    for (;;) {
      const [data, from] = await backend.receive();
      await backend.send(data, from);
    }
  })().catch(() => {});
  const listenPort = freePort(host);
  const state = newRouteState();
  const route = buildRouteTable(
    meshConfig([{
      name: "dns",
      ports: [{
        port: 53,
        protocol: "udp",
        listenPort,
        endpoints: [endpoint(host, (backend.addr as Deno.NetAddr).port)],
      }],
    }]),
    state,
  ).udp.get(listenPort)!;
  const dropped: DropReason[] = [];
  let failing = 10;
  // The flow socket's sends fail as the kernel's do when the host has no buffer space.
  const flowWrite = (fd: number, data: Uint8Array, n: number): number => {
    if (failing-- > 0) return -ENOBUFS;
    const { call, errno } = libcNet();
    const sent = Number(call.write(fd, data, BigInt(n)));
    return sent < 0 ? -errno() : sent;
  };
  const reactor = new Reactor();
  const running = reactor.run();
  const listener = new UdpEngineListener({
    reactor,
    hostname: host,
    port: listenPort,
    route: () => route,
    pool: state.pool,
    logger: quiet,
    drop: (r) => dropped.push(r),
    flowWrite,
  });
  const client = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
  const to = { transport: "udp" as const, hostname: host, port: listenPort };
  try {
    for (let i = 0; i < 10; i++) await client.send(new Uint8Array([i]), to);
    await waitFor("10 drops", () => dropped.length >= 10 || undefined, 5000)
      .catch(() => assert.fail(`drops: ${dropped.join(", ")}`));
    assert.deepEqual(new Set(dropped), new Set(["udp_send_failed"]));
    const ep = route.readyStates[0]!;
    assert.equal(ep.failures, 0, "the endpoint was charged");
    assert.equal(ep.ejections, 0, "the endpoint was ejected");
    assert.equal(listener.flows, 1, "the flow goes on");
    await client.send(new TextEncoder().encode("hi"), to);
    const [data] = await client.receive();
    assert.equal(new TextDecoder().decode(data), "hi");
  } finally {
    client.close();
    await listener.close();
    reactor.stop();
    await running;
    backend.close();
    await echoing;
  }
});
