import type { LogFormat, LogLevel } from "./log.ts";

/** Options for {@linkcode startWatchdog}. */
export interface WatchdogOptions {
  /** How long the main thread may stay silent before it is reported; 0 turns the watch off. */
  stallMs: number;
  /** The log's format; its level is always at least `error`, which the report uses. */
  format?: LogFormat;
  /** The log's level (only `error` lines are written by the watch). */
  level?: LogLevel;
  /** How often the main thread says it is alive; default a quarter of `stallMs`, at most 1 s. */
  beatMs?: number;
  /**
   * Where the watch's lines go, on this thread: a test seam. Default: the worker writes them to
   * standard error itself (this thread may be the stuck one).
   */
  onLine?: (line: string) => void;
}

/** A running watch; {@linkcode Watchdog.stop} ends it. */
export interface Watchdog {
  stop(): void;
}

/** What the main thread sends the watch once, at start. */
export interface WatchdogStart {
  beat: SharedArrayBuffer;
  stallMs: number;
  checkMs: number;
  format: LogFormat;
  level: LogLevel;
  /** Whether lines come back as messages (see `onLine`) instead of going to standard error. */
  post: boolean;
}

/**
 * Watches the main thread from a worker: the main thread bumps a counter in shared memory
 * every `beatMs` from a timer, and the worker, on its own thread and event loop, logs one
 * error line (with the process's RSS) when the counter has not moved for `stallMs`, and one
 * more when it moves again. A main thread stuck in a loop (JavaScript or native) answers no
 * probe and writes no log; without the watch, the first sign of it would be the kubelet's kill.
 *
 * @example
 * ```ts
 * const dog = startWatchdog({ stallMs: 3000 });
 * dog.stop();
 * ```
 */
export function startWatchdog(options: WatchdogOptions): Watchdog {
  if (options.stallMs <= 0) return { stop: () => {} };
  const beat = new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT);
  const counter = new Int32Array(beat);
  const beatMs = options.beatMs ?? Math.min(1000, Math.max(10, Math.floor(options.stallMs / 4)));
  // One timer off the hot path; unref'd, so it keeps no finished process alive.
  const timer = setInterval(() => Atomics.add(counter, 0, 1), beatMs);
  Deno.unrefTimer(timer);
  const worker = new Worker(new URL("./watchdog_worker.ts", import.meta.url), {
    type: "module",
    name: "watchdog",
  });
  const onLine = options.onLine;
  if (onLine) worker.onmessage = (e: MessageEvent<string>) => onLine(e.data);
  worker.postMessage(
    {
      beat,
      stallMs: options.stallMs,
      checkMs: beatMs,
      format: options.format ?? "text",
      level: options.level ?? "info",
      post: !!onLine,
    } satisfies WatchdogStart,
  );
  return {
    stop: () => {
      clearInterval(timer);
      worker.terminate();
    },
  };
}
