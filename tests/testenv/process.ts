/**
 * Helpers for tests that run real processes on loopback: free ports, waiting on conditions
 * with a deadline, and child processes stopped by PID. Every child is recorded, so a test
 * process that dies without stopping its children has them stopped by the next one.
 *
 * @module
 */

export { freePort, timeScale, waitFor } from "../../src/_testing.ts";
import { timeScale, waitFor } from "../../src/_testing.ts";

/** Whether process `pid` exists. */
export function isAlive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** Process `pid`'s command line, its arguments separated by NUL; "" when it is gone. */
export function cmdline(pid: number): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/cmdline`);
  } catch {
    return "";
  }
}

/** Where each test process records its children: one file per test process, named by PID. */
const CHILDREN = "/tmp/meshd-test-children";
let swept = false;

/**
 * Stops the children that test processes which no longer run left behind: only PIDs they
 * recorded (in `dir`, default {@linkcode CHILDREN}), and only while such a PID still runs the
 * command line recorded for it.
 */
export function sweepOrphanedChildren(dir: string = CHILDREN): number {
  let killed = 0;
  let files: Deno.DirEntry[] = [];
  try {
    files = [...Deno.readDirSync(dir)];
  } catch {
    return 0;
  }
  for (const f of files) {
    const owner = Number(f.name);
    if (owner === Deno.pid || (owner > 0 && cmdline(owner).includes("deno"))) continue;
    const path = `${dir}/${f.name}`;
    for (const { pid, argv } of readRecords(path)) {
      if (isAlive(pid) && runs(pid, argv)) {
        try {
          Deno.kill(pid, "SIGKILL");
          killed++;
        } catch { /* gone meanwhile */ }
      }
    }
    try {
      Deno.removeSync(path);
    } catch { /* another test process swept it meanwhile */ }
  }
  return killed;
}

/**
 * The children recorded in `path`: none when another test process sweeping at the same time
 * removed it first (its children are that one's to stop), and no line that is not a record.
 */
function readRecords(path: string): { pid: number; argv: string[] }[] {
  let text = "";
  try {
    text = Deno.readTextFileSync(path);
  } catch {
    return [];
  }
  return text.split("\n").flatMap((line) => {
    try {
      const r = JSON.parse(line) as { pid?: unknown; argv?: unknown };
      return typeof r.pid === "number" && Array.isArray(r.argv) && r.argv.length > 0
        ? [r as { pid: number; argv: string[] }]
        : [];
    } catch {
      return [];
    }
  });
}

/** Whether `pid` runs `argv` (the program compared by base name, as it may have been resolved). */
function runs(pid: number, argv: string[]): boolean {
  const parts = cmdline(pid).split("\0");
  const base = (p: string) => p.slice(p.lastIndexOf("/") + 1);
  return parts.length > argv.length && base(parts[0]!) === base(argv[0]!) &&
    argv.slice(1).every((a, i) => parts[i + 1] === a);
}

function recordChild(pid: number, argv: string[]): void {
  if (!swept) {
    swept = true;
    sweepOrphanedChildren();
  }
  Deno.mkdirSync(CHILDREN, { recursive: true });
  Deno.writeTextFileSync(`${CHILDREN}/${Deno.pid}`, JSON.stringify({ pid, argv }) + "\n", {
    append: true,
  });
}

/** How a {@linkcode Child} is started. */
export interface ChildOptions {
  cwd?: string;
  /** Added to the environment, after `NO_COLOR=1`. */
  env?: Record<string, string>;
  /** The program; default Deno itself. */
  command?: string;
  /** Keep stdin open for {@linkcode Child.write} (default: stdin is /dev/null). */
  stdin?: boolean;
  /** `null`: stdout goes to /dev/null, unread and unkept (default: kept). */
  stdout?: "piped" | "null";
  /** Called with each output line as it arrives, after it is kept. */
  onLine?: (line: string, stream: "stdout" | "stderr") => void;
}

/**
 * A child process (deno itself, or `command`): the one process class of the harness. Its
 * output lines are kept, per stream and together; it is recorded so that a crashed test
 * process's children are stopped by the next one, and stopped only by its PID.
 */
export class Child {
  readonly name: string;
  /** Every output line, stdout and stderr, in the order they came. */
  readonly lines: string[] = [];
  readonly stdout: string[] = [];
  readonly stderr: string[] = [];
  readonly #proc: Deno.ChildProcess;
  readonly #drained: Promise<void>;
  readonly #onLine: ChildOptions["onLine"];
  #writer: WritableStreamDefaultWriter<Uint8Array> | null = null;

  constructor(name: string, args: string[], options: ChildOptions = {}) {
    this.name = name;
    this.#onLine = options.onLine;
    const command = options.command ?? Deno.execPath();
    this.#proc = new Deno.Command(command, {
      args,
      cwd: options.cwd,
      env: { NO_COLOR: "1", ...options.env },
      stdin: options.stdin ? "piped" : "null",
      stdout: options.stdout ?? "piped",
      stderr: "piped",
    }).spawn();
    recordChild(this.#proc.pid, [command, ...args]);
    if (options.stdin) this.#writer = this.#proc.stdin.getWriter();
    this.#drained = Promise.all([
      options.stdout === "null" ? undefined : this.#collect(this.#proc.stdout, "stdout"),
      this.#collect(this.#proc.stderr, "stderr"),
    ])
      .then(() => {});
  }

  get pid(): number {
    return this.#proc.pid;
  }

  /** Resolves when the process exits (its output may still be arriving). */
  get status(): Promise<Deno.CommandStatus> {
    return this.#proc.status;
  }

  async #collect(stream: ReadableStream<Uint8Array>, which: "stdout" | "stderr"): Promise<void> {
    let rest = "";
    const keep = (line: string) => {
      this.lines.push(line);
      this[which].push(line);
      this.#onLine?.(line, which);
    };
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      parts.forEach(keep);
    }
    if (rest) keep(rest);
  }

  /** Writes `text` to stdin (started with `stdin: true`). */
  async write(text: string): Promise<void> {
    if (!this.#writer) throw new Error(`${this.name}: stdin is not open`);
    await this.#writer.write(new TextEncoder().encode(text));
  }

  /** Closes stdin (programs that wait on it finish). */
  async closeStdin(): Promise<void> {
    await this.#writer?.close().catch(() => {});
    this.#writer = null;
  }

  /** Whether the process has exited; resolves once it has and its output is all in. */
  async exited(): Promise<Deno.CommandStatus> {
    const s = await this.#proc.status;
    await this.#drained;
    return s;
  }

  /** Sends `signal` to this process, by its PID; nothing when it is gone. */
  kill(signal: Deno.Signal = "SIGTERM"): void {
    try {
      this.#proc.kill(signal);
    } catch { /* already gone */ }
  }

  /** Waits for the exit, sending SIGKILL after `killAfterMs` (times {@linkcode timeScale}). */
  async wait(killAfterMs = 30_000): Promise<Deno.CommandStatus> {
    const timer = setTimeout(() => this.kill("SIGKILL"), killAfterMs * timeScale());
    try {
      return await this.exited();
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends SIGTERM to this process (by its PID) and waits for it to end. */
  async stop(): Promise<Deno.CommandStatus> {
    this.kill("SIGTERM");
    return await this.exited();
  }

  /** The last non-empty stdout line, parsed as JSON. */
  last<T>(): T {
    return JSON.parse(this.stdout.filter(Boolean).at(-1) ?? "null") as T;
  }
}

/**
 * Runs `command` to its end as a {@linkcode Child}, killing it after `timeoutMs` (times
 * {@linkcode timeScale}); its exit code and its output, line by line.
 */
export async function runToEnd(
  command: string,
  args: string[],
  options: { cwd?: string; timeoutMs: number },
): Promise<{ code: number; stdout: string; stderr: string }> {
  const c = new Child(command.slice(command.lastIndexOf("/") + 1), args, {
    command,
    cwd: options.cwd,
  });
  const st = await c.wait(options.timeoutMs);
  return { code: st.code, stdout: c.stdout.join("\n"), stderr: c.stderr.join("\n") };
}

/** Resolves once a TCP connect to `hostname:port` succeeds. */
export function waitForPort(hostname: string, port: number, timeoutMs = 15_000): Promise<true> {
  return waitFor(`${hostname}:${port} to accept connections`, async () => {
    const c = await Deno.connect({ hostname, port });
    c.close();
    return true as const;
  }, timeoutMs);
}
