/**
 * Where the leader's part of propagation goes, stage by stage, in one process and without an
 * API server: a KubeProvider reads S Services and their EndpointSlices from an in-memory API,
 * a MeshController compiles every load and publishes it to a DistributionServer (no nodes
 * subscribed), and C watch events each change one endpoint of one Service. For each event it
 * times:
 *
 * - event -> load: the watch event to the provider's load (its debounce, then the pass over
 *   every stored object);
 * - load -> published: the compile (topology cache included) and the publish;
 * - encode: the delta of that change over the version before, diffed and encoded once (what
 *   the first node to ask for it costs the leader; every other node reuses the bytes).
 *
 * The rest of propagation (the API server's watch delivery, and publish to the last node's
 * apply) is measured by distribution_bench.ts and leader_memory_bench.ts. Not a test: it
 * asserts nothing about times.
 *
 *   deno run --allow-all tests/bench/leader_stages_bench.ts [--services 10000] [--changes 40]
 *     [--rounds 2] [--gap 100 (ms between changes; under the 50 ms debounce they are a burst)]
 *
 * @module
 */
import {
  ConfigHistory,
  createLeaderIdentity,
  DistributionServer,
} from "../../src/distribution/mod.ts";
import { MeshController } from "../../src/controller/mod.ts";
import { type KubeApi, KubeApiError, type RawObject, type WatchEvent } from "../../src/kube/api.ts";
import { KubeProvider } from "../../src/kube/kube_provider.ts";
import { Logger } from "../../src/observability/mod.ts";

const NS = "bench";

function service(i: number): RawObject {
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: `s-${i}`, namespace: NS, resourceVersion: "1" },
    spec: { ports: [{ name: "web", port: 80, targetPort: 8080 }] },
  };
}

function endpointSlice(i: number, generation: number): RawObject {
  return {
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: {
      name: `s-${i}-1`,
      namespace: NS,
      labels: { "kubernetes.io/service-name": `s-${i}` },
      resourceVersion: String(1 + generation),
    },
    addressType: "IPv4",
    ports: [{ name: "web", port: 8080, protocol: "TCP" }],
    endpoints: [
      {
        addresses: [`203.0.113.${(i + generation) % 250 + 1}`],
        conditions: { ready: true },
        nodeName: "node-1",
      },
      { addresses: [`192.0.2.${i % 250 + 1}`], conditions: { ready: true }, nodeName: "node-2" },
    ],
  };
}

/** An API that lists `services` Services and slices, serves no SMI, and lets us send events. */
function fakeApi(services: number) {
  const watchers = new Map<string, (e: WatchEvent) => void>();
  const api = {
    request: (_method: string, path: string) => {
      const p = path.split("?")[0]!;
      let items: RawObject[] = [];
      if (p === "/api/v1/services") items = Array.from({ length: services }, (_, i) => service(i));
      else if (p === "/apis/discovery.k8s.io/v1/endpointslices") {
        items = Array.from({ length: services }, (_, i) => endpointSlice(i, 0));
      } else if (p !== "/api/v1/pods") {
        return Promise.reject(new KubeApiError(`${p} is not served`, 404, "NotFound"));
      }
      return Promise.resolve({ metadata: { resourceVersion: "1" }, items });
    },
    watch: async (
      path: string,
      _rv: string,
      onEvent: (e: WatchEvent) => void,
      { signal }: { signal: AbortSignal },
    ) => {
      watchers.set(path.split("?")[0]!, onEvent);
      await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
    },
  } as unknown as KubeApi;
  const send = (path: string, e: WatchEvent) => watchers.get(path)?.(e);
  return { api, send };
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

interface Row {
  round: number;
  stage: string;
  p50: number;
  p99: number;
}

async function run(
  services: number,
  changes: number,
  gapMs: number,
  round: number,
): Promise<Row[]> {
  const logger = new Logger({ level: "error", write: () => {} });
  const { api, send } = fakeApi(services);
  const server = new DistributionServer({
    logger,
    identity: await createLeaderIdentity("bench"),
    history: new ConfigHistory(),
  });
  let loadedAt = 0;
  let onPublished: ((at: number) => void) | null = null;
  const published = new Logger({
    level: "info",
    write: (l) => {
      if (l.includes("config published")) onPublished?.(performance.now());
    },
  });
  let provider: KubeProvider | null = null;
  let ready: () => void = () => {};
  const started = new Promise<void>((r) => ready = r);
  const controller = new MeshController({
    logger: published,
    inputLogger: logger,
    identity: "bench",
    server,
    compile: {},
    seed: () => null,
    watch: (onLoad) => {
      provider = new KubeProvider({
        api,
        logger,
        watchNamespaces: [],
        ignoreNamespaces: ["meshd"],
        onLoad: (r) => {
          loadedAt = performance.now();
          return onLoad(r);
        },
      });
      provider.start().then(ready);
      return { stop: () => provider!.stop() };
    },
  });
  await controller.lead();
  await started;
  const toLoad: number[] = [];
  const toPublish: number[] = [];
  const encode: number[] = [];
  try {
    for (let g = 1; g <= changes; g++) {
      // The pause a real change sees between writes: the benchmark with nodes waits for every
      // node's apply (over 100 ms) before its next write, so each is a lone change.
      await new Promise((r) => setTimeout(r, gapMs));
      const i = (g * 7919) % services;
      const before = server.history.current!;
      const done = new Promise<number>((r) => onPublished = r);
      const t0 = performance.now();
      send("/apis/discovery.k8s.io/v1/endpointslices", {
        type: "MODIFIED",
        object: endpointSlice(i, g),
      });
      const at = await done;
      toLoad.push(loadedAt - t0);
      toPublish.push(at - loadedAt);
      // What the first node on the version before pays: the delta, diffed and encoded.
      const e0 = performance.now();
      const u = server.history.updateFor({ epoch: before.epoch, version: before.config.version });
      new TextEncoder().encode(JSON.stringify(u.kind === "delta" ? u.delta : u));
      encode.push(performance.now() - e0);
    }
  } finally {
    await controller.stepDown("bench over");
  }
  const row = (stage: string, xs: number[]): Row => {
    const s = [...xs].sort((a, b) => a - b);
    return { round, stage, p50: quantile(s, 0.5), p99: quantile(s, 0.99) };
  };
  const total = toLoad.map((x, k) => x + toPublish[k]! + encode[k]!);
  return [
    row("event -> load", toLoad),
    row("load -> published", toPublish),
    row("delta diff+encode", encode),
    row("sum", total),
  ];
}

async function main(): Promise<void> {
  let services = 10_000;
  let changes = 40;
  let rounds = 2;
  let gapMs = 100;
  for (let i = 0; i < Deno.args.length; i += 2) {
    const [k, v] = [Deno.args[i], Number(Deno.args[i + 1])];
    if (k === "--services" && v >= 1) services = v;
    else if (k === "--changes" && v >= 1) changes = v;
    else if (k === "--rounds" && v >= 1) rounds = v;
    else if (k === "--gap" && v >= 0) gapMs = v;
    else {
      console.error(
        "usage: leader_stages_bench.ts [--services N] [--changes N] [--rounds N] [--gap MS]",
      );
      Deno.exit(2);
    }
  }
  const rows: Row[] = [];
  for (let r = 1; r <= rounds; r++) rows.push(...await run(services, changes, gapMs, r));
  console.log(
    `\nLeader stages per one-endpoint change, ${services} services, ${changes} changes ` +
      `${gapMs} ms apart`,
  );
  console.log(["round", "stage".padEnd(20), "p50 ms".padStart(8), "p99 ms".padStart(8)].join(" "));
  for (const r of rows) {
    console.log(
      [
        String(r.round).padStart(5),
        r.stage.padEnd(20),
        r.p50.toFixed(1).padStart(8),
        r.p99.toFixed(1).padStart(8),
      ].join(" "),
    );
  }
}

if (import.meta.main) await main();
