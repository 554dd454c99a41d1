/**
 * Config distribution over real gRPC streams on loopback: the leader's DistributionServer and
 * nodes' DistributionClients.
 */
import assert from "node:assert/strict";
import { endpoint, meshConfig } from "../../tests/testenv/mesh.ts";
import { waitFor } from "../../tests/testenv/process.ts";
import { Logger } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { compareServices } from "./config_delta.ts";
import { DistributionClient } from "./distribution_client.ts";
import { DistributionServer } from "./distribution_server.ts";

const quiet = () => new Logger({ level: "error", write: () => {} });

/** A config sorted as the builder sorts services, as applyDelta keeps them. */
function config(version: number, ready = true, extra = 0): MeshConfig {
  const c = meshConfig([
    { name: "a", ports: [{ port: 80, endpoints: [endpoint("10.0.0.1", 80, { ready })] }] },
    ...Array.from({ length: extra }, (_, i) => ({
      name: `s${i}`,
      ports: [{ port: 80, endpoints: [endpoint(`10.0.1.${i}`, 80)] }],
    })),
  ], { version });
  c.services.sort(compareServices);
  return c;
}

/** A node: applies what it gets into `applied`, or refuses versions in `refuse`. */
function node(name: string, leader: () => Promise<string | null>, refuse = new Set<number>()) {
  const state = { applied: null as MeshConfig | null, versions: [] as number[] };
  const client = new DistributionClient({
    node: name,
    leader,
    current: () => state.applied,
    apply: (c) => {
      if (refuse.has(c.version)) {
        return Promise.reject(new Error(`version ${c.version} is refused`));
      }
      state.applied = c;
      state.versions.push(c.version);
      return Promise.resolve();
    },
    logger: quiet(),
    backoffMs: { first: 20, max: 100 },
  });
  return { state, client };
}

Deno.test("a node gets the whole config, then deltas, and the leader tracks what it applied", async () => {
  const server = new DistributionServer({ logger: quiet() });
  const port = await server.listen("127.0.0.1", 0);
  const n = node("node-1", () => Promise.resolve(`127.0.0.1:${port}`));
  try {
    server.publish(config(1, true, 50));
    n.client.start();
    await waitFor("version 1 on the node", () => n.state.applied?.version === 1 || undefined);
    assert.deepEqual(n.state.applied, config(1, true, 50));
    assert.equal(n.client.stats.snapshots, 1);
    server.publish(config(2, false, 50));
    await waitFor("version 2 on the node", () => n.state.applied?.version === 2 || undefined);
    assert.deepEqual(n.state.applied, config(2, false, 50));
    assert.equal(n.client.stats.deltas, 1);
    await waitFor("the leader to see the ack", () => server.nodes()[0]?.applied === 2 || undefined);
    assert.deepEqual(
      server.nodes().map((s) => [s.node, s.connected, s.applied, s.sent, s.error]),
      [["node-1", true, 2, 2, null]],
    );
    await n.client.stop();
    await waitFor(
      "the leader to see the node go",
      () => server.nodes()[0]?.connected === false || undefined,
    );
    assert.equal(server.nodes()[0]!.applied, 2, "what it applied is still known");
  } finally {
    await n.client.stop();
    await server.stop();
  }
});

Deno.test("a node that falls behind gets one delta over all it missed", async () => {
  const server = new DistributionServer({ logger: quiet() });
  const port = await server.listen("127.0.0.1", 0);
  let slow: (() => void) | null = null;
  const state = { applied: null as MeshConfig | null, versions: [] as number[] };
  const client = new DistributionClient({
    node: "slow",
    leader: () => Promise.resolve(`127.0.0.1:${port}`),
    current: () => state.applied,
    apply: async (c) => {
      // version 1 takes until the test lets it go
      if (c.version === 1) await new Promise<void>((r) => slow = r);
      state.applied = c;
      state.versions.push(c.version);
    },
    logger: quiet(),
  });
  try {
    server.publish(config(1));
    client.start();
    await waitFor("version 1 to be applying", () => slow ?? undefined);
    for (let v = 2; v <= 5; v++) server.publish(config(v, v % 2 === 0));
    slow!();
    await waitFor("version 5 on the node", () => state.applied?.version === 5 || undefined);
    assert.deepEqual(state.versions, [1, 5]);
    assert.deepEqual(state.applied, config(5, false));
  } finally {
    await client.stop();
    await server.stop();
  }
});

Deno.test("a version a node cannot apply is reported, and the whole config comes next", async () => {
  const server = new DistributionServer({ logger: quiet() });
  const port = await server.listen("127.0.0.1", 0);
  const n = node("picky", () => Promise.resolve(`127.0.0.1:${port}`), new Set([2]));
  try {
    server.publish(config(1));
    n.client.start();
    await waitFor("version 1", () => n.state.applied?.version === 1 || undefined);
    server.publish(config(2, false));
    await waitFor("the failure at the leader", () => server.nodes()[0]?.error ?? undefined);
    assert.equal(server.nodes()[0]!.error, "version 2 is refused");
    assert.equal(server.nodes()[0]!.applied, 1);
    assert.equal(n.state.applied?.version, 1, "the node keeps what it had");
    server.publish(config(3, true));
    await waitFor("version 3", () => n.state.applied?.version === 3 || undefined);
    assert.equal(n.client.stats.snapshots, 2, "a full config after the failure");
    assert.equal(server.nodes()[0]!.error, null);
  } finally {
    await n.client.stop();
    await server.stop();
  }
});

Deno.test("a node follows a new leader, and one the leader refuses gets nothing", async () => {
  const first = new DistributionServer({ logger: quiet() });
  let addr = `127.0.0.1:${await first.listen("127.0.0.1", 0)}`;
  const n = node("node-1", () => Promise.resolve(addr));
  const second = new DistributionServer({
    logger: quiet(),
    authenticate: ({ node }) => Promise.resolve(node === "node-1" ? null : "not a meshd pod"),
  });
  const stranger = node("intruder", () => Promise.resolve(addr));
  try {
    first.publish(config(1));
    n.client.start();
    await waitFor("version 1", () => n.state.applied?.version === 1 || undefined);
    // the leader goes; another, with its own history, takes over at another address
    await first.stop();
    addr = `127.0.0.1:${await second.listen("127.0.0.1", 0)}`;
    second.publish(config(7, false));
    await waitFor(
      "version 7 from the new leader",
      () => n.state.applied?.version === 7 || undefined,
    );
    assert.ok(n.client.stats.connects >= 2);
    stranger.client.start();
    await waitFor(
      "the stranger to be refused",
      () => stranger.client.stats.connects >= 2 || undefined,
    );
    assert.equal(stranger.state.applied, null);
    assert.deepEqual(second.nodes().map((s) => s.node), ["node-1"]);
  } finally {
    await n.client.stop();
    await stranger.client.stop();
    await second.stop();
  }
});
