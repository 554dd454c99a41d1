import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { LogThrottle, throttledErrors } from "./log_throttle.ts";

Deno.test("throttledErrors logs once per interval, with the errors since the last line", () => {
  let now = 0;
  const lines: string[] = [];
  const log = new Logger({ level: "info", write: (l) => lines.push(l) });
  const onError = throttledErrors(log, "handler failed", new LogThrottle(10_000, () => now));
  for (let i = 0; i < 1000; i++) onError(new Error("boom")); // every turn of a loop
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, /level=error msg="handler failed" error="Error: boom" failures=1/);
  now = 10_000;
  onError(new Error("boom"));
  assert.equal(lines.length, 2);
  assert.match(lines[1]!, /failures=1000\b/);
});
