/**
 * What a one-endpoint change costs a node at 10,000 services: the time from a delta's bytes
 * to the node acknowledging it, as `DistributionClient` does it (parse, `applyDelta`,
 * `NodeAgent.apply`: the proxy's routes, then the saved config), in one process with a real
 * `NodeProxy` on loopback and a `ConfigStore` in a temporary folder. Not a test: it prints
 * the times (p50, p90, max over the changes) and the share of each step.
 *
 *   deno run --allow-all tests/bench/node_apply_bench.ts [--services 10000] [--endpoints 2] [--changes 40] [--gap-ms 250] [--host 127.x.y.z] [--acl]
 *
 * @module
 */
import { applyDelta, diffConfigs, type MeshDelta } from "../../src/distribution/mod.ts";
import { Logger } from "../../src/observability/mod.ts";
import { NodeProxy } from "../../src/proxy/mod.ts";
import { ConfigStore, NodeAgent } from "../../src/node/mod.ts";
import type { MeshConfig, MeshService } from "../../src/topology/mod.ts";
import { compareServices } from "../../src/distribution/config_delta.ts";
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";

function arg(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i >= 0 && Deno.args[i + 1] ? Deno.args[i + 1]! : fallback;
}

const services = Number(arg("--services", "10000"));
const endpoints = Number(arg("--endpoints", "2"));
const changes = Number(arg("--changes", "40"));
const host = arg("--host", "127.0.64.1");
const acl = Deno.args.includes("--acl");
/** The wait between changes, so the node's background work (the saved config) runs between. */
const gapMs = Number(arg("--gap-ms", "250"));
if (!host.startsWith("127.")) {
  console.error("--host must be a loopback address");
  Deno.exit(2);
}

/** Service `i` with its first endpoint moved `generation` times. */
function service(i: number, generation: number): MeshService {
  const eps = Array.from({ length: endpoints }, (_, j) =>
    endpoint(
      `198.51.${(i >> 8) & 255}.${((i + (j === 0 ? generation : 0)) & 255) + 1}`,
      8080 + j,
      { nodeName: `node-${j}`, serviceAccount: acl ? `bench/sa-${i}` : null },
    ));
  const c = meshConfig([{
    name: `s-${i}`,
    namespace: "bench",
    ports: [{
      port: 80,
      name: "web",
      endpoints: eps,
      access: acl
        ? [{
          trafficTarget: `bench/tt-${i}`,
          destination: `bench/sa-${i}`,
          sources: [`bench/client`],
          http: [],
          l4: false,
        }]
        : null,
    }],
  }]);
  return c.services[0]!;
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

const applied: number[] = [];
const logger = new Logger({
  level: "info",
  format: "json",
  write: (line) => {
    const j = JSON.parse(line);
    if (j.msg === "config applied") applied.push(Number(j.ms));
  },
});
/** A ConfigStore that times its saves. */
class TimedStore extends ConfigStore {
  readonly times: number[] = [];
  override async save(a: Parameters<ConfigStore["save"]>[0]): Promise<void> {
    const t = performance.now();
    await super.save(a);
    this.times.push(performance.now() - t);
  }
}
const dir = await Deno.makeTempDir({ prefix: "meshd-apply-bench-" });
const proxy = new NodeProxy({ hostname: host, httpPort: 0, logger });
try {
  await proxy.start();
  const store = new TimedStore(`${dir}/config.json`);
  const node = new NodeAgent({
    proxy,
    logger,
    registry: proxy.registry,
    store,
  });
  const identities: Record<string, string> = {};
  if (acl) identities["127.0.64.9"] = "bench/client";
  let leader: MeshConfig = {
    version: 1,
    domain: "mesh",
    acl,
    identities,
    services: Array.from({ length: services }, (_, i) => service(i, 0)).sort(compareServices),
  };
  // The snapshot, as the node receives it.
  const t0 = performance.now();
  await node.apply({ epoch: "e", config: JSON.parse(JSON.stringify(leader)) }, "leader");
  const snapshotMs = performance.now() - t0;

  const total: number[] = [];
  const decode: number[] = [];
  for (let k = 1; k <= changes; k++) {
    const i = (k * 7919) % services;
    const moved = service(i, k);
    const next: MeshConfig = {
      ...leader,
      version: leader.version + 1,
      services: leader.services.map((s) => s.name === moved.name ? moved : s),
    };
    const body = new TextEncoder().encode(JSON.stringify(diffConfigs(leader, next)));
    leader = next;
    // The node's side, as DistributionClient does it.
    const s0 = performance.now();
    const delta = JSON.parse(new TextDecoder().decode(body)) as MeshDelta;
    const config = applyDelta(node.current()!.config, delta);
    const s1 = performance.now();
    await node.apply({ epoch: "e", config }, "leader");
    total.push(performance.now() - s0);
    decode.push(s1 - s0);
    await new Promise((r) => setTimeout(r, gapMs));
  }
  await (node as { flush?: () => Promise<void> }).flush?.();
  // A reconnect: the whole config again as a snapshot, in new objects, one version on.
  leader = { ...leader, version: leader.version + 1 };
  const again = JSON.parse(JSON.stringify(leader));
  const r0 = performance.now();
  await node.apply({ epoch: "e2", config: again }, "leader");
  const resnapshotMs = performance.now() - r0;
  if (proxy.version !== leader.version) {
    throw new Error(`the node is at ${proxy.version}, the leader at ${leader.version}`);
  }
  const fmt = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return `p50 ${quantile(s, 0.5).toFixed(1)}  p90 ${quantile(s, 0.9).toFixed(1)}  max ${
      s.at(-1)!.toFixed(1)
    }`;
  };
  const proxyMs = applied.slice(1, 1 + changes);
  const saveMs = total.map((t, n) => t - decode[n]! - proxyMs[n]!);
  console.log(
    `node apply, ${services} services x ${endpoints} endpoints${acl ? ", ACL on" : ""}, ` +
      `${changes} one-endpoint changes (ms)`,
  );
  console.log(`${gapMs} ms between changes`);
  console.log(`snapshot applied in ${snapshotMs.toFixed(0)} ms`);
  console.log(`the same config again as a snapshot (a reconnect) in ${resnapshotMs.toFixed(0)} ms`);
  console.log(`delta to ack (total)      ${fmt(total)}`);
  console.log(`  parse + applyDelta      ${fmt(decode)}`);
  console.log(`  proxy + data path       ${fmt(proxyMs)}`);
  console.log(`  save and the rest       ${fmt(saveMs)}`);
  console.log(`saves (${store.times.length})               ${fmt(store.times)}`);
} finally {
  await proxy.stop();
  await Deno.remove(dir, { recursive: true });
}
