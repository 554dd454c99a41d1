/**
 * Config distribution over real gRPC streams on loopback: the leader's DistributionServer and
 * nodes' DistributionClients.
 */
import * as grpc from "@grpc/grpc-js";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { waitFor } from "../_testing.ts";
import { Logger } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { compareServices } from "./config_delta.ts";
import type { StampedConfig } from "./config_history.ts";
import { DistributionClient, type LeaderAddress, MAX_UPDATE_BYTES } from "./distribution_client.ts";
import { DistributionServer, type DistributionServerOptions } from "./distribution_server.ts";
import {
  type ConfigUpdateMessage,
  distributionPackage,
  type NodeReportMessage,
} from "./grpc_service.ts";
import { createLeaderIdentity, LEADER_TLS_NAME } from "./leader_identity.ts";

const quiet = () => new Logger({ level: "error", write: () => {} });

/** A leader's server with a fresh identity, listening on loopback. */
async function leader(extra: Partial<DistributionServerOptions> = {}, host = "127.0.0.1") {
  const identity = await createLeaderIdentity("test-leader");
  const server = new DistributionServer({ logger: quiet(), identity, ...extra });
  const port = await server.listen(host, 0);
  const address: LeaderAddress = { address: `${host}:${port}`, certPem: identity.certPem };
  return { server, address, identity };
}

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
function node(
  name: string,
  leader: () => Promise<LeaderAddress | null>,
  refuse = new Set<number>(),
) {
  const state = {
    applied: null as MeshConfig | null,
    epoch: "",
    versions: [] as number[],
  };
  const client = new DistributionClient({
    node: name,
    leader,
    current: () => state.applied && { epoch: state.epoch, config: state.applied },
    apply: ({ config: c, epoch }) => {
      if (refuse.has(c.version)) {
        return Promise.reject(new Error(`version ${c.version} is refused`));
      }
      state.applied = c;
      state.epoch = epoch;
      state.versions.push(c.version);
      return Promise.resolve();
    },
    logger: quiet(),
    backoffMs: { first: 20, max: 100 },
  });
  return { state, client };
}

Deno.test("a node gets the whole config, then deltas, and the leader tracks what it applied", async () => {
  const { server, address } = await leader();
  const n = node("node-1", () => Promise.resolve(address));
  try {
    server.publish(config(1, true, 50), "e1");
    n.client.start();
    await waitFor("version 1 on the node", () => n.state.applied?.version === 1 || undefined);
    assert.deepEqual(n.state.applied, config(1, true, 50));
    assert.equal(n.client.stats.snapshots, 1);
    server.publish(config(2, false, 50), "e1");
    await waitFor("version 2 on the node", () => n.state.applied?.version === 2 || undefined);
    assert.deepEqual(n.state.applied, config(2, false, 50));
    assert.equal(n.client.stats.deltas, 1);
    await waitFor("the leader to see the ack", () => server.nodes()[0]?.applied === 2 || undefined);
    assert.deepEqual(
      server.nodes().map((s) => [s.node, s.connected, s.applied, s.sent, s.inSync, s.error]),
      [["node-1", true, 2, 2, true, null]],
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

Deno.test("a port held by another process is taken once it is free, by the same server", async () => {
  // A replacing meshd (--reuse-port) finds its predecessor on the config stream's port and
  // retries: the retry must bind once the predecessor has gone.
  const holder = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (holder.addr as Deno.NetAddr).port;
  const identity = await createLeaderIdentity("test-leader");
  const server = new DistributionServer({ logger: quiet(), identity });
  const address: LeaderAddress = { address: `127.0.0.1:${port}`, certPem: identity.certPem };
  const n = node("node-1", () => Promise.resolve(address));
  try {
    await assert.rejects(server.listen("127.0.0.1", port), /No address added/);
    await assert.rejects(server.listen("127.0.0.1", port), /No address added/, "still held");
    holder.close();
    assert.equal(await server.listen("127.0.0.1", port), port);
    server.publish(config(1), "e1");
    n.client.start();
    await waitFor("version 1 on the node", () => n.state.applied?.version === 1 || undefined);
  } finally {
    try {
      holder.close();
    } catch { /* closed above */ }
    await n.client.stop();
    await server.stop();
  }
});

Deno.test("a snapshot larger than gRPC's default 4 MiB limit reaches the node", async () => {
  const { server, address } = await leader();
  const n = node("node-big", () => Promise.resolve(address));
  try {
    const big = config(1, true, 20_000);
    const bytes = new TextEncoder().encode(JSON.stringify(big)).length;
    assert.ok(bytes > 4 * 1024 * 1024, `the config is ${bytes} bytes`);
    server.publish(big, "e1");
    n.client.start();
    await waitFor(
      "the big snapshot on the node",
      () => n.state.applied?.version === 1 || undefined,
    );
    assert.equal(n.state.applied!.services.length, 20_001);
  } finally {
    await n.client.stop();
    await server.stop();
  }
});

Deno.test("whole configs go out a few at a time; the other nodes wait their turn", async () => {
  const { server, address } = await leader({ maxSnapshotsInFlight: 1 });
  // Each node's apply waits until the test lets it finish: `applying` holds who is at it.
  const applying = new Map<string, () => void>();
  const clients = ["n1", "n2", "n3"].map((name) => {
    let held: StampedConfig | null = null;
    return new DistributionClient({
      node: name,
      leader: () => Promise.resolve(address),
      current: () => held,
      apply: async (c) => {
        await new Promise<void>((done) => applying.set(name, done));
        applying.delete(name);
        held = c;
      },
      logger: quiet(),
      backoffMs: { first: 20, max: 100 },
    });
  });
  const finish = (name: string) => applying.get(name)!();
  try {
    server.publish(config(1, true, 10), "e1");
    for (const c of clients) c.start();
    for (let done = 0; done < 3; done++) {
      const [name] = await waitFor(
        `whole config ${done + 1} being applied`,
        () => server.nodes().length === 3 && applying.size === 1 ? [...applying.keys()] : undefined,
      );
      // While that one is unacknowledged, the others have been sent nothing.
      const sentNow = server.nodes().filter((n) => n.sent === 1 && n.applied !== 1);
      assert.deepEqual(sentNow.map((n) => n.node), [name]);
      finish(name!);
      await waitFor(
        `${name} acknowledged`,
        () => server.nodes().find((n) => n.node === name)?.applied === 1 || undefined,
      );
    }
    // Deltas do not wait: all three nodes are applying version 2 at once.
    server.publish(config(2, false, 10), "e1");
    await waitFor("three deltas applied side by side", () => applying.size === 3 || undefined);
    for (const name of [...applying.keys()]) finish(name);
    await waitFor(
      "every node on version 2",
      () => server.nodes().every((n) => n.applied === 2) || undefined,
    );
  } finally {
    for (const done of applying.values()) done();
    await Promise.all(clients.map((c) => c.stop()));
    await server.stop();
  }
});

Deno.test("a node that never acknowledges a whole config loses its slot to the others", async () => {
  const { server, address } = await leader({ maxSnapshotsInFlight: 1, snapshotAckTimeoutMs: 200 });
  let release = () => {};
  const stuck = new Promise<void>((r) => release = r);
  const hung = new DistributionClient({
    node: "hung",
    leader: () => Promise.resolve(address),
    current: () => null,
    apply: () => stuck, // done only when the test ends
    logger: quiet(),
    backoffMs: { first: 1_000, max: 1_000 },
  });
  const ok = node("ok", () => Promise.resolve(address));
  try {
    server.publish(config(1, true, 10), "e1");
    hung.start();
    await waitFor(
      "the hung node to hold the slot",
      () => server.nodes().find((n) => n.node === "hung")?.sent === 1 || undefined,
    );
    ok.client.start();
    await waitFor(
      "the other node on version 1",
      () => ok.state.applied?.version === 1 || undefined,
    );
  } finally {
    release();
    await ok.client.stop();
    await hung.stop();
    await server.stop();
  }
});

Deno.test("a node that falls behind gets one delta over all it missed", async () => {
  const { server, address } = await leader();
  let slow: (() => void) | null = null;
  const state = { applied: null as StampedConfig | null, versions: [] as number[] };
  const client = new DistributionClient({
    node: "slow",
    leader: () => Promise.resolve(address),
    current: () => state.applied,
    apply: async (stamped) => {
      const c = stamped.config;
      // version 1 takes until the test lets it go
      if (c.version === 1) await new Promise<void>((r) => slow = r);
      state.applied = stamped;
      state.versions.push(c.version);
    },
    logger: quiet(),
  });
  try {
    server.publish(config(1), "e1");
    client.start();
    await waitFor("version 1 to be applying", () => slow ?? undefined);
    for (let v = 2; v <= 5; v++) server.publish(config(v, v % 2 === 0), "e1");
    slow!();
    await waitFor("version 5 on the node", () => state.applied?.config.version === 5 || undefined);
    assert.deepEqual(state.versions, [1, 5]);
    assert.deepEqual(state.applied?.config, config(5, false));
  } finally {
    await client.stop();
    await server.stop();
  }
});

Deno.test("a version a node cannot apply is reported, and the whole config comes next", async () => {
  const { server, address } = await leader();
  const n = node("picky", () => Promise.resolve(address), new Set([2]));
  try {
    server.publish(config(1), "e1");
    n.client.start();
    await waitFor("version 1", () => n.state.applied?.version === 1 || undefined);
    server.publish(config(2, false), "e1");
    await waitFor("the failure at the leader", () => server.nodes()[0]?.error ?? undefined);
    assert.equal(server.nodes()[0]!.error, "version 2 is refused");
    assert.equal(server.nodes()[0]!.applied, 1);
    assert.equal(n.state.applied?.version, 1, "the node keeps what it had");
    server.publish(config(3, true), "e1");
    await waitFor("version 3", () => n.state.applied?.version === 3 || undefined);
    assert.equal(n.client.stats.snapshots, 2, "a full config after the failure");
    assert.equal(server.nodes()[0]!.error, null);
  } finally {
    await n.client.stop();
    await server.stop();
  }
});

Deno.test("a node follows a new leader, and gets a delta when the new leader has its config", async () => {
  const first = await leader();
  let current: LeaderAddress = first.address;
  const n = node("node-1", () => Promise.resolve(current));
  let second: Awaited<ReturnType<typeof leader>> | null = null;
  try {
    first.server.publish(config(1), "term-1");
    n.client.start();
    await waitFor("version 1", () => n.state.applied?.version === 1 || undefined);
    // the leader goes; another, with its own certificate, takes over at another address and
    // seeds its history with the config its own node had (term 1's version 1)
    await first.server.stop();
    second = await leader();
    second.server.publish(config(1), "term-1");
    second.server.publish(config(2, false), "term-2");
    current = second.address;
    n.client.leaderChanged(current);
    await waitFor(
      "version 2 from the new leader",
      () => n.state.applied?.version === 2 || undefined,
    );
    assert.equal(n.state.epoch, "term-2");
    assert.deepEqual(n.state.applied, config(2, false));
    assert.equal(n.client.stats.snapshots, 1, "a delta across the change of leader");
    assert.ok(n.client.stats.connects >= 2);
  } finally {
    await n.client.stop();
    await first.server.stop();
    await second?.server.stop();
  }
});

Deno.test("a node whose version number the new leader has in another epoch gets the whole config", async () => {
  const first = await leader();
  const n = node("node-1", () => Promise.resolve(first.address));
  const second = await leader();
  const again = node("node-1", () => Promise.resolve(second.address));
  try {
    first.server.publish(config(1, true, 3), "term-1");
    n.client.start();
    await waitFor("version 1", () => n.state.applied?.version === 1 || undefined);
    await n.client.stop();
    // another leader's version 1 is another config: never a base for a delta
    second.server.publish(config(1, false), "term-2");
    again.state.applied = n.state.applied;
    again.state.epoch = n.state.epoch;
    again.client.start();
    await waitFor("term 2's config", () => again.state.epoch === "term-2" || undefined);
    assert.deepEqual(again.state.applied, config(1, false));
    assert.equal(again.client.stats.snapshots, 1);
  } finally {
    await n.client.stop();
    await again.client.stop();
    await first.server.stop();
    await second.server.stop();
  }
});

Deno.test("only the leader's own certificate is trusted, only a leader serves, and a refused node gets nothing", async () => {
  let leading = false;
  const l = await leader({
    isLeader: () => leading,
    authenticate: ({ node }) => Promise.resolve(node === "node-1" ? null : "not a meshd pod"),
  });
  const impostor = await createLeaderIdentity("impostor");
  const fooled = node(
    "node-1",
    () => Promise.resolve({ address: l.address.address, certPem: impostor.certPem }),
  );
  const n = node("node-1", () => Promise.resolve(l.address));
  const stranger = node("intruder", () => Promise.resolve(l.address));
  try {
    l.server.publish(config(1), "e1");
    // a client that expects another certificate never completes the handshake
    fooled.client.start();
    n.client.start();
    await waitFor("two refused attempts", () => n.client.stats.connects >= 2 || undefined);
    assert.equal(n.state.applied, null, "a meshd that does not lead sends nothing");
    leading = true;
    n.client.leaderChanged(l.address);
    await waitFor("version 1 once it leads", () => n.state.applied?.version === 1 || undefined);
    stranger.client.start();
    await waitFor(
      "the stranger to be refused",
      () => stranger.client.stats.connects >= 2 || undefined,
    );
    assert.equal(stranger.state.applied, null);
    assert.equal(fooled.state.applied, null, "the TLS check failed");
    assert.ok(fooled.client.stats.connects >= 1);
    assert.deepEqual(l.server.nodes().map((s) => s.node), ["node-1"]);
    // losing the lead ends every stream
    leading = false;
    l.server.disconnectAll("stopped leading");
    await waitFor("the node to be dropped", () => !n.client.connected || undefined);
  } finally {
    await fooled.client.stop();
    await n.client.stop();
    await stranger.client.stop();
    await l.server.stop();
  }
});

/**
 * A bare Subscribe stream to `address`, as a node of any version could open one: the test
 * writes the node's reports itself and sees every message the leader writes.
 */
function rawStream(address: LeaderAddress, shared?: grpc.Client) {
  const pkg = distributionPackage();
  const client = shared ?? new pkg.client(
    address.address,
    grpc.credentials.createSsl(Buffer.from(address.certPem)),
    {
      "grpc.ssl_target_name_override": LEADER_TLS_NAME,
      "grpc.default_authority": LEADER_TLS_NAME,
      "grpc.max_receive_message_length": MAX_UPDATE_BYTES,
    },
  );
  const call = (client as unknown as {
    Subscribe(): grpc.ClientDuplexStream<NodeReportMessage, ConfigUpdateMessage>;
  }).Subscribe();
  const messages: ConfigUpdateMessage[] = [];
  call.on("data", (m: ConfigUpdateMessage) => messages.push(m));
  const ended = new Promise<string>((resolve) => {
    call.on("error", (e: grpc.ServiceError) => resolve(e.details));
    call.on("end", () => resolve("end"));
  });
  const hello = (acceptsParts: boolean) =>
    call.write({
      hello: {
        node: "raw",
        applied_version: 0,
        applied_epoch: "",
        token: "",
        accepts_parts: acceptsParts,
      },
    });
  const close = () => {
    call.cancel();
    client.close();
  };
  return { call, messages, ended, hello, close, client };
}

/** The bytes of `pieces` end to end. */
function joined(pieces: Uint8Array[]): string {
  return new TextDecoder().decode(Buffer.concat(pieces));
}

Deno.test("DistributionServer writes a large update to a node that accepts parts at most partsAhead parts ahead of its acknowledgements", async () => {
  const { server, address } = await leader({ partBytes: 1024, partsAhead: 3 }, "127.0.62.1");
  const whole = config(1, true, 100);
  const json = JSON.stringify(whole);
  const count = Math.ceil(new TextEncoder().encode(json).length / 1024);
  assert.ok(count > 10, `the config makes ${count} parts`);
  const silent = rawStream(address);
  const acking = rawStream(address);
  try {
    server.publish(whole, "e1");
    // A node that acknowledges nothing gets 3 parts. A second Hello makes the leader end the
    // stream: it comes after everything the leader had written, so nothing more was queued.
    silent.hello(true);
    await waitFor("3 parts", () => silent.messages.length >= 3 || undefined);
    silent.hello(true);
    assert.match(await silent.ended, /Hello was sent twice/);
    assert.equal(silent.messages.length, 3, "no part past the window before an acknowledgement");
    for (const m of silent.messages) {
      assert.equal(m.body, "part");
      assert.equal(m.part!.length, 1024);
    }
    // A node that acknowledges each part gets them all, the last one as the snapshot.
    acking.call.on("data", (m: ConfigUpdateMessage) => {
      if (m.body === "part") {
        const parts = acking.messages.length;
        acking.call.write({ ack: { version: 1, applied: false, error: "", parts } });
      }
    });
    acking.hello(true);
    await waitFor("the last part", () => acking.messages.at(-1)?.body === "snapshot" || undefined);
    assert.equal(acking.messages.length, count);
    assert.ok(acking.messages.slice(0, -1).every((m) => m.body === "part"));
    assert.equal(
      joined(acking.messages.map((m) => m.body === "part" ? m.part! : m.snapshot!)),
      json,
    );
  } finally {
    silent.close();
    acking.close();
    await server.stop();
  }
});

Deno.test("DistributionServer sends a large update whole to a node that does not accept parts", async () => {
  const { server, address } = await leader({ partBytes: 1024 }, "127.0.62.2");
  const whole = config(1, true, 100);
  const raw = rawStream(address);
  try {
    server.publish(whole, "e1");
    raw.hello(false);
    await waitFor("the snapshot", () => raw.messages[0]);
    assert.equal(raw.messages[0]!.body, "snapshot");
    assert.equal(joined([raw.messages[0]!.snapshot!]), JSON.stringify(whole));
    raw.call.write({ ack: { version: 1, applied: true, error: "" } });
    await waitFor("the node in sync", () => server.nodes()[0]?.inSync || undefined);
  } finally {
    raw.close();
    await server.stop();
  }
});

Deno.test("DistributionClient applies a snapshot and a delta that come in parts", async () => {
  const { server, address } = await leader({ partBytes: 512, partsAhead: 2 }, "127.0.62.3");
  const n = node("node-parts", () => Promise.resolve(address));
  try {
    server.publish(config(1, true, 60), "e1");
    n.client.start();
    await waitFor("version 1", () => n.state.applied?.version === 1 || undefined);
    assert.deepEqual(n.state.applied, config(1, true, 60));
    const first = n.client.stats.parts;
    assert.ok(first > 10, `${first} parts`);
    // 60 services more: a delta of many parts
    server.publish(config(2, false, 120), "e1");
    await waitFor("version 2", () => n.state.applied?.version === 2 || undefined);
    assert.deepEqual(n.state.applied, config(2, false, 120));
    assert.equal(n.client.stats.snapshots, 1);
    assert.equal(n.client.stats.deltas, 1);
    assert.ok(n.client.stats.parts > first + 10, `${n.client.stats.parts - first} parts`);
    await waitFor("the node in sync", () => server.nodes()[0]?.inSync || undefined);
  } finally {
    await n.client.stop();
    await server.stop();
  }
});

/** Sets this process's soft open-file limit (the hard one stays); returns the old one. */
async function setSoftNofile(n: number): Promise<number> {
  const cur = Number(
    /^Max open files\s+(\d+)/m.exec(Deno.readTextFileSync("/proc/self/limits"))![1],
  );
  const out = await new Deno.Command("prlimit", {
    args: ["--pid", String(Deno.pid), `--nofile=${n}:`],
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return cur;
}

Deno.test("the leader accepts nodes again after a flood of connections exhausted its descriptors", async () => {
  const { server, address } = await leader({ listenerCheckMs: 300 }, "127.0.74.1");
  const port = Number(address.address.split(":")[1]);
  server.publish(config(1), "e1");
  const n = node("node-1", () => Promise.resolve(address));
  let fds = 0;
  for (const _ of Deno.readDirSync("/proc/self/fd")) fds++;
  const old = await setSoftNofile(fds + 60);
  const flood: Deno.Conn[] = [];
  try {
    // each connection takes a descriptor on both sides: the leader's accepts fail
    for (let i = 0; i < 100; i++) {
      const c = await Deno.connect({ hostname: "127.0.74.1", port }).catch(() => null);
      if (c) flood.push(c);
    }
    // Not a wait for something to happen: the leader's event loop runs a while at the limit,
    // so that its listener's accepts fail, which nothing reports (the stuck state to get out of).
    await new Promise((r) => setTimeout(r, 500));
  } finally {
    for (const c of flood) c.close();
    await setSoftNofile(old);
  }
  try {
    n.client.start();
    await waitFor("the node to get version 1", () => n.state.applied?.version === 1 || undefined);
  } finally {
    await n.client.stop();
    await server.stop();
  }
});

Deno.test("Hellos with made-up tokens from one address cost a few token checks, not one each", async () => {
  let checks = 0;
  const { server, address } = await leader({
    authenticate: () => {
      checks++;
      return Promise.resolve("its token is not valid");
    },
  }, "127.0.74.1");
  const streams = Array.from({ length: 50 }, () => rawStream(address));
  try {
    for (const s of streams) s.hello(true);
    const why = await Promise.all(streams.map((s) => s.ended));
    assert.ok(checks <= 6, `${checks} token checks (TokenReviews) for 50 Hellos from one address`);
    assert.ok(why.some((w) => /too many tokens checked/.test(w)), why.join(", "));
    assert.ok(why.every((w) => /too many tokens|not valid/.test(w)), why.join(", "));
  } finally {
    for (const s of streams) s.close();
    await server.stop();
  }
});

Deno.test("valid tokens from one address cost it nothing: nodes that share one are not held to a check a second", async () => {
  let checks = 0;
  const { server, address } = await leader({
    authenticate: () => {
      checks++;
      return Promise.resolve(null);
    },
  }, "127.0.74.1");
  server.publish(config(1), "e1");
  try {
    // One after the other, each past its check: more than the 5 a second an address may start.
    for (let i = 0; i < 12; i++) {
      const s = rawStream(address);
      try {
        s.hello(true);
        await waitFor(`node ${i}'s config`, () => s.messages.length > 0 || undefined, 5000);
      } finally {
        s.close();
      }
    }
    assert.equal(checks, 12);
  } finally {
    await server.stop();
  }
});

Deno.test("a stream that sends no Hello is ended, and one connection has at most a few streams", async () => {
  const { server, address } = await leader({ helloTimeoutMs: 1500 }, "127.0.74.1");
  server.publish(config(1), "e1");
  const first = rawStream(address);
  const client = first.client;
  const silent = [first, ...Array.from({ length: 3 }, () => rawStream(address, client))];
  const fifth = rawStream(address, client);
  // When the first silent stream ended, and when the fifth got its first message, as they
  // happen (event handlers, not the promises after them).
  let silentEndedAt = 0;
  let fifthServedAt = 0;
  for (const x of silent) {
    x.call.on("error", () => silentEndedAt ||= performance.now());
  }
  fifth.call.on("data", () => fifthServedAt ||= performance.now());
  try {
    fifth.hello(true);
    const why = await Promise.race([
      Promise.all(silent.map((s) => s.ended)),
      new Promise((r) => setTimeout(() => r("still open"), 5000)),
    ]);
    assert.deepEqual(why, silent.map(() => "no Hello in time"));
    await waitFor("the fifth stream's config", () => fifth.messages.length > 0 || undefined);
    // The four silent streams filled the connection: the fifth waited for one to end.
    assert.ok(
      fifthServedAt >= silentEndedAt,
      `a fifth stream on one connection was served ${silentEndedAt - fifthServedAt} ms before ` +
        "any of the four before it ended",
    );
  } finally {
    for (const s of [...silent, fifth]) s.close();
    await server.stop();
  }
});
