/**
 * Hostile clients of meshd's health and metrics ports, which a DaemonSet serves on the node's
 * network (`--health-address 0.0.0.0`): any pod on the node reaches them, and a liveness probe
 * that goes unanswered restarts meshd. Each case runs meshd with the file provider under a low
 * open-file limit and checks that it lives, that probes are answered, and that what an attacker
 * holds open is let go.
 *
 * Addresses: meshd in 127.0.74.1, attackers in 127.0.74.51 to .60, probes from 127.0.74.250.
 */
import assert from "node:assert/strict";
import { freePort, waitFor } from "../testenv/process.ts";
import {
  alive,
  httpStatus,
  idleConnections,
  logLines,
  type Meshd,
  procStats,
  service,
  slice,
  startMeshd,
  stopMeshd,
} from "./_load_env.ts";

const MESHD = "127.0.74.1";
const PROBER = "127.0.74.250";
const attacker = (i: number) => `127.0.74.${51 + i}`;

async function withHealthPorts(
  nofile: number,
  fn: (m: Meshd, ports: { health: number; metrics: number }) => Promise<void>,
): Promise<void> {
  const health = freePort(MESHD);
  const metrics = freePort(MESHD);
  const m = await startMeshd({
    address: MESHD,
    nofile,
    flags: [
      "--health-address",
      MESHD,
      "--health-port",
      String(health),
      "--metrics-port",
      String(metrics),
    ],
    config: () => [service("web", 80), slice("web", "127.0.74.2", 18080)],
    services: 1,
  });
  try {
    await fn(m, { health, metrics });
  } finally {
    await stopMeshd(m);
  }
}

/** `/healthz` from the prober's address (or `source`): its status, 0 for none in 5 s. */
const probe = (m: Meshd, port: number, source = PROBER, path = "/healthz") =>
  httpStatus(m, "meshd", { port, path, source, timeoutMs: 5000 });

Deno.test("meshd lives through idle connections to its health port that exhaust its descriptors, and answers probes again", async () => {
  await withHealthPorts(200, async (m, { health }) => {
    const attacks = [];
    // 250 connections over 10 addresses: more than the 200 descriptors meshd may open.
    for (let i = 0; i < 10; i++) {
      attacks.push(await idleConnections(MESHD, health, 25, attacker(i)));
    }
    try {
      await waitFor(
        "the health port's accepts to fail",
        () => !alive(m) || logLines(m, /health accept failed/) > 0 ? true : undefined,
        20_000,
      );
      // The attackers still hold their sockets: meshd lets go of them itself, and the probe
      // is answered well within the liveness probe's 30 s of failures.
      await waitFor(
        "a probe to be answered while the attackers hold their connections",
        async () => {
          if (!alive(m)) throw new Error("meshd exited when the health port's accept failed");
          return (await probe(m, health)) === 200 ? true : undefined;
        },
        20_000,
      );
    } finally {
      for (const a of attacks) a.close();
    }
    assert.ok(alive(m));
  });
});

Deno.test("meshd lets go of idle and slow connections to its health and metrics ports, and caps them per address", async () => {
  await withHealthPorts(4096, async (m, { health, metrics }) => {
    const before = procStats(m).fds;
    const idle = await idleConnections(MESHD, metrics, 100, attacker(0));
    try {
      // Over the cap of 32 from one address, meshd closes the oldest as it accepts more.
      await waitFor(
        "meshd to close what one address holds over its cap",
        () => idle.ended() >= 100 - 40 ? true : undefined,
        20_000,
      );
      const held = procStats(m).fds - before;
      assert.ok(held <= 40, `one address holds ${held} descriptors of meshd's metrics port`);
      // A probe from the attacker's own address (a hostNetwork pod shares the node's) is
      // answered all the same: the oldest connection goes, not the newest.
      assert.equal(await probe(m, health, attacker(0)), 200);
      assert.equal(await probe(m, metrics, attacker(0), "/metrics"), 200);
      const more = await idleConnections(MESHD, health, 20, attacker(1));
      try {
        await waitFor(
          "meshd to close connections that sent no request head in time",
          () => procStats(m).fds - before <= 4 ? true : undefined,
          20_000,
        );
      } finally {
        more.close();
      }
    } finally {
      idle.close();
    }
    assert.equal(await probe(m, health), 200);
  });
});
