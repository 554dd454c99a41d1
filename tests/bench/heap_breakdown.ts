/**
 * Where the serving isolate's live heap goes at 1,000 HTTP services and 10,000 endpoints (the
 * data plane bench's large config), by owner: the JS heap used after a full GC, measured
 * after each thing meshd keeps is made, in one process, as meshd makes them. Not a test and
 * not a timing: a breakdown for issue 21's memory note.
 *
 *   deno run --allow-all --v8-flags=--expose-gc tests/bench/heap_breakdown.ts [--services N] [--host 127.x.y.z] [--rounds R]
 *
 * @module
 */
import { meshYaml } from "./dataplane_bench.ts";
import { decodeDecodedFile, encodeDecodedFile, ObjectLoader } from "../../src/provider/mod.ts";
import type { LoadResult } from "../../src/topology/mod.ts";
import { decodeFile } from "../../src/provider/decode_file.ts";
import { Logger } from "../../src/observability/mod.ts";
import { NodeProxy } from "../../src/proxy/mod.ts";
import { NodeAgent } from "../../src/node/mod.ts";
import { compileLoad } from "../../src/controller/mod.ts";
import { freePort } from "../testenv/process.ts";

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) {
  console.error("run with --v8-flags=--expose-gc");
  Deno.exit(2);
}

function arg(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i >= 0 && Deno.args[i + 1] ? Deno.args[i + 1]! : fallback;
}

const services = Number(arg("--services", "1000"));
const host = arg("--host", "127.0.64.1");
const rounds = Number(arg("--rounds", "3"));

function used(): number {
  for (let i = 0; i < 3; i++) gc!();
  return Deno.memoryUsage().heapUsed / 2 ** 20;
}

async function once(): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  const logger = new Logger({ level: "error", write: () => {} });
  let last = used();
  const start = last;
  const step = (name: string) => {
    const now = used();
    out[name] = now - last;
    last = now;
  };
  // The domain aliases `meshd run` has by default.
  const proxy = new NodeProxy({
    hostname: host,
    httpPort: 0,
    logger,
    domainAliases: ["traefik.mesh", "maesh"],
  });
  await proxy.start();
  const [t, u] = [freePort(), freePort()];
  const compile = { tcpPorts: { first: t, last: t }, udpPorts: { first: u, last: u } };
  const node = new NodeAgent({ proxy, logger, registry: proxy.registry });
  step("proxy and node, empty");
  // The reading thread's answer, as the serving thread receives it (structured clone).
  const text = meshYaml({ http: 8080, tcp: 8081, udp: 8082 }, services - 4);
  let wire: unknown[] | null = structuredClone([
    encodeDecodedFile(decodeFile({ path: "mesh.yaml", text })),
  ]);
  let loader: ObjectLoader | null = new ObjectLoader();
  let result: LoadResult | null = loader.merge(wire.map(decodeDecodedFile));
  wire = null;
  const { config } = compileLoad(result, { compile, previous: null, logger });
  // What the provider and the node keep once the load is compiled: the objects of the load
  // are garbage then (the loader keeps its own copy of what was good).
  result = null;
  step("loader's last good objects and the MeshConfig");
  await node.apply({ epoch: "local", config }, "provider");
  step("proxy: routes, endpoint states, metric children");
  node.metrics();
  step("after a /metrics scrape");
  out["all of the above"] = last - start;
  loader = null;
  step("(the loader's share of the first line, let go of)");
  await proxy.stop();
  return out;
}

const runs: Record<string, number>[] = [];
for (let r = 0; r < rounds; r++) runs.push(await once());
console.log(`live JS heap by owner, MiB, ${services} services (${rounds} rounds: min-max)`);
for (const k of Object.keys(runs[0]!)) {
  const v = runs.map((x) => x[k]!);
  console.log(
    `${k.padEnd(50)} ${Math.min(...v).toFixed(2).padStart(7)} - ${
      Math.max(...v).toFixed(2).padStart(7)
    }`,
  );
}
