import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { proxyWorkers } from "./node_services.ts";

Deno.test("proxyWorkers() takes the CPUs for auto, up to 64, and warns of more workers than CPUs", () => {
  const lines: Record<string, unknown>[] = [];
  const logger = new Logger({
    level: "info",
    format: "json",
    write: (l) => lines.push(JSON.parse(l)),
  });
  assert.equal(proxyWorkers("auto", 2, logger), 2);
  assert.equal(proxyWorkers("auto", 200, logger), 64);
  assert.equal(proxyWorkers(2, 2, logger), 2);
  assert.deepEqual(lines, []);
  assert.equal(proxyWorkers(8, 2, logger), 8);
  assert.equal(lines.length, 1);
  assert.equal(lines[0]!["level"], "warn");
  assert.match(String(lines[0]!["msg"]), /more proxy workers than CPUs/);
  assert.equal(lines[0]!["workers"], 8);
  assert.equal(lines[0]!["cpus"], 2);
});
