import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { freePort } from "../_testing.ts";
import { openSockets, RefusingReactor } from "../engine/_testing.ts";
import { EndpointPool } from "./endpoint_pool.ts";
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
