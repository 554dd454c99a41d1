/**
 * Helpers for tests that run real processes on loopback: free ports, waiting on conditions
 * with a deadline, and child processes stopped by PID. Every child is recorded, so a test
 * process that dies without stopping its children has them stopped by the next one.
 *
 * @module
 */

export { freePort, timeScale, waitFor } from "../../src/_testing.ts";
import { waitFor } from "../../src/_testing.ts";

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
 * recorded, and only while such a PID still runs the command line recorded for it.
 */
export function sweepOrphanedChildren(): number {
  let killed = 0;
  let files: Deno.DirEntry[] = [];
  try {
    files = [...Deno.readDirSync(CHILDREN)];
  } catch {
    return 0;
  }
  for (const f of files) {
    const owner = Number(f.name);
    if (owner === Deno.pid || (owner > 0 && cmdline(owner).includes("deno"))) continue;
    const path = `${CHILDREN}/${f.name}`;
    for (const line of Deno.readTextFileSync(path).split("\n").filter(Boolean)) {
      const { pid, argv } = JSON.parse(line) as { pid: number; argv: string[] };
      if (isAlive(pid) && runs(pid, argv)) {
        try {
          Deno.kill(pid, "SIGKILL");
          killed++;
        } catch { /* gone meanwhile */ }
      }
    }
    Deno.removeSync(path);
  }
  return killed;
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

/** A child process (deno itself, or `command`) whose output lines are collected. */
export class Child {
  readonly name: string;
  readonly lines: string[] = [];
  readonly #proc: Deno.ChildProcess;
  readonly #drained: Promise<void>;

  constructor(
    name: string,
    args: string[],
    options: { cwd?: string; env?: Record<string, string>; command?: string } = {},
  ) {
    this.name = name;
    const command = options.command ?? Deno.execPath();
    this.#proc = new Deno.Command(command, {
      args,
      cwd: options.cwd,
      env: { NO_COLOR: "1", ...options.env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    recordChild(this.#proc.pid, [command, ...args]);
    this.#drained = Promise.all([
      this.#collect(this.#proc.stdout),
      this.#collect(this.#proc.stderr),
    ])
      .then(() => {});
  }

  get pid(): number {
    return this.#proc.pid;
  }

  async #collect(stream: ReadableStream<Uint8Array>): Promise<void> {
    let rest = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      this.lines.push(...parts);
    }
    if (rest) this.lines.push(rest);
  }

  /** Whether the process has exited. */
  async exited(): Promise<Deno.CommandStatus> {
    const s = await this.#proc.status;
    await this.#drained;
    return s;
  }

  /** Sends SIGTERM to this process (by its PID) and waits for it to end. */
  async stop(): Promise<Deno.CommandStatus> {
    try {
      this.#proc.kill("SIGTERM");
    } catch { /* already gone */ }
    return await this.exited();
  }
}

/** Resolves once a TCP connect to `hostname:port` succeeds. */
export function waitForPort(hostname: string, port: number, timeoutMs = 15_000): Promise<true> {
  return waitFor(`${hostname}:${port} to accept connections`, async () => {
    const c = await Deno.connect({ hostname, port });
    c.close();
    return true as const;
  }, timeoutMs);
}
