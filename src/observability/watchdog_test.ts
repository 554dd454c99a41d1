import assert from "node:assert/strict";
import { waitFor } from "../_testing.ts";
import { startWatchdog } from "./watchdog.ts";

const stalledMs = (line: string) => Number(line.match(/stalledMs=(\d+)/)?.[1] ?? NaN);

Deno.test("startWatchdog() reports a main thread stuck past stallMs, with the RSS, once, and again when it moves", async () => {
  const lines: string[] = [];
  const dog = startWatchdog({ stallMs: 500, level: "debug", onLine: (l) => lines.push(l) });
  try {
    await waitFor(
      "the watch to start",
      () => lines.some((l) => l.includes("watching")) || undefined,
    );
    // Stuck as a loop of microtasks or native code would leave it: no timer runs meanwhile.
    const until = performance.now() + 2000;
    while (performance.now() < until) { /* stuck */ }
    // A loaded machine may delay this thread briefly before the loop too: the stall to check
    // is the one the loop made, the one the thread comes back from after 1.5 s or more.
    const back = await waitFor("the recovery from the 2 s stall", () => {
      const i = lines.findLastIndex((l) => l.includes("answers again") && stalledMs(l) >= 1500);
      return i >= 0 ? i : undefined;
    });
    const before = lines.slice(0, back).filter((l) => !l.includes("watching"));
    const stuck = before.at(-1) ?? "";
    assert.match(stuck, /level=error msg="the main thread has not answered; .*" room=watchdog/);
    assert.match(stuck, /stalledMs=\d+ rssMiB=\d+(\.\d)?$/);
    assert.ok(stalledMs(stuck) >= 500 && stalledMs(stuck) < stalledMs(lines[back]!), stuck);
    assert.match(lines[back]!, /rssMiB=\d+(\.\d)?$/);
    assert.ok(!before.at(-2)?.includes("has not answered"), "one line per stall");
  } finally {
    dog.stop();
  }
});
