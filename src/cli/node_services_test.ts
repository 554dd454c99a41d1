import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { chooseL4Worker, proxyWorkers } from "./node_services.ts";

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

Deno.test("chooseL4Worker() probes for auto alone, and a failed probe is one warning with its reason", () => {
  const lines: Record<string, unknown>[] = [];
  const logger = new Logger({
    level: "info",
    format: "json",
    write: (l) => lines.push(JSON.parse(l)),
  });
  let probes = 0;
  const fails = () => {
    probes++;
    return { ok: false as const, reason: "FFI is not permitted" };
  };
  const passes = () => {
    probes++;
    return { ok: true as const };
  };
  // true and false are what they say, unprobed: true fails later, at start, as before.
  assert.equal(chooseL4Worker(true, { logger, probe: fails }), true);
  assert.equal(chooseL4Worker(false, { logger, probe: passes }), false);
  assert.equal(probes, 0);
  assert.equal(chooseL4Worker("auto", { logger, probe: passes }), true);
  assert.deepEqual(lines, []);
  assert.equal(chooseL4Worker("auto", { logger, probe: fails }), false);
  assert.equal(probes, 2);
  assert.equal(lines.length, 1);
  assert.equal(lines[0]!["level"], "warn");
  assert.equal(lines[0]!["msg"], "L4 worker off: TCP and UDP stay on Deno's I/O");
  assert.equal(lines[0]!["reason"], "FFI is not permitted");
});
