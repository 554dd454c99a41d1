import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import {
  ConfigError,
  decodeObject,
  type LoadResult,
  type MeshConfig,
  type MeshObject,
} from "../topology/mod.ts";
import { LocalController } from "./local_controller.ts";
import type { InputReport } from "./compile_load.ts";

/** A node agent that keeps what it is given. */
class FakeAgent {
  current: MeshConfig | null = null;
  applied: { config: MeshConfig; fields: Record<string, unknown> }[] = [];
  reports: InputReport[] = [];
  failures: string[] = [];
  config(): MeshConfig | null {
    return this.current;
  }
  apply(a: { config: MeshConfig }, _s: string, fields: Record<string, unknown>): Promise<void> {
    this.current = a.config;
    this.applied.push({ config: a.config, fields });
    return Promise.resolve();
  }
  reportInput(report: InputReport): void {
    this.reports.push(report);
  }
  reportFailure(message: string): void {
    this.failures.push(message);
  }
}

function service(name: string): MeshObject {
  const r = decodeObject({
    apiVersion: "v1",
    kind: "Service",
    metadata: { name, namespace: "shop" },
    spec: { clusterIP: "10.96.0.10", ports: [{ name: "http", port: 80 }] },
  });
  assert.equal(r.status, "ok");
  return (r as { object: MeshObject }).object;
}

function setup() {
  const lines: string[] = [];
  const logger = new Logger({ level: "debug", format: "json", write: (l) => lines.push(l) });
  const agent = new FakeAgent();
  return { agent, lines, controller: new LocalController({ agent, compile: {}, logger }) };
}

Deno.test("LocalController.load() compiles a load, reports its problems and applies it", async () => {
  const { agent, lines, controller } = setup();
  const bad = new ConfigError("Cannot read Service", { source: { file: "a.yaml", doc: 1 } });
  const load: LoadResult = { objects: [service("web")], errors: [bad], warnings: ["w1"] };
  await controller.load(load);
  assert.equal(agent.applied.length, 1);
  assert.deepEqual(agent.applied[0]!.config.services.map((s) => s.name), ["web"]);
  assert.equal(agent.applied[0]!.fields["errors"], 1);
  assert.deepEqual(agent.reports.map((r) => [r.errors, r.warnings]), [[[bad], ["w1"]]]);
  // The input's problems are logged, the file and document with the error.
  const invalid = lines.map((l) => JSON.parse(l)).find((l) => l.msg === "invalid config");
  assert.equal(invalid?.file, "a.yaml");
  assert.equal(invalid?.document, 2);
});

Deno.test("LocalController.load() applies nothing when the config did not change", async () => {
  const { agent, lines, controller } = setup();
  const load = (): LoadResult => ({ objects: [service("web")], errors: [], warnings: [] });
  await controller.load(load());
  await controller.load(load());
  assert.equal(agent.applied.length, 1);
  assert.equal(agent.reports.length, 2);
  assert.ok(lines.some((l) => JSON.parse(l).msg === "config unchanged"));
});

Deno.test("LocalController.load() keeps the config in force when compiling throws", async () => {
  const { agent, controller } = setup();
  await controller.load({ objects: [service("web")], errors: [], warnings: [] });
  const broken = { objects: [null as unknown as MeshObject], errors: [], warnings: [] };
  await controller.load(broken);
  assert.equal(agent.applied.length, 1);
  assert.equal(agent.failures.length, 1);
  assert.match(agent.failures[0]!, /^Cannot compile the config: /);
});
