/**
 * UDP flows over the node's and the listener's caps: the flow that goes is the least recently
 * active one, and each eviction is counted, on Deno's I/O and on the engine (`--l4-worker`)
 * alike.
 */
import assert from "node:assert/strict";
import { Logger } from "../../src/observability/mod.ts";
import { NodeProxy } from "../../src/proxy/mod.ts";
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";
import { freePort, waitFor } from "../testenv/process.ts";
import { ask, flowEchoBackend, flowOf } from "./_udp_flows.ts";

const MESHD = "127.0.64.10";
const BACKEND = "127.0.64.11";
/** Each client its own address: the per-source cap plays no part. */
const CLIENTS = ["127.0.64.12", "127.0.64.13", "127.0.64.14", "127.0.64.15", "127.0.64.16"];
const quiet = new Logger({ level: "error", write: () => {} });

function dropped(proxy: NodeProxy, reason: string): number {
  const re = new RegExp(`^meshd_dropped_total\\{reason="${reason}"\\} (\\d+)$`, "m");
  return Number(re.exec(proxy.registry.render())?.[1] ?? 0);
}

for (const engine of [false, true]) {
  const on = engine ? " (on the engine)" : "";

  // One listener: its own cap (4, as the node's) evicts; two: the node's cap does.
  for (const listeners of [1, 2]) {
    const cap = listeners === 1 ? "the listener's cap" : "--max-udp-flows";
    Deno.test(`NodeProxy UDP over ${cap} evicts the least recently active flow, not an older one in use${on}`, async () => {
      const backend = flowEchoBackend(BACKEND);
      const portA = freePort(MESHD);
      const portB = listeners === 1 ? portA : freePort(MESHD);
      const proxy = new NodeProxy({
        hostname: MESHD,
        httpPort: 0,
        logger: quiet,
        limits: { maxUdpFlows: 4, maxUdpFlowsPerListener: 4, maxUdpFlowsPerSource: 4 },
        engine,
      });
      await proxy.start();
      const clients = CLIENTS.map((hostname) =>
        Deno.listenDatagram({ transport: "udp", hostname, port: 0 })
      );
      try {
        await proxy.apply(meshConfig([...new Set([portA, portB])].map((listenPort, i) => ({
          name: `dns${i}`,
          ports: [{
            port: 53,
            protocol: "udp" as const,
            listenPort,
            endpoints: [endpoint(BACKEND, backend.port)],
          }],
        }))));
        const [user, o0, o1, o2, o3] = clients;
        const first = await ask(user!, MESHD, portA, "u0");
        const opened = Date.now();
        await ask(o0!, MESHD, portA, "o0");
        await ask(o1!, MESHD, portB, "o1");
        await ask(o2!, MESHD, portB, "o2");
        // Flows are ordered by activity at a second's grain: the user's next datagram must come
        // a second after its flow opened to move it behind the three others.
        await waitFor(
          "a second since the flows opened",
          () => Date.now() - opened > 1100 || undefined,
        );
        assert.equal(flowOf(await ask(user!, MESHD, portA, "u1")), flowOf(first));
        // A fifth flow, over the cap of 4: the least recently active goes (o0's), not the user's.
        await ask(o3!, MESHD, portA, "o3");
        const again = await ask(user!, MESHD, portA, "u2");
        assert.equal(flowOf(again), flowOf(first), "the flow in use was evicted, not an idle one");
        assert.match(await ask(o1!, MESHD, portB, "o1 again"), new RegExp(`^o1 again@`));
        assert.equal(dropped(proxy, "udp_flow_evicted"), 1);
      } finally {
        for (const c of clients) c.close();
        await proxy.stop();
        await backend.close();
      }
    });
  }

  Deno.test(`NodeProxy UDP counts each flow evicted over the listener's cap${on}`, async () => {
    const backend = flowEchoBackend(BACKEND);
    const listenPort = freePort(MESHD);
    const proxy = new NodeProxy({
      hostname: MESHD,
      httpPort: 0,
      logger: quiet,
      limits: { maxUdpFlows: 16, maxUdpFlowsPerListener: 2, maxUdpFlowsPerSource: 16 },
      engine,
    });
    await proxy.start();
    const clients = CLIENTS.map((hostname) =>
      Deno.listenDatagram({ transport: "udp", hostname, port: 0 })
    );
    try {
      await proxy.apply(meshConfig([{
        name: "dns",
        ports: [{
          port: 53,
          protocol: "udp",
          listenPort,
          endpoints: [endpoint(BACKEND, backend.port)],
        }],
      }]));
      for (const [i, c] of clients.entries()) {
        assert.match(await ask(c, MESHD, listenPort, `c${i}`), new RegExp(`^c${i}@`));
      }
      // Five clients, two flows at most: three evicted, each counted as the node's cap counts.
      assert.equal(dropped(proxy, "udp_flow_evicted"), 3);
    } finally {
      for (const c of clients) c.close();
      await proxy.stop();
      await backend.close();
    }
  });
}
