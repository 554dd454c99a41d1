/**
 * Loads the sockmap experiment (`bpf/sockmap_accel.bpf.c`) through meshd's libbpf bindings:
 * the sk_msg program on its sockhash, and the sockops program on a cgroup while it is
 * enabled. Used by the sockmap benchmark and its test; meshd itself does not load it.
 *
 * Nothing is pinned: destroying the link detaches sockops, and closing the object frees the
 * programs and the sockhash (sockets in it leave it and go on as plain TCP sockets).
 *
 * @module
 */
import { BPF_SK_MSG_VERDICT, type BpfLink, Libbpf } from "../../ffi/libbpf.ts";

/** The object `bpf/build.sh` builds from `bpf/sockmap_accel.bpf.c`. */
export const SOCKMAP_OBJECT = new URL("../../bpf/build/sockmap_accel.bpf.o", import.meta.url);

/** The experiment's counters, summed over CPUs (the `ACCEL_*` indexes in the C source). */
export interface AccelStats {
  /** Sockets added to the sockhash when they became established. */
  added: number;
  /** Sockets the kernel would not add. */
  addFailed: number;
  /** Sends handed straight to the local peer socket. */
  redirected: number;
  /** Sends whose peer was not in the map: the normal TCP path. */
  passed: number;
}

/** The counts from `before` to `after`. */
export function statsSince(before: AccelStats, after: AccelStats): AccelStats {
  return {
    added: after.added - before.added,
    addFailed: after.addFailed - before.addFailed,
    redirected: after.redirected - before.redirected,
    passed: after.passed - before.passed,
  };
}

/** The loaded experiment. */
export class SockmapAccel {
  readonly #bpf: Libbpf;
  readonly #obj: ReturnType<Libbpf["openObject"]>;
  readonly #msg: ReturnType<Libbpf["program"]>;
  readonly #sockops: ReturnType<Libbpf["program"]>;
  readonly #socksFd: number;
  readonly #statsFd: number;
  #link: BpfLink | null = null;
  #cgroupFd = -1;

  private constructor(bpf: Libbpf, elf: Uint8Array<ArrayBuffer>) {
    this.#bpf = bpf;
    this.#obj = bpf.openObject(elf);
    try {
      bpf.load(this.#obj);
      this.#msg = bpf.program(this.#obj, "accel_msg");
      this.#sockops = bpf.program(this.#obj, "accel_sockops");
      this.#socksFd = bpf.mapFd(bpf.map(this.#obj, "accel_socks"));
      this.#statsFd = bpf.mapFd(bpf.map(this.#obj, "accel_stats"));
      // sk_msg first: a socket takes the map's programs when it is added.
      bpf.progAttach(this.#msg, this.#socksFd, BPF_SK_MSG_VERDICT);
    } catch (e) {
      bpf.closeObject(this.#obj);
      throw e;
    }
  }

  /** Loads the object (the verifier runs) and attaches sk_msg to its sockhash. */
  static load(libbpfPath: string, elf: Uint8Array<ArrayBuffer>): SockmapAccel {
    const bpf = Libbpf.open(libbpfPath);
    try {
      return new SockmapAccel(bpf, elf);
    } catch (e) {
      bpf.close();
      throw e;
    }
  }

  /** True while sockops is attached. */
  get enabled(): boolean {
    return this.#link !== null;
  }

  /** Attaches sockops to `cgroup`: its TCP sockets established from now on are accelerated. */
  enable(cgroup: string): void {
    if (this.#link) return;
    this.#cgroupFd = this.#bpf.openDir(cgroup);
    try {
      this.#link = this.#bpf.attachCgroup(this.#sockops, this.#cgroupFd);
    } catch (e) {
      this.#bpf.closeFd(this.#cgroupFd);
      throw e;
    }
  }

  /** Detaches sockops; sockets already in the map stay there until they close. */
  disable(): void {
    if (!this.#link) return;
    this.#bpf.closeLink(this.#link);
    this.#bpf.closeFd(this.#cgroupFd);
    this.#link = null;
  }

  /** The counters, summed over CPUs. */
  stats(): AccelStats {
    const cpus = this.#bpf.possibleCpus();
    const sum = (i: number) => {
      const key = new Uint8Array(4);
      new DataView(key.buffer).setUint32(0, i, true);
      const value = new Uint8Array(8 * cpus);
      if (!this.#bpf.mapLookup(this.#statsFd, key, value)) return 0;
      const v = new DataView(value.buffer);
      let n = 0n;
      for (let c = 0; c < cpus; c++) n += v.getBigUint64(c * 8, true);
      return Number(n);
    };
    return { added: sum(0), addFailed: sum(1), redirected: sum(2), passed: sum(3) };
  }

  /** Detaches everything and frees the programs and maps. */
  close(): void {
    this.disable();
    try {
      this.#bpf.progDetach(this.#msg, this.#socksFd, BPF_SK_MSG_VERDICT);
    } finally {
      this.#bpf.closeObject(this.#obj);
      this.#bpf.close();
    }
  }
}
