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
  const checks: ProbeCheck[] = [];
  let release = o.kernelRelease;
  if (!release) {
    try {
      release = Deno.osRelease();
    } catch (e) {
      release = "";
      checks.push({ name: "kernel", ok: false, detail: `cannot read the kernel release: ${e}` });
    }
  }
  if (release) {
    const v = kernelVersion(release);
    const ok = !!v && (v[0] > MIN_KERNEL[0] || (v[0] === MIN_KERNEL[0] && v[1] >= MIN_KERNEL[1]));
    checks.push({
      name: "kernel",
      ok,
      detail: ok
        ? `kernel ${release}`
        : `kernel ${release} is older than ${MIN_KERNEL.join(".")}, or not a version`,
    });
  }
  const lib = o.libbpfPath ?? LIBBPF_DIRS.map((d) => `${d}/libbpf.so.1`).find(exists);
  checks.push(
    lib && exists(lib) ? { name: "libbpf", ok: true, detail: `libbpf at ${lib}` } : {
      name: "libbpf",
      ok: false,
      detail: lib ? `no libbpf at ${lib}` : "libbpf.so.1 not found (Debian: libbpf1)",
    },
  );
  let table = "";
  try {
    table = await (o.mounts ?? (() => Deno.readTextFile("/proc/self/mounts")))();
  } catch (e) {
    const why = e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied
      ? "meshd may not read /proc/self/mounts (the eBPF path runs with --allow-all)"
      : `cannot read the mount table: ${(e as Error).message}`;
    checks.push({ name: "bpffs", ok: false, detail: why });
    checks.push({ name: "cgroup2", ok: false, detail: why });
  }
  if (table) {
    const mounts = table.split("\n").map((l) => l.split(" ")).filter((f) => f.length > 2);
    const of = (type: string) => mounts.find((f) => f[2] === type)?.[1];
    const bpf = of("bpf");
    checks.push(
      bpf
        ? { name: "bpffs", ok: true, detail: `bpffs at ${bpf}` }
        : { name: "bpffs", ok: false, detail: "no bpffs mounted (mount -t bpf bpf /sys/fs/bpf)" },
    );
    const cg = of("cgroup2");
    checks.push(
      cg
        ? { name: "cgroup2", ok: true, detail: `cgroup v2 at ${cg}` }
        : { name: "cgroup2", ok: false, detail: "no cgroup v2 hierarchy mounted" },
    );
  }
  // Loading and attaching the programs is the last check; this build does not carry them yet.
  checks.push({
    name: "programs",
    ok: false,
    detail: "this meshd build has no eBPF programs to load",
  });
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
