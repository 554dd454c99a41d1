/**
 * How many CPUs this process may use, for `meshd run --workers auto`: the CPUs its scheduler
 * affinity allows, capped by the cgroup v2 CPU quota (`cpu.max`) of its cgroup and each of its
 * ancestors, rounded up; `navigator.hardwareConcurrency` when neither can be read.
 *
 * @module
 */

/** Reads a file's text; throws when it cannot. A test seam. */
export type ReadText = (path: string) => string;

/** Options for {@linkcode availableCpus}. */
export interface AvailableCpusOptions {
  /** Reads `/proc` and `/sys` files; default `Deno.readTextFileSync`. */
  read?: ReadText;
  /** The fallback when nothing can be read; default `navigator.hardwareConcurrency`. */
  fallback?: number;
  /** Where the cgroup v2 hierarchy is mounted; default `/sys/fs/cgroup`. */
  cgroupRoot?: string;
}

/**
 * The number of CPUs in a kernel CPU list such as `0-3,8,10-11` (the `Cpus_allowed_list` line
 * of `/proc/self/status`); `null` when it is not one.
 */
export function countCpuList(list: string): number | null {
  let n = 0;
  for (const part of list.trim().split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) return null;
    const first = Number(m[1]);
    const last = m[2] === undefined ? first : Number(m[2]);
    if (last < first) return null;
    n += last - first + 1;
  }
  return n > 0 ? n : null;
}

/**
 * The CPUs a cgroup v2 `cpu.max` (`"QUOTA PERIOD"`, or `"max PERIOD"`) allows, rounded up;
 * `null` for no limit or an unreadable value.
 */
export function cpuMaxLimit(text: string): number | null {
  const [quota, period] = text.trim().split(/\s+/);
  if (quota === undefined || quota === "max") return null;
  const q = Number(quota);
  const p = Number(period ?? "100000");
  if (!(q > 0) || !(p > 0)) return null;
  return Math.max(1, Math.ceil(q / p));
}

/**
 * The CPUs this process may use: affinity, capped by the cgroup CPU quota; at least 1.
 *
 * @example
 * ```ts
 * const workers = availableCpus(); // 2 on a pod limited to 1500m on a 16-core node
 * ```
 */
export function availableCpus(options: AvailableCpusOptions = {}): number {
  const read = options.read ?? ((p: string) => Deno.readTextFileSync(p));
  const root = options.cgroupRoot ?? "/sys/fs/cgroup";
  const tryRead = (path: string): string | null => {
    try {
      return read(path);
    } catch {
      return null;
    }
  };
  let cpus: number | null = null;
  const status = tryRead("/proc/self/status");
  const allowed = status ? /^Cpus_allowed_list:\s*(\S+)/m.exec(status)?.[1] : undefined;
  if (allowed) cpus = countCpuList(allowed);
  // cgroup v2: "0::/kubepods/pod.../container"; the quota of every level up to the root holds.
  const cgroup = tryRead("/proc/self/cgroup");
  const path = cgroup ? /^0::(\/\S*)$/m.exec(cgroup)?.[1] : undefined;
  if (path !== undefined) {
    const parts = path.split("/").filter((p) => p && p !== "..");
    for (let i = parts.length; i >= 1; i--) {
      const max = tryRead(`${root}/${parts.slice(0, i).join("/")}/cpu.max`);
      const limit = max === null ? null : cpuMaxLimit(max);
      if (limit !== null) cpus = cpus === null ? limit : Math.min(cpus, limit);
    }
  }
  if (cpus !== null) return cpus;
  const fallback = options.fallback ?? navigator.hardwareConcurrency;
  return Number.isSafeInteger(fallback) && fallback > 0 ? fallback : 1;
}
