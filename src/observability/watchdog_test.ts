import assert from "node:assert/strict";
import { waitFor } from "../_testing.ts";
import { startWatchdog } from "./watchdog.ts";

Deno.test("startWatchdog() reports a main thread stuck past stallMs, with the RSS, and again when it moves", async () => {
  const lines: string[] = [];
  const dog = startWatchdog({ stallMs: 300, level: "debug", onLine: (l) => lines.push(l) });
  try {
    await waitFor(
      "the watch to start",
      () => lines.some((l) => l.includes("watching")) || undefined,
    );
    // Stuck as a loop of microtasks or native code would leave it: no timer runs meanwhile.
    const until = performance.now() + 1200;
    while (performance.now() < until) { /* stuck */ }
    const both = await waitFor("the stall and the recovery", () => {
      const stuck = lines.find((l) => l.includes("has not answered"));
      const back = lines.find((l) => l.includes("answers again"));
      return stuck && back ? { stuck, back } : undefined;
    });
    assert.match(both.stuck, /level=error .*room=watchdog stalledMs=\d+ rssMiB=\d+(\.\d)?$/);
    const stalled = (l: string) => Number(l.match(/stalledMs=(\d+)/)![1]);
    assert.ok(stalled(both.stuck) >= 300, both.stuck);
    assert.ok(stalled(both.back) >= 1000, both.back);
    assert.equal(lines.filter((l) => l.includes("has not answered")).length, 1, "once per stall");
  } finally {
    dog.stop();
  }
});
