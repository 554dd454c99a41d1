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

Deno.test("LogThrottle lets one line per key through per interval, and tells how many it left out", () => {
  let now = 0;
  const t = new LogThrottle(10_000, () => now);
  assert.deepEqual(t.take("a"), {});
  for (let i = 0; i < 99; i++) assert.equal(t.take("a"), null);
  assert.deepEqual(t.take("b"), {}, "another key has its own interval");
  now = 10_000;
  assert.deepEqual(t.take("a"), { suppressed: 99 });
  assert.deepEqual(t.take("b"), {});
  assert.equal(t.take("a"), null);
});

Deno.test("LogThrottle forgets its oldest key past 1,000, and tells that key's count with the next line", () => {
  const t = new LogThrottle(10_000, () => 0);
  t.take("first");
  for (let i = 0; i < 5; i++) t.take("first");
  for (let i = 1; i < 1000; i++) t.take(`k${i}`);
  assert.deepEqual(t.take("new"), { suppressedOther: 5 }, "first's 5 are counted, not lost");
  assert.deepEqual(t.take("first"), {}, "first was forgotten, so it logs again");
});
