/**
 * Forwarding loops across workers: with `--l4-worker`, TCP and UDP ports are served by one
 * worker and the HTTP entrypoint by others, so an endpoint at meshd's HTTP entrypoint (from a
 * TCP service) or at its TCP listener (from an HTTP service) is a listener of another worker.
 * It is meshd's own all the same: refused and counted as `meshd_dropped_total{reason="loop"}`
 * at the first hop, as in one process.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { waitFor } from "../testenv/process.ts";
import {
  alive,
  CountingBackend,
  drops,
  httpStatus,
  type Meshd,
  service,
  slice,
  startMeshd,
  stopMeshd,
} from "./_load_env.ts";

const MESHD = "127.0.64.60";
const WEB = "127.0.64.61";
const CLIENT = "127.0.64.62";

/** Sends `ping` on a TCP connection to `port`; resolves with what came back before the close. */
function tcpExchange(m: Meshd, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host: m.address, port, localAddress: CLIENT });
    let got = "";
    const timer = setTimeout(() => done(), 10_000);
    const done = () => {
      clearTimeout(timer);
      s.destroy();
      resolve(got);
    };
    s.setEncoding("latin1");
    s.on("connect", () => s.write("ping\r\n\r\n"));
    s.on("data", (c: string) => got += c);
    s.on("error", done);
    s.on("close", done);
  });
}

// One process; the entrypoint here and TCP in the L4 worker; HTTP in two workers beside it.
for (const flags of [[], ["--l4-worker"], ["--workers", "2", "--l4-worker"]]) {
  const named = flags.length ? ` (${flags.join(" ")})` : "";
  Deno.test(`meshd refuses a TCP endpoint at its HTTP entrypoint and an HTTP endpoint at its TCP listener${named}`, async () => {
    const web = new CountingBackend(WEB);
    let m: Meshd | undefined;
    try {
      m = await startMeshd({
        address: MESHD,
        nofile: 512,
        services: 3,
        ...(flags.length ? { flags, ffi: true } : {}),
        config: ({ http, tcp }) => [
          service("web", 80),
          slice("web", WEB, web.port),
          // TCP to the HTTP entrypoint, and HTTP to that TCP listener.
          service("t2h", 9000, { annotations: { "meshd.io/traffic-type": "tcp" } }),
          slice("t2h", MESHD, http),
          service("h2t", 80),
          slice("h2t", MESHD, tcp),
        ],
      });
      const mesh = m;
      assert.equal(await httpStatus(mesh, "web.hl.mesh", { source: CLIENT }), 200);
      assert.equal(await tcpExchange(mesh, mesh.tcp), "", "the TCP service reached meshd's HTTP");
      await waitFor(
        "the TCP loop to be counted",
        async () => ((await drops(mesh))["loop"] ?? 0) >= 1 ? true : undefined,
      );
      assert.equal(
        await httpStatus(mesh, "h2t.hl.mesh", { source: CLIENT, timeoutMs: 10_000 }),
        508,
        "an HTTP request to a service whose endpoint is meshd's TCP listener",
      );
      // Refused at the first hop: one drop for each, not a trip round the loop.
      await waitFor(
        "the HTTP loop to be counted",
        async () => ((await drops(mesh))["loop"] ?? 0) >= 2 ? true : undefined,
      );
      assert.equal((await drops(mesh))["loop"], 2);
      assert.ok(alive(mesh));
    } finally {
      if (m) await stopMeshd(m);
      await web.close();
    }
  });
}
