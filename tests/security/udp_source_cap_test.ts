/**
 * UDP flows per source address: one address sending from many ports must evict its own flows,
 * never another client's.
 */
import assert from "node:assert/strict";
import { Logger } from "../../src/observability/mod.ts";
import { NodeProxy } from "../../src/proxy/mod.ts";
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";
import { freePort } from "../testenv/process.ts";
import { ask, flowEchoBackend, flowOf } from "./_udp_flows.ts";

const MESHD = "127.0.110.10";
const BACKEND = "127.0.110.11";
const VICTIM = "127.0.110.12";
const ATTACKER = "127.0.110.13";
const quiet = new Logger({ level: "error", write: () => {} });

for (const engine of [false, true]) {
  Deno.test(`NodeProxy UDP evicts a source's own oldest flow over --max-udp-flows-per-source, never another client's${engine ? " (on the engine)" : ""}`, async () => {
    // An echo backend that says which flow socket (source port) each datagram came from.
    const backend = flowEchoBackend(BACKEND);
    const listenPort = freePort(MESHD);
    const proxy = new NodeProxy({
      hostname: MESHD,
      httpPort: 0,
      logger: quiet,
      limits: { maxUdpFlows: 16, maxUdpFlowsPerListener: 16, maxUdpFlowsPerSource: 4 },
      engine,
    });
    await proxy.start();
    const victim = Deno.listenDatagram({ transport: "udp", hostname: VICTIM, port: 0 });
    const attackers: Deno.DatagramConn[] = [];
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
      const before = await ask(victim, MESHD, listenPort, "v0");
      // One address, 40 source ports: over twice the global cap of 16 flows.
      for (let i = 0; i < 40; i++) {
        const s = Deno.listenDatagram({ transport: "udp", hostname: ATTACKER, port: 0 });
        attackers.push(s);
        assert.match(await ask(s, MESHD, listenPort, `a${i}`), new RegExp(`^a${i}@`));
      }
      const after = await ask(victim, MESHD, listenPort, "v1");
      assert.equal(flowOf(after), flowOf(before), "the victim's flow was evicted by the flood");
      const text = proxy.registry.render();
      const dropped = /^meshd_dropped_total\{reason="udp_source_limit"\} (\d+)$/m.exec(text)?.[1];
      assert.equal(Number(dropped), 36, "each attacker flow over the cap counted");
      // The attacker's most recent flows still work: it was capped, not cut off.
      assert.match(await ask(attackers[39]!, MESHD, listenPort, "a39 again"), /^a39 again@/);
    } finally {
      for (const s of attackers) s.close();
      victim.close();
      await proxy.stop();
      await backend.close();
    }
  });
}
