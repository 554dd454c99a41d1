/**
 * Forwarding loops across workers: with `--l4-worker`, TCP and UDP ports are served by one
 * worker and the HTTP entrypoint by others, so an endpoint at meshd's HTTP entrypoint (from a
 * TCP service) or at its TCP listener (from an HTTP service) is a listener of another worker.
 * It is meshd's own all the same: refused and counted as `meshd_dropped_total{reason="loop"}`
 * at the first hop, as in one process.
 */
import assert from "node:assert/strict";
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
  tcpExchange,
} from "./_load_env.ts";

const MESHD = "127.0.64.60";
const WEB = "127.0.64.61";
const CLIENT = "127.0.64.62";

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
      assert.equal(
        await tcpExchange(mesh, mesh.tcp, CLIENT, "ping\r\n\r\n"),
        "",
        "the TCP service reached meshd's HTTP",
      );
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
