import { kernelMap, type WrittenMaps } from "./datapath_map.ts";
import { DatapathError } from "./ebpf_loader.ts";
import {
  type LoadedPrograms,
  type LoaderOptions,
  loadPrograms,
  MAP_KEYS,
  removePins,
  verifyPrograms,
} from "./ebpf_loader.ts";
import { mapMemoryBytes } from "./ebpf_stats.ts";
import type { DatapathEntry } from "./entries.ts";
import { STRUCTS } from "./layout.ts";
import { type MapCounts, MapWriter, type ServiceAddress } from "./map_writer.ts";

/** Options of {@linkcode EbpfDatapath.load}. */
export interface EbpfOptions extends LoaderOptions {
  /**
   * How long the hooks go on balancing from maps no meshd renews: each write and
   * {@linkcode EbpfDatapath.renew} moves the deadline this far ahead. Default 10 minutes.
   */
  graceMs?: number;
}

/** The default of {@linkcode EbpfOptions.graceMs}. */
export const DEFAULT_GRACE_MS = 10 * 60_000;

/**
 * The eBPF fast path on one node: the programs loaded and attached to a cgroup through links
 * pinned in bpffs (`loadPrograms`), and the maps they read, which {@linkcode apply} keeps equal
 * to the mesh config (a {@linkcode MapWriter}). A meshd that finds the pins of an earlier one
 * takes them over, so sockets are balanced the whole time. {@linkcode close} leaves everything
 * pinned for the next meshd; {@linkcode remove} detaches and unpins it all.
 *
 * @example
 * ```ts
 * const dp = EbpfDatapath.load({ libbpfPath, object, cgroup, pinDir, logger });
 * dp.apply(datapathEntries(config, addresses, proxy), config.version);
 * ```
 */
export class EbpfDatapath {
  readonly pinDir: string;
  /** True when this meshd took over the pinned maps of an earlier one. */
  readonly tookOver: boolean;
  #loaded: LoadedPrograms;
  #writer: MapWriter;

  private constructor(pinDir: string, loaded: LoadedPrograms, writer: MapWriter) {
    this.pinDir = pinDir;
    this.tookOver = loaded.takenOver !== null;
    this.#loaded = loaded;
    this.#writer = writer;
  }

  /**
   * Loads the programs and attaches them, taking over what an earlier meshd pinned at
   * `pinDir`. Throws a {@linkcode DatapathError} that names the step and the call that failed;
   * nothing this call made is left attached then.
   */
  static load(o: EbpfOptions): EbpfDatapath {
    const loaded = loadPrograms(o);
    try {
      const { bpf, fds, takenOver } = loaded;
      const maps: WrittenMaps = {
        svc4: kernelMap(bpf, fds.svc4, sizes("meshd_svc4_key", "meshd_svc")),
        svc6: kernelMap(bpf, fds.svc6, sizes("meshd_svc6_key", "meshd_svc")),
        be4: kernelMap(bpf, fds.be4, sizes("meshd_be_key", "meshd_be4")),
        be6: kernelMap(bpf, fds.be6, sizes("meshd_be_key", "meshd_be6")),
        meta: kernelMap(bpf, fds.meta, { key: 4, value: STRUCTS.meshd_meta.size }),
      };
      const writer = new MapWriter(maps, {
        now: () => bpf.bootTimeNs(),
        cgroupIno: loaded.cgroupIno,
        graceMs: o.graceMs ?? DEFAULT_GRACE_MS,
      });
      if (takenOver) writer.readBack();
      // Maps taken over keep their deadline until this meshd writes a config into them: if
      // they outlived it, they stay unused rather than route from a stale config meanwhile.
      writer.writeMeta(takenOver?.version ?? 0, takenOver?.expires);
      return new EbpfDatapath(o.pinDir, loaded, writer);
    } catch (e) {
      loaded.release();
      if (!loaded.takenOver) removePins(o.pinDir);
      throw new DatapathError(`cannot read the maps taken over: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }

  /**
   * Loads the programs into the kernel (the verifier runs) and lets them go, attaching
   * nothing: whether this node could run the eBPF path, for `meshd check`.
   */
  static verify(libbpfPath: string, object: Uint8Array<ArrayBuffer>): void {
    verifyPrograms(libbpfPath, object);
  }

  /**
   * Makes the maps hold `entries` and nothing else (see {@linkcode MapWriter.apply}).
   * Returns what it did.
   */
  apply(entries: readonly DatapathEntry[], version: number): { written: number; removed: number } {
    return this.#writer.apply(entries, version);
  }

  /**
   * Moves the maps' deadline a grace period ahead. A meshd calls it while it runs; when no
   * meshd has for that long, the hooks stop sending sockets to backends that may be stale.
   */
  renew(): void {
    this.#writer.renew();
  }

  /** Milliseconds until the hooks stop balancing unless renewed. */
  expiresInMs(): number {
    return this.#writer.expiresInMs();
  }

  /** What the service entry of an address holds, or null: for tests. */
  lookup(e: ServiceAddress): { count: number; redirect: boolean } | null {
    return this.#writer.lookup(e);
  }

  /** Counts for status and metrics. */
  stats(): MapCounts {
    return this.#writer.counts();
  }

  /** Kernel memory of the maps: the sum of each map's fdinfo `memlock`. */
  mapBytes(): number {
    return mapMemoryBytes(MAP_KEYS.map((k) => this.#loaded.fds[k]));
  }

  /**
   * Lets go of the programs and maps and leaves them pinned and attached: sockets keep being
   * balanced from the maps as they are until the next meshd takes them over.
   */
  close(): void {
    this.#loaded.release();
  }

  /** Detaches the programs and removes every pin: the cgroup is as it was before meshd. */
  remove(): void {
    removePins(this.pinDir);
    this.close();
    try {
      Deno.removeSync(this.pinDir);
    } catch { /* not empty (someone else's pins) or gone */ }
  }
}

function sizes(key: keyof typeof STRUCTS, value: keyof typeof STRUCTS) {
  return { key: STRUCTS[key].size, value: STRUCTS[value].size };
}
