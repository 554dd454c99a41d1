/**
 * A place to run the eBPF path safely: a network namespace with only loopback (so no address
 * in it leads off the machine), a scratch cgroup v2 directory that meshd attaches to (never the
 * root cgroup), and a bpffs of its own for the pins. {@linkcode EbpfEnv.remove} kills what it
 * started by PID, unpins, unmounts and removes it all; `removeLeftovers()` does the same for a
 * crashed run.
 *
 * @module
 */
import { findCgroup2 } from "../../src/datapath/mod.ts";
import { PREFIX, removeLeftovers } from "./cluster.ts";
import { sh } from "./netns_mesh.ts";
import { Child } from "./process.ts";

let counter = 0;

/** The cgroup v2 mount point, or an error saying the tier cannot run. */
export function cgroup2Mount(): string {
  const m = findCgroup2();
  if (!m) throw new Error("no cgroup v2 hierarchy mounted: the eBPF tier needs one");
  return m;
}

/**
 * The permission `tests/ebpf/sock_tool.ts`'s UDP modes need to stretch their answer wait by
 * `$MESHD_TEST_TIME_SCALE`; {@linkcode EbpfEnv.deno} adds it to every script it runs.
 */
export const TIME_SCALE_PERM = "--allow-env=MESHD_TEST_TIME_SCALE";

/**
 * TIME_WAIT slots of each test namespace (`net.ipv4.tcp_max_tw_buckets`, one per namespace).
 * The tests' servers close first, so every connection leaves one for 60 s. Linux sizes the
 * default by memory: 4096 in the real-kernel tier's 1 GiB VMs, where a load loop leaves three
 * times as many. Past it a closing socket is dropped instead (`TCPTimeWaitOverflow`), and the
 * client's next segment for it, such as the duplicate ACK after a retransmit on a starved
 * guest, draws a RST; a client that has not polled its socket yet then sees EPIPE ("Broken
 * pipe") on a connection that had reached its backend and got its answer (issue 22, on 5.10).
 * That is the namespace's table running out, not meshd, so the tests give it room.
 */
export const TIME_WAIT_SLOTS = 262_144;

/** One program's runs and the time they took, from the kernel's BPF statistics. */
export interface HookRuns {
  runs: number;
  ns: number;
}

/**
 * Turns on the kernel's run-time statistics of BPF programs (`BPF_ENABLE_STATS`, through
 * libbpf's `bpf_enable_stats`) for as long as the returned handle is open: each program run
 * then adds to its `run_cnt` and `run_time_ns`, which {@linkcode EbpfEnv.hookRuns} reads. The
 * kernel counts the holders and switches the statistics off when the last one closes, or when
 * this process exits, so a crashed run leaves them as they were; unlike the
 * `kernel.bpf_stats_enabled` sysctl, nothing stays set. The statistics are machine-wide while
 * on: every program run also pays two clock reads. Throws when the kernel refuses.
 */
export function enableBpfRunStats(libbpfPath: string): { close(): void } {
  const libbpf = Deno.dlopen(
    libbpfPath,
    {
      bpf_enable_stats: { parameters: ["i32"], result: "i32" },
    } as const,
  );
  const libc = Deno.dlopen("libc.so.6", { close: { parameters: ["i32"], result: "i32" } } as const);
  // enum bpf_stats_type: BPF_STATS_RUN_TIME is 0. libbpf returns the new fd or -errno.
  const fd = libbpf.symbols.bpf_enable_stats(0);
  libbpf.close();
  if (fd < 0) {
    libc.close();
    throw new Error(`Cannot enable the BPF run-time statistics: bpf_enable_stats gave ${fd}`);
  }
  return {
    close: () => {
      libc.symbols.close(fd);
      libc.close();
    },
  };
}

/** One scratch namespace, cgroup and bpffs. */
export class EbpfEnv {
  readonly name: string;
  readonly dir: string;
  readonly netns: string;
  readonly cgroup: string;
  readonly bpffs: string;
  readonly #procs: Child[] = [];

  private constructor(name: string) {
    this.name = name;
    this.dir = `/tmp/${name}`;
    this.netns = name;
    this.cgroup = `${cgroup2Mount()}/meshd-test/${name}`;
    this.bpffs = `${this.dir}/bpffs`;
  }

  /** Creates the namespace (loopback up, `v6` addresses on it), cgroup and bpffs. */
  static async create(v6: string[] = []): Promise<EbpfEnv> {
    if (Deno.uid() !== 0) throw new Error("the eBPF tier runs as root");
    await removeLeftovers();
    const env = new EbpfEnv(`${PREFIX}${Deno.pid}-ebpf${++counter}`);
    await Deno.mkdir(env.bpffs, { recursive: true });
    await Deno.writeTextFile(`${env.dir}/pids`, "");
    await Deno.mkdir(env.cgroup, { recursive: true });
    await sh("mount", ["-t", "bpf", "bpf", env.bpffs]);
    await sh("ip", ["netns", "add", env.netns]);
    await sh("ip", ["-n", env.netns, "link", "set", "lo", "up"]);
    await sh("nsenter", [
      `--net=/run/netns/${env.netns}`,
      "sysctl",
      "-qw",
      `net.ipv4.tcp_max_tw_buckets=${TIME_WAIT_SLOTS}`,
    ]);
    for (const a of v6) await sh("ip", ["-n", env.netns, "addr", "add", `${a}/128`, "dev", "lo"]);
    return env;
  }

  /**
   * Starts `cmd args` in the namespace; `inCgroup` puts it in the scratch cgroup first, where
   * the hooks see its sockets.
   */
  spawn(cmd: string, args: string[], o: { inCgroup?: boolean } = {}): Child {
    // nsenter switches the network namespace only: `ip netns exec` would also mount a new
    // /sys, where the cgroup v2 mount below /sys/fs/cgroup is not to be found.
    const inner = ["nsenter", `--net=/run/netns/${this.netns}`, cmd, ...args];
    const argv = o.inCgroup
      ? ["sh", "-c", `echo $$ > '${this.cgroup}/cgroup.procs' && exec "$@"`, "sh", ...inner]
      : inner;
    const p = new Child(cmd.slice(cmd.lastIndexOf("/") + 1), argv.slice(1), {
      command: argv[0]!,
      stdin: true,
    });
    // Recorded at once, so a crashed run's processes can be found by removeLeftovers().
    Deno.writeTextFileSync(`${this.dir}/pids`, `${p.pid}\n`, { append: true });
    this.#procs.push(p);
    return p;
  }

  /** Sets sysctl `name` (a `net.` one: it is the namespace's own) to `value` in the namespace. */
  async sysctl(name: string, value: string): Promise<void> {
    await sh("nsenter", [`--net=/run/netns/${this.netns}`, "sysctl", "-qw", `${name}=${value}`]);
  }

  /**
   * Runs a Deno script (with `perms`, and {@linkcode TIME_SCALE_PERM}) to its end and returns
   * its last JSON line.
   */
  async deno<T>(
    script: string,
    args: string[],
    o: { inCgroup?: boolean; perms?: string[] } = {},
  ): Promise<T> {
    const p = this.spawn(
      Deno.execPath(),
      ["run", ...(o.perms ?? ["--allow-net"]), TIME_SCALE_PERM, script, ...args],
      o,
    );
    await p.closeStdin();
    const st = await p.wait();
    if (!st.success) throw new Error(`${script} ${args.join(" ")}: ${p.stderr.join("\n")}`);
    return p.last<T>();
  }

  /**
   * The namespace's TCP counters, from `/proc/net/netstat` and `/proc/net/snmp` as read in it,
   * keyed like `nstat`'s names with a colon: `TcpExt:TCPTimeWaitOverflow`, `Tcp:OutRsts`.
   */
  async tcpCounters(): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for (const file of ["/proc/net/netstat", "/proc/net/snmp"]) {
      const text = await sh("nsenter", [`--net=/run/netns/${this.netns}`, "cat", file]);
      // Pairs of lines: "TcpExt: name name ..." then "TcpExt: value value ...".
      const lines = text.trim().split("\n").map((l) => l.trim().split(/\s+/));
      for (let i = 0; i + 1 < lines.length; i += 2) {
        const [names, values] = [lines[i]!, lines[i + 1]!];
        for (let j = 1; j < names.length; j++) {
          out.set(`${names[0]}${names[j]}`, Number(values[j]));
        }
      }
    }
    return out;
  }

  /** Programs attached to the scratch cgroup, as bpftool lists them. */
  async attached(): Promise<string[]> {
    return (await this.#attachedProgs()).map((p) => p.name ?? "?");
  }

  /** The ids and names of the programs attached to the scratch cgroup. */
  async #attachedProgs(): Promise<{ id: number; name?: string }[]> {
    type Prog = { id: number; name?: string };
    const show = async (dir: string, ...extra: string[]) =>
      JSON.parse(
        (await sh("bpftool", ["cgroup", "show", dir, ...extra, "-j"])).trim() || "[]",
      ) as Prog[];
    try {
      return await show(this.cgroup);
    } catch {
      // Linux 5.10 (bpftool 7.1): the listing of a cgroup's own programs fails (exit 255,
      // "[]") once one is attached, while the effective list works. The programs attached
      // here are those in its effective list that its parent's does not hold.
      const parent = this.cgroup.slice(0, this.cgroup.lastIndexOf("/"));
      const inherited = new Set((await show(parent, "effective")).map((p) => p.id));
      return (await show(this.cgroup, "effective")).filter((p) => !inherited.has(p.id));
    }
  }

  /**
   * The run counts and run times so far of the programs attached to the scratch cgroup, by
   * program name (`bpftool prog show`); both stay 0 unless {@linkcode enableBpfRunStats} holds
   * the kernel's statistics on. Null when bpftool cannot list them.
   */
  async hookRuns(): Promise<Map<string, HookRuns> | null> {
    type Prog = { id: number; name?: string; run_time_ns?: number; run_cnt?: number };
    try {
      const ids = new Set((await this.#attachedProgs()).map((p) => p.id));
      const progs = JSON.parse(await sh("bpftool", ["prog", "show", "-j"])) as Prog[];
      const out = new Map<string, HookRuns>();
      for (const p of progs) {
        if (!ids.has(p.id)) continue;
        const name = p.name ?? `id ${p.id}`;
        const had = out.get(name) ?? { runs: 0, ns: 0 };
        out.set(name, { runs: had.runs + (p.run_cnt ?? 0), ns: had.ns + (p.run_time_ns ?? 0) });
      }
      return out;
    } catch {
      return null;
    }
  }

  /** Stops every process it started, unpins, unmounts, removes the cgroup and namespace. */
  async remove(): Promise<void> {
    // SIGTERM first, so servers that fork (nginx) take their workers with them.
    for (const p of this.#procs) p.kill("SIGTERM");
    for (const p of this.#procs) await p.wait(3_000).catch(() => {});
    await Deno.remove(`${this.bpffs}/meshd`, { recursive: true }).catch(() => {});
    await sh("umount", [this.bpffs]).catch(() => {});
    await Deno.remove(this.cgroup).catch(() => {});
    // The shared parent goes too once no other run uses it (rmdir fails while it has children).
    await Deno.remove(this.cgroup.slice(0, this.cgroup.lastIndexOf("/"))).catch(() => {});
    await sh("ip", ["netns", "delete", this.netns]).catch(() => {});
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}
