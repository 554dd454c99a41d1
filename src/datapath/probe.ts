/**
 * Which data path this node would use, and why: the checks meshd runs at startup before it
 * tries the eBPF fast path, each with what it found.
 */

/** One check and what it found. */
export interface ProbeCheck {
  name: "kernel" | "libbpf" | "bpffs" | "cgroup2" | "programs";
  ok: boolean;
  detail: string;
}

/** The data path chosen, and the reason in one line. */
export interface DatapathChoice {
  datapath: "ebpf" | "userspace";
  reason: string;
  checks: ProbeCheck[];
}

/** What the probe reads; tests and the `--kernel-release`/`--libbpf` flags replace parts. */
export interface ProbeOptions {
  /** The kernel release, such as `6.1.0-18-amd64`; default: the running kernel's. */
  kernelRelease?: string;
  /** libbpf's shared object; default: the first `libbpf.so.1` found in the usual places. */
  libbpfPath?: string;
  /** The mount table (`/proc/self/mounts` format); default: read it. */
  mounts?: () => Promise<string>;
  /** Where meshd pins its maps and links; the check wants a bpffs mount there. */
  bpffs?: string;
  /** The cgroup meshd attaches to; the check wants it inside the cgroup v2 hierarchy. */
  cgroup?: string;
  /**
   * The last check: loads (and, when running, attaches) the programs; resolves to what it
   * did, or throws why not. Run only when every other check passed. Absent: not tried.
   */
  programs?: () => Promise<string>;
}

/** Whether `path` is `mount` or below it. */
function under(path: string, mount: string): boolean {
  const m = mount.endsWith("/") ? mount : `${mount}/`;
  return path === mount || path.startsWith(m);
}

/** The mount points of file systems of `type` in a mount table (`/proc/self/mounts`), in order. */
export function mountsOfType(table: string, type: string): string[] {
  return table.split("\n").map((l) => l.split(" ")).filter((f) => f.length > 2 && f[2] === type)
    .map((f) => f[1]!);
}

/**
 * The cgroup v2 hierarchy in a mount table: the last one mounted, as a hostPath mount of the
 * node's hierarchy lies over a container's own. `undefined` when there is none.
 */
export function cgroup2Root(table: string): string | undefined {
  return mountsOfType(table, "cgroup2").at(-1);
}

/**
 * The cgroup v2 hierarchy this process sees ({@linkcode cgroup2Root} of `/proc/self/mounts`),
 * or `undefined` when there is none or the table cannot be read. The one finder: meshd's
 * default `--cgroup` and the test harness's scratch cgroups both come from it.
 */
export function findCgroup2(): string | undefined {
  try {
    return cgroup2Root(Deno.readTextFileSync("/proc/self/mounts"));
  } catch {
    return undefined;
  }
}

/** The oldest kernel the eBPF path supports. */
export const MIN_KERNEL: readonly [number, number] = [5, 10];

const LIBBPF_DIRS = [
  "/usr/lib/x86_64-linux-gnu",
  "/usr/lib/aarch64-linux-gnu",
  "/usr/lib64",
  "/usr/lib",
  "/lib/x86_64-linux-gnu",
  "/lib64",
];

/** The first `libbpf.so.1` in the usual places, or undefined. */
export function findLibbpf(): string | undefined {
  return LIBBPF_DIRS.map((d) => `${d}/libbpf.so.1`).find(exists);
}

/** `[major, minor]` of a kernel release, or null when it does not start with them. */
export function kernelVersion(release: string): [number, number] | null {
  const m = release.match(/^(\d+)\.(\d+)/);
  return m ? [Number(m[1]), Number(m[2])] : null;
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/**
 * Runs the checks in order and chooses. Every check runs, so the answer lists all that is
 * missing, not just the first; the reason names the first that failed.
 */
export async function probeDatapath(o: ProbeOptions = {}): Promise<DatapathChoice> {
  const checks: ProbeCheck[] = [
    checkKernel(o.kernelRelease),
    checkLibbpf(o.libbpfPath ?? findLibbpf()),
    ...await checkMounts(o),
  ];
  checks.push(await checkPrograms(o.programs, checks));
  const failed = checks.find((c) => !c.ok);
  if (!failed) return { datapath: "ebpf", reason: checks.map((c) => c.detail).join(", "), checks };
  return {
    datapath: "userspace",
    reason: `${failed.detail}` +
      (checks.some((c) => c.ok)
        ? ` (found: ${checks.filter((c) => c.ok).map((c) => c.detail).join(", ")})`
        : ""),
    checks,
  };
}

function checkKernel(given: string | undefined): ProbeCheck {
  let release = given;
  if (!release) {
    try {
      release = Deno.osRelease();
    } catch (e) {
      return { name: "kernel", ok: false, detail: `cannot read the kernel release: ${e}` };
    }
  }
  const v = kernelVersion(release);
  const ok = !!v && (v[0] > MIN_KERNEL[0] || (v[0] === MIN_KERNEL[0] && v[1] >= MIN_KERNEL[1]));
  return {
    name: "kernel",
    ok,
    detail: ok
      ? `kernel ${release}`
      : `kernel ${release} is older than ${MIN_KERNEL.join(".")}, or not a version`,
  };
}

function checkLibbpf(lib: string | undefined): ProbeCheck {
  if (lib && exists(lib)) return { name: "libbpf", ok: true, detail: `libbpf at ${lib}` };
  return {
    name: "libbpf",
    ok: false,
    detail: lib ? `no libbpf at ${lib}` : "libbpf.so.1 not found (Debian: libbpf1)",
  };
}

/** The bpffs and cgroup2 checks, from the mount table. */
async function checkMounts(o: ProbeOptions): Promise<ProbeCheck[]> {
  let table: string;
  try {
    table = await (o.mounts ?? (() => Deno.readTextFile("/proc/self/mounts")))();
  } catch (e) {
    const why = e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied
      ? "meshd may not read /proc/self/mounts (the eBPF path runs with --allow-all)"
      : `cannot read the mount table: ${(e as Error).message}`;
    return [{ name: "bpffs", ok: false, detail: why }, { name: "cgroup2", ok: false, detail: why }];
  }
  const bpf = mountsOfType(table, "bpf");
  const bpfAt = o.bpffs ? bpf.filter((m) => under(o.bpffs!, m)).at(-1) : bpf[0];
  const cg = mountsOfType(table, "cgroup2");
  const cgAt = o.cgroup ? cg.filter((m) => under(o.cgroup!, m)).at(-1) : cg[0];
  return [
    bpfAt ? { name: "bpffs", ok: true, detail: `bpffs at ${bpfAt}` } : {
      name: "bpffs",
      ok: false,
      detail: o.bpffs
        ? `no bpffs mounted at ${o.bpffs} (mount -t bpf bpf ${o.bpffs})`
        : "no bpffs mounted (mount -t bpf bpf /sys/fs/bpf)",
    },
    cgAt ? { name: "cgroup2", ok: true, detail: `cgroup v2 at ${cgAt}` } : {
      name: "cgroup2",
      ok: false,
      detail: o.cgroup
        ? `${o.cgroup} is not in a cgroup v2 hierarchy`
        : "no cgroup v2 hierarchy mounted",
    },
  ];
}

/** Loads and attaches the programs, the last check, only when every other one passed. */
async function checkPrograms(
  programs: ProbeOptions["programs"],
  earlier: ProbeCheck[],
): Promise<ProbeCheck> {
  if (!programs) return { name: "programs", ok: false, detail: "the programs were not tried" };
  if (earlier.some((c) => !c.ok)) {
    return { name: "programs", ok: false, detail: "not tried: an earlier check failed" };
  }
  try {
    return { name: "programs", ok: true, detail: await programs() };
  } catch (e) {
    return { name: "programs", ok: false, detail: (e as Error).message };
  }
}
