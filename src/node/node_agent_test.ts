import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { NodeProxy } from "../proxy/mod.ts";
import { type AppliedConfig, ConfigStore } from "./config_store.ts";
import { NodeAgent, PROBLEM_MESSAGE_MAX, PROBLEMS_SHOWN } from "./node_agent.ts";
import { ConfigError } from "../topology/mod.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { waitFor } from "../_testing.ts";

/** A store whose writes wait until the test lets them go: a slow disk. */
class SlowStore extends ConfigStore {
  readonly saved: number[] = [];
  #release: (() => void)[] = [];
  constructor() {
    super("/nonexistent/config.json");
  }
  override save(a: AppliedConfig): Promise<void> {
    return new Promise((resolve) =>
      this.#release.push(() => {
        this.saved.push(a.config.version);
        resolve();
      })
    );
  }
  /** Lets the writes waiting now finish; how many there were. */
  release(): number {
    const r = this.#release.splice(0);
    for (const f of r) f();
    return r.length;
  }
}

/** `p`, or a failure naming `what` after `ms`. */
async function within<T>(what: string, p: Promise<T>, ms = 5_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("NodeAgent.apply() does not wait for the disk, and saves the newest config", async () => {
  const logger = new Logger({ level: "error", write: () => {} });
  const proxy = new NodeProxy({ hostname: "127.0.64.2", httpPort: 0, logger });
  const store = new SlowStore();
  const node = new NodeAgent({ proxy, logger, registry: proxy.registry, store });
  try {
    const config = (version: number) =>
      meshConfig([{ name: "web", ports: [{ port: 80 }] }], { version });
    // The leader's acknowledgement waits for apply: a slow disk must not hold it up.
    await within("apply of version 1", node.apply({ epoch: "e", config: config(1) }, "leader"));
    assert.equal(proxy.version, 1);
    // Lets the writes go until `n` are done.
    const saves = (n: number) =>
      within(
        `save ${n}`,
        (async () => {
          while (store.saved.length < n) {
            store.release();
            await new Promise((r) => setTimeout(r, 10));
          }
        })(),
      );
    await saves(1);
    // While nothing is being written, versions 2 to 4 come; only the newest is saved next.
    for (const v of [2, 3, 4]) {
      await within(
        `apply of version ${v}`,
        node.apply({ epoch: "e", config: config(v) }, "leader"),
      );
    }
    const flushed = node.flush();
    await saves(2);
    await within("flush", flushed);
    assert.deepEqual(store.saved, [1, 4]);
  } finally {
    await proxy.stop();
  }
});

Deno.test("NodeAgent.apply() collects garbage after a config that adds or removes many services", async () => {
  const logger = new Logger({ level: "error", write: () => {} });
  const proxy = new NodeProxy({ hostname: "127.0.64.2", httpPort: 0, logger });
  let collections = 0;
  const node = new NodeAgent({
    proxy,
    logger,
    registry: proxy.registry,
    collectGarbage: () => collections++,
    collectEveryMs: 0,
  });
  const services = (n: number, address: string) =>
    Array.from({ length: n }, (_, i) => ({
      name: `s-${i}`,
      ports: [{ port: 80, endpoints: [endpoint(address, 8080)] }],
    }));
  // Each apply's collection runs after it, in a later turn; a turn later there is none.
  const settled = () => new Promise((r) => setTimeout(r, 20));
  try {
    await node.apply({ epoch: "e", config: meshConfig(services(250, "10.0.0.1")) }, "leader");
    await waitFor("a collection after 250 new services", () => collections === 1 || undefined);
    // The same services in new objects, every endpoint changed: a snapshot after a reconnect.
    await node.apply(
      { epoch: "e", config: meshConfig(services(250, "10.0.0.2"), { version: 2 }) },
      "leader",
    );
    await settled();
    assert.equal(collections, 1, "no collection when no service came or went");
    await node.apply(
      { epoch: "e", config: meshConfig(services(10, "10.0.0.2"), { version: 3 }) },
      "leader",
    );
    await waitFor("a collection after 240 services went", () => collections === 2 || undefined);
  } finally {
    await proxy.stop();
  }
});

Deno.test("NodeAgent serves what /api/status lists on /metrics: problems by kind, their messages, the config's source", async () => {
  const logger = new Logger({ level: "error", write: () => {} });
  const host = "127.0.67.2"; // the ops2 session's range
  const proxy = new NodeProxy({ hostname: host, httpPort: 0, logger });
  const node = new NodeAgent({ proxy, logger, registry: proxy.registry });
  const taken = Deno.listen({ hostname: host, port: 0 }); // the TCP port the config wants
  await proxy.start();
  try {
    const before = await node.metrics();
    assert.match(before, /^meshd_status_problems\{kind="invalid_object"\} 0$/m);
    assert.doesNotMatch(before, /^meshd_config_source/m);
    node.reportInput({
      errors: [
        new ConfigError('Cannot read "spec.ports[0].port": value is "x", expected an integer', {
          source: { file: "/cfg/web.yaml", doc: 1 },
          field: "spec.ports[0].port",
        }),
      ],
      warnings: ['Skipped kind "Widget" in /cfg/w.yaml'],
    });
    await node.apply({
      epoch: "e",
      config: meshConfig([{
        name: "db",
        ports: [{ port: 5432, protocol: "tcp", listenPort: taken.addr.port }],
      }], { version: 7 }),
    }, "disk");
    const m = await node.metrics();
    assert.match(m, /^meshd_status_problems\{kind="invalid_object"\} 1$/m);
    assert.match(m, /^meshd_status_problems\{kind="listener_unbound"\} 1$/m);
    assert.match(m, /^meshd_status_problems\{kind="config_warning"\} 1$/m);
    assert.match(m, /^meshd_status_problems\{kind="save_failed"\} 0$/m);
    assert.match(
      m,
      /^meshd_status_problem_info\{kind="invalid_object",message="\/cfg\/web\.yaml, document 2, spec\.ports\[0\]\.port: Cannot read \\"spec\.ports\[0\]\.port\\": value is \\"x\\", expected an integer"\} 1$/m,
    );
    assert.match(
      m,
      new RegExp(
        `^meshd_status_problem_info\\{kind="listener_unbound",message="Cannot bind tcp listener ` +
          `on \\\\"${
            host.replaceAll(".", "\\.")
          }:${taken.addr.port}\\\\" for \\\\"default/db:5432\\\\": [^"]+"\\} 1$`,
        "m",
      ),
    );
    assert.match(
      m,
      /^meshd_status_problem_info\{kind="config_warning",message="Skipped kind \\"Widget\\" in \/cfg\/w\.yaml"\} 1$/m,
    );
    assert.match(m, /^meshd_config_source\{source="disk"\} 1$/m);
  } finally {
    taken.close();
    await proxy.stop();
  }
});

Deno.test("NodeAgent cuts a long problem message in meshd_status_problem_info", async () => {
  const logger = new Logger({ level: "error", write: () => {} });
  const proxy = new NodeProxy({ hostname: "127.0.67.2", httpPort: 0, logger });
  const node = new NodeAgent({ proxy, logger, registry: proxy.registry });
  node.reportInput({ errors: [], warnings: ["w".repeat(500), "a", "b", "c"] });
  const m = await node.metrics();
  const info = m.split("\n").filter((l) => l.startsWith("meshd_status_problem_info"));
  assert.equal(info.length, PROBLEMS_SHOWN);
  const first = /message="([^"]*)"/.exec(info[0]!)![1]!;
  assert.equal(first.length, PROBLEM_MESSAGE_MAX);
  assert.ok(first.endsWith("..."));
  assert.match(m, /^meshd_status_problems\{kind="config_warning"\} 4$/m);
});
