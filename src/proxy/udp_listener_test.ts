import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { endpoint, meshConfig } from "../../tests/testenv/mesh.ts";
import { freePort } from "../../tests/testenv/process.ts";
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
