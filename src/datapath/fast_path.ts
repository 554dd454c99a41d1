import type { Logger, Registry } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { registerDatapathMetrics } from "./datapath_metrics.ts";
import { DEFAULT_GRACE_MS, EbpfDatapath } from "./ebpf_datapath.ts";
import { DatapathError, PROGRAMS, removePins } from "./ebpf_loader.ts";
import {
  clusterIPAddresses,
  datapathEntries,
  type MeshAddresses,
  type ProxyListener,
} from "./entries.ts";
import {
  cgroup2Root,
  type DatapathChoice,
  findLibbpf,
  probeDatapath,
  type ProbeOptions,
} from "./probe.ts";

/** `--datapath`: what the node may use. */
export type DatapathMode = "auto" | "ebpf" | "userspace";

/** The built object, beside meshd's sources (and included by `deno task compile`). */
export const DEFAULT_BPF_OBJECT = new URL("../../bpf/build/meshd_sock.bpf.o", import.meta.url);

/** Options of {@linkcode selectDatapath}. */
export interface SelectOptions extends Omit<ProbeOptions, "programs" | "bpffs" | "cgroup"> {
  mode: DatapathMode;
  /** The cgroup v2 directory to attach to; default: the root of the cgroup v2 mount. */
  cgroup?: string;
  /** The bpffs mount; meshd pins under `<bpffs>/meshd`. */
  bpffs: string;
  /** The BPF object; default {@linkcode DEFAULT_BPF_OBJECT}. */
  object?: string | URL;
  /** How long pinned maps keep balancing with no meshd renewing them (default 10 min). */
  graceMs?: number;
  logger: Logger;
  verbose?: boolean;
}

/** The outcome of {@linkcode selectDatapath}: the choice and, for eBPF, the loaded path. */
export interface Selected {
  choice: DatapathChoice;
  ebpf: EbpfDatapath | null;
}

/**
 * The cgroup v2 directory to attach to for `--cgroup DIR`. On a hybrid host (cgroup v1
 * controllers, cgroup v2 at `/sys/fs/cgroup/unified`) the DaemonSet mounts the host's
 * `/sys/fs/cgroup`, which is a tmpfs of v1 hierarchies: there the v2 root is `DIR/unified`.
 * Anything else is returned as given, for the probe to judge.
 */
export function cgroupV2Dir(dir: string, mountTable: string): string {
  const mounts = mountTable.split("\n").map((l) => l.split(" ")).filter((f) => f.length > 2);
  const trimmed = dir.replace(/\/+$/, "") || "/";
  const inV2 = mounts.some((f) =>
    f[2] === "cgroup2" && (trimmed === f[1] || trimmed.startsWith(`${f[1]!.replace(/\/$/, "")}/`))
  );
  if (inV2) return dir;
  const unified = `${trimmed === "/" ? "" : trimmed}/unified`;
  return mounts.some((f) => f[2] === "cgroup2" && f[1] === unified) ? unified : dir;
}

/**
 * Removes the links and maps an earlier meshd pinned, so hooks left attached do not keep
 * balancing from maps no one updates any more. Only meshd's own pin names are touched.
 */
export function removeStalePins(pinDir: string, logger: Logger): void {
  const removed = removePins(pinDir);
  if (removed > 0) {
    logger.warn("removed the eBPF hooks an earlier meshd left attached", { pinDir, pins: removed });
  }
  try {
    Deno.removeSync(pinDir);
  } catch { /* not empty or not there */ }
}

/**
 * Chooses this node's data path. `userspace` does not look further. `auto` and `ebpf` run
 * every probe check, and last load the programs and attach them to the cgroup (taking over
 * what an earlier meshd pinned): eBPF when all of it worked. Otherwise `auto` logs one line
 * naming the check that failed and goes on with the userspace proxy alone, and `ebpf` throws
 * a {@linkcode DatapathError} with that line.
 */
export async function selectDatapath(o: SelectOptions): Promise<Selected> {
  const pinDir = `${o.bpffs.replace(/\/+$/, "")}/meshd`;
  if (o.mode === "userspace") {
    removeStalePins(pinDir, o.logger);
    return {
      choice: { datapath: "userspace", reason: "--datapath userspace", checks: [] },
      ebpf: null,
    };
  }
  const mounts = o.mounts ?? (() => Deno.readTextFile("/proc/self/mounts"));
  const cgroup = o.cgroup === undefined
    ? cgroup2Root(await Promise.resolve().then(mounts).catch(() => ""))
    : cgroupV2Dir(o.cgroup, await mounts().catch(() => ""));
  let ebpf: EbpfDatapath | null = null;
  const choice = await probeDatapath({
    ...o,
    mounts,
    bpffs: o.bpffs,
    cgroup,
    programs: async () => {
      const object = await readBpfObject(o.object);
      const lib = o.libbpfPath ?? findLibbpf() ?? "libbpf.so.1";
      ebpf = EbpfDatapath.load({
        libbpfPath: lib,
        object,
        cgroup: cgroup!,
        pinDir,
        logger: o.logger,
        verbose: o.verbose,
        graceMs: o.graceMs,
      });
      return `${PROGRAMS.length} programs attached to ${cgroup}` +
        (ebpf.tookOver ? `, maps and links taken over from ${pinDir}` : `, pinned in ${pinDir}`);
    },
  });
  if (choice.datapath === "userspace") {
    if (o.mode === "ebpf") throw new DatapathError(`--datapath ebpf: ${choice.reason}`);
    o.logger.warn("eBPF fast path off; the userspace proxy serves alone", {
      reason: choice.reason,
    });
    removeStalePins(pinDir, o.logger);
  }
  return { choice, ebpf };
}

/** Reads the BPF object, with an error that says how to build it. */
export async function readBpfObject(
  where: string | URL = DEFAULT_BPF_OBJECT,
): Promise<Uint8Array<ArrayBuffer>> {
  try {
    return await Deno.readFile(where);
  } catch (e) {
    throw new DatapathError(
      `cannot read the BPF object ${where}: ${(e as Error).message} (bash bpf/build.sh builds it)`,
    );
  }
}

/** Options of {@linkcode FastPath}. */
export interface FastPathOptions {
  selected: Selected;
  /** meshd's listeners, for ports that need the L7 proxy. */
  proxy: ProxyListener;
  /**
   * Where mesh addresses come from: each Service's ClusterIP (file provider), or the table
   * given to {@linkcode FastPath.setAddresses} (the shadow Services, kube provider).
   */
  addresses: "cluster-ip" | "given";
  logger: Logger;
  registry?: Registry;
  /** The grace period the maps were loaded with; they are renewed well within it. */
  graceMs?: number;
}

/**
 * The node's data path as the rest of meshd sees it: which one is in use and why, and, on
 * eBPF, the maps kept equal to each config applied and to the mesh addresses.
 */
export class FastPath {
  readonly choice: DatapathChoice;
  #ebpf: EbpfDatapath | null;
  #o: FastPathOptions;
  #config: MeshConfig | null = null;
  #given: MeshAddresses = new Map();
  #errors = 0;
  #renewer: ReturnType<typeof setInterval> | undefined;

  constructor(o: FastPathOptions) {
    this.#o = o;
    this.choice = o.selected.choice;
    this.#ebpf = o.selected.ebpf;
    if (this.#ebpf) {
      // The maps' deadline is pushed ahead four times per grace period while meshd runs.
      const every = Math.min((o.graceMs ?? DEFAULT_GRACE_MS) / 4, 60_000);
      this.#renewer = setInterval(() => this.#renew(), every);
      Deno.unrefTimer(this.#renewer);
    }
    if (o.registry) {
      registerDatapathMetrics(o.registry, {
        choice: this.choice,
        ebpf: this.#ebpf,
        errors: () => this.#errors,
      });
    }
  }

  /** Brings the maps to `config` (nothing on the userspace path). */
  apply(config: MeshConfig): void {
    this.#config = config;
    this.#sync();
  }

  /** The mesh addresses of each service (`namespace/name`), when they are given. */
  setAddresses(a: MeshAddresses): void {
    this.#given = a;
    this.#sync();
  }

  #sync(): void {
    const ebpf = this.#ebpf;
    const config = this.#config;
    if (!ebpf || !config) return;
    const started = performance.now();
    try {
      const addresses = this.#o.addresses === "cluster-ip"
        ? clusterIPAddresses(config)
        : this.#given;
      const r = ebpf.apply(datapathEntries(config, addresses, this.#o.proxy), config.version);
      this.#o.logger.debug("eBPF maps updated", {
        version: config.version,
        ...r,
        ms: Math.round((performance.now() - started) * 10) / 10,
      });
    } catch (e) {
      // The hooks fail open: what the maps miss goes to the mesh address and the proxy.
      this.#errors++;
      this.#o.logger.error("cannot update the eBPF maps", {
        version: config.version,
        error: (e as Error).message,
      });
    }
  }

  #renew(): void {
    try {
      this.#ebpf?.renew();
    } catch (e) {
      this.#errors++;
      this.#o.logger.error("cannot renew the eBPF maps' deadline", {
        error: (e as Error).message,
      });
    }
  }

  /** For `/api/status`. */
  status(): unknown {
    return {
      datapath: this.choice.datapath,
      reason: this.choice.reason,
      checks: this.choice.checks,
      ...(this.#ebpf
        ? {
          ebpf: {
            ...this.#ebpf.stats(),
            mapBytes: this.#ebpf.mapBytes(),
            tookOver: this.#ebpf.tookOver,
            expiresInMs: this.#ebpf.expiresInMs(),
            errors: this.#errors,
          },
        }
        : {}),
    };
  }

  /** Lets go of the eBPF path and leaves it pinned, balancing, for the next meshd. */
  close(): void {
    clearInterval(this.#renewer);
    this.#ebpf?.close();
    this.#ebpf = null;
  }
}
