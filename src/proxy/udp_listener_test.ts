import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { freePort, waitFor } from "../_testing.ts";
import type { DropReason } from "./proxy_metrics.ts";
import { buildRouteTable, newRouteState } from "./route_table.ts";
import { UdpFlowTable, UdpListener } from "./udp_listener.ts";

Deno.test("UdpFlowTable evicts the least recently active flow over its cap, and counts it", () => {
  const dropped: DropReason[] = [];
  const ended: string[] = [];
  const table = new UdpFlowTable({ max: 2 }, (r) => dropped.push(r));
  const a = { name: "a" };
  const b = { name: "b" };
  const c = { name: "c" };
  table.add(a, { source: "x", end: () => ended.push("a") });
  table.add(b, { source: "y", end: () => ended.push("b") });
  table.touch(a); // b is now the least recently active
  table.add(c, { source: "z", end: () => ended.push("c") });
  assert.deepEqual(ended, ["b"]);
  assert.deepEqual(dropped, ["udp_flow_evicted"]);
  assert.equal(table.size, 2);
  table.remove(a);
  assert.equal(table.size, 1);
});

Deno.test("UdpFlowTable ends a source's own least recently active flow over its per-source cap", () => {
  const dropped: DropReason[] = [];
  const ended: string[] = [];
  const table = new UdpFlowTable({ max: 10, perSource: 2 }, (r) => dropped.push(r));
  const flow = (name: string, source: string) => {
    const f = { name };
    table.add(f, { source, end: () => ended.push(name) });
    return f;
  };
  flow("victim", "10.0.0.1");
  const a1 = flow("a1", "10.0.0.2");
  flow("a2", "10.0.0.2");
  table.touch(a1); // a2 is now the attacker's least recently active
  flow("a3", "10.0.0.2");
  flow("a4", "10.0.0.2");
  assert.deepEqual(ended, ["a2", "a1"]);
  assert.deepEqual(dropped, ["udp_source_limit", "udp_source_limit"]);
  assert.equal(table.sourceSize("10.0.0.2"), 2);
  assert.equal(table.sourceSize("10.0.0.1"), 1);
  assert.equal(table.size, 3);
});

/** A UDP echo backend on 127.0.62.1 that answers `<text>:<port the datagram came from>`. */
function udpEcho() {
  const socket = Deno.listenDatagram({ transport: "udp", hostname: HOST, port: 0 });
  const done = (async () => {
    for (;;) {
      const [data, from] = await socket.receive();
      const text = `${new TextDecoder().decode(data)}:${(from as Deno.NetAddr).port}`;
      await socket.send(new TextEncoder().encode(text), from);
    }
  })().catch(() => {});
  return { port: (socket.addr as Deno.NetAddr).port, close: () => (socket.close(), done) };
}

const HOST = "127.0.62.1";

Deno.test("UdpListener finds each client's flow by address and port, and forgets an evicted one", async () => {
  const backend = udpEcho();
  const listenPort = freePort(HOST);
  const state = newRouteState();
  const table = buildRouteTable(
    meshConfig([{
      name: "dns",
      ports: [{ port: 53, protocol: "udp", listenPort, endpoints: [endpoint(HOST, backend.port)] }],
    }]),
    state,
  );
  const route = table.udp.get(listenPort)!;
  const dropped: DropReason[] = [];
  const listener = new UdpListener({
    hostname: HOST,
    port: listenPort,
    route: () => route,
    pool: state.pool,
    logger: new Logger({ level: "error", write: () => {} }),
    maxFlows: 2,
    drop: (r) => dropped.push(r),
  });
  const clients = [0, 1, 2].map(() =>
    Deno.listenDatagram({ transport: "udp", hostname: HOST, port: 0 })
  );
  // The answer's suffix is the port of the flow's own socket towards the backend.
  const ask = async (i: number, text: string): Promise<string> => {
    const c = clients[i]!;
    await c.send(new TextEncoder().encode(text), {
      transport: "udp",
      hostname: HOST,
      port: listenPort,
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) =>
      timer = setTimeout(() => reject(new Error(`no answer to "${text}" within 3 s`)), 3000)
    );
    try {
      const [data] = await Promise.race([c.receive(), timeout]);
      return new TextDecoder().decode(data);
    } finally {
      clearTimeout(timer);
    }
  };
  const flowPort = (answer: string) => answer.split(":")[1];
  try {
    const a1 = await ask(0, "a1");
    const b1 = await ask(1, "b1");
    const a2 = await ask(0, "a2");
    assert.equal(flowPort(a2), flowPort(a1), "one client's datagrams took two flows");
    assert.notEqual(flowPort(b1), flowPort(a1), "two clients on one address shared a flow");
    assert.equal(listener.flows, 2);
    // A third client over maxFlows 2 evicts the least recently active flow: client 0's.
    await ask(2, "c1");
    assert.deepEqual(dropped, ["udp_flow_evicted"]);
    // Client 0 is found no more: its next datagram opens a flow of its own again.
    const a3 = await ask(0, "a3");
    assert.match(a3, /^a3:/);
    assert.notEqual(flowPort(a3), flowPort(a1));
    assert.equal(listener.flows, 2);
    assert.equal(route.metrics.requests.value, 4);
  } finally {
    for (const c of clients) c.close();
    await listener.close();
    await backend.close();
  }
});

/** A UDP echo backend on `host`: answers each datagram with it. */
function echoOn(host: string) {
  const socket = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
  const done = (async () => {
    for (;;) {
      const [data, from] = await socket.receive();
      await socket.send(data, from);
    }
  })().catch(() => {});
  return { port: (socket.addr as Deno.NetAddr).port, close: () => (socket.close(), done) };
}

Deno.test("UdpListener charges no endpoint for a send that failed for want of buffer space here", async () => {
  const host = "127.0.69.20";
  const backend = echoOn(host);
  const listenPort = freePort(host);
  const state = newRouteState();
  const route = buildRouteTable(
    meshConfig([{
      name: "dns",
      ports: [{ port: 53, protocol: "udp", listenPort, endpoints: [endpoint(host, backend.port)] }],
    }]),
    state,
  ).udp.get(listenPort)!;
  const dropped: DropReason[] = [];
  let failing = 10;
  // The flow's socket, whose sends fail as Deno's do when the host has no buffer space.
  const listenDatagram = (o: Deno.UdpListenOptions & { transport: "udp" }) => {
    const real = Deno.listenDatagram(o);
    return {
      get addr() {
        return real.addr;
      },
      receive: (p?: Uint8Array) => real.receive(p),
      send: (p: Uint8Array, a: Deno.Addr) =>
        failing-- > 0
          ? Promise.reject(new Error("No buffer space available (os error 105)"))
          : real.send(p, a),
      close: () => real.close(),
    } as unknown as Deno.DatagramConn;
  };
  const listener = new UdpListener({
    hostname: host,
    port: listenPort,
    route: () => route,
    pool: state.pool,
    logger: new Logger({ level: "error", write: () => {} }),
    drop: (r) => dropped.push(r),
    listenDatagram,
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
    await backend.close();
  }
});
