/**
 * The watch's thread (see `startWatchdog`): reads the main thread's heartbeat and
 * logs when it stops, and when it starts again.
 *
 * @module
 */
import { Logger } from "./log.ts";
import type { WatchdogStart } from "./watchdog.ts";

// Typed by hand: this file is checked with the main program, whose lib is not the worker's.
const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<WatchdogStart>) => void) | null;
  postMessage(line: string): void;
};

/** Mebibytes, one decimal. */
function mib(bytes: number): number {
  return Math.round(bytes / 2 ** 20 * 10) / 10;
}

function watch(start: WatchdogStart): void {
  const log = new Logger({
    level: start.level,
    format: start.format,
    write: start.post ? (line) => scope.postMessage(line) : undefined,
  }, { room: "watchdog" });
  const counter = new Int32Array(start.beat);
  let seen = Atomics.load(counter, 0);
  let movedAt = performance.now();
  let stuck = false;
  log.debug("watching the main thread", { stallMs: start.stallMs });
  setInterval(() => {
    const now = Atomics.load(counter, 0);
    const t = performance.now();
    if (now !== seen) {
      if (stuck) {
        log.error("the main thread answers again", {
          stalledMs: Math.round(t - movedAt),
          rssMiB: mib(Deno.memoryUsage().rss),
        });
      }
      seen = now;
      movedAt = t;
      stuck = false;
      return;
    }
    if (!stuck && t - movedAt >= start.stallMs) {
      stuck = true;
      // rss is the whole process's; the heap figures would be this worker's own.
      log.error("the main thread has not answered; what it serves waits until it does", {
        stalledMs: Math.round(t - movedAt),
        rssMiB: mib(Deno.memoryUsage().rss),
      });
    }
  }, start.checkMs);
}

scope.onmessage = (e) => {
  scope.onmessage = null;
  watch(e.data);
};
