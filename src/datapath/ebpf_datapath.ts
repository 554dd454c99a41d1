import { type BpfLink, Libbpf } from "../../ffi/libbpf.ts";
import type { Logger } from "../observability/mod.ts";
import type { DatapathEntry } from "./entries.ts";
import {
  decode,
  encode,
  ipv4Number,
  ipv6Bytes,
  LAYOUT_VERSION,
  MAX_BACKENDS,
  STRUCTS,
  SVC_REDIRECT,
} from "./layout.ts";

/** The eBPF path could not be set up, or a map could not be written. */
export class DatapathError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "DatapathError";
  }
}

/** The programs of `bpf/meshd_sock.bpf.c`, each attached to the cgroup through a pinned link. */
export const PROGRAMS = [
  "meshd_connect4",
  "meshd_sendmsg4",
  "meshd_recvmsg4",
  "meshd_peer4",
  "meshd_connect6",
  "meshd_sendmsg6",
  "meshd_recvmsg6",
  "meshd_peer6",
] as const;

/** The maps, pinned by their own names. */
export const MAPS = [
  "meshd_svc4",
  "meshd_svc6",
  "meshd_be4",
  "meshd_be6",
  "meshd_rnat4",
  "meshd_rnat6",
  "meshd_meta",
] as const;

type MapName = typeof MAPS[number];

/** What a service entry is keyed by. */
type ServiceAddress = Pick<DatapathEntry, "family" | "address" | "port" | "protocol">;

/**
 * Removes the pins meshd makes in `dir` (all of them, or the links only); a link detaches
 * once no process holds it any more. Other files are left alone. Returns how many it removed.
 */
export function removePins(dir: string, which: "all" | "links" = "all"): number {
  const names = PROGRAMS.map((p) => `link_${p}`);
  if (which === "all") names.push(...MAPS);
  let removed = 0;
  for (const name of names) {
    try {
      Deno.removeSync(`${dir}/${name}`);
      removed++;
    } catch { /* not there, or bpffs not writable here: nothing of ours to remove */ }
  }
  return removed;
}

/** Options of {@linkcode EbpfDatapath.load}. */
export interface EbpfOptions {
  /** libbpf's shared object. */
  libbpfPath: string;
  /** The ELF bytes of `meshd_sock.bpf.o`. */
  object: Uint8Array<ArrayBuffer>;
  /** The cgroup v2 directory whose processes' sockets are balanced. */
  cgroup: string;
  /** The bpffs directory maps and links are pinned in, such as `/sys/fs/bpf/meshd`. */
  pinDir: string;
  logger: Logger;
  /** Shows libbpf's own output (the verifier log) on stderr. */
  verbose?: boolean;
  /**
   * How long the hooks go on balancing from maps no meshd renews: each write and
   * {@linkcode EbpfDatapath.renew} moves the deadline this far ahead. Default 10 minutes.
   */
  graceMs?: number;
}

/** The default of {@linkcode EbpfOptions.graceMs}. */
export const DEFAULT_GRACE_MS = 10 * 60_000;

/** What a service port's entry holds, as meshd last wrote it. */
interface Written {
  family: 4 | 6;
  key: Uint8Array<ArrayBuffer>;
  id: number;
  half: number;
  /** Backends written in each half, so a rewrite deletes the slots it no longer uses. */
  halves: [number, number];
  /** The backends and flags, to skip an entry that did not change ("" when unknown). */
  sig: string;
}

/** Counts shown by `/api/status` and `/metrics`. */
export interface EbpfStats {
  /** Service addresses in the maps, by family. */
  services4: number;
  services6: number;
  /** Of those, the ones sent to meshd's L7 listener. */
  redirects: number;
  /** Backend slots in force. */
  backends: number;
  /** Map entries written and deleted since start. */
  writes: number;
  deletes: number;
  /** The MeshConfig version last written. */
  version: number;
}

function keyHex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

/**
 * The eBPF fast path on one node: the programs loaded and attached to a cgroup through links
 * pinned in bpffs, and the maps they read, which {@linkcode apply} keeps equal to the mesh
 * config. A meshd that finds the pins of an earlier one (same layout) takes them over: it
 * reuses the maps and swaps the programs behind the links in place, so sockets are balanced
 * the whole time. {@linkcode close} leaves everything pinned for the next meshd;
 * {@linkcode remove} detaches and unpins it all.
 *
 * @example
 * ```ts
 * const dp = EbpfDatapath.load({ libbpfPath, object, cgroup, pinDir, logger });
 * dp.apply(datapathEntries(config, addresses, proxy), config.version);
 * ```
 */
export class EbpfDatapath {
  readonly pinDir: string;
  /** True when this meshd took over the pinned maps and links of an earlier one. */
  readonly tookOver: boolean;
  #bpf: Libbpf;
  #fds: Record<MapName, number>;
  #links: BpfLink[];
  #closeObject: () => void;
  #written = new Map<string, Written>();
  #freeIds: number[] = [];
  #nextId = 1;
  #cgroupIno: bigint;
  #graceNs: bigint;
  #expires = 0n;
  #applied = false;
  #stats = { writes: 0, deletes: 0, version: 0 };

  private constructor(
    bpf: Libbpf,
    pinDir: string,
    fds: Record<MapName, number>,
    links: BpfLink[],
    closeObject: () => void,
    tookOver: boolean,
    cgroupIno: bigint,
    graceMs: number,
  ) {
    this.#bpf = bpf;
    this.pinDir = pinDir;
    this.#fds = fds;
    this.#links = links;
    this.#closeObject = closeObject;
    this.tookOver = tookOver;
    this.#cgroupIno = cgroupIno;
    this.#graceNs = BigInt(Math.round(graceMs)) * 1_000_000n;
  }

  /**
   * Loads the programs and attaches them, taking over what an earlier meshd pinned at
   * `pinDir` when its layout is this one's. Throws a {@linkcode DatapathError} that names the
   * step and the call that failed; nothing this call made is left attached then.
   */
  static load(o: EbpfOptions): EbpfDatapath {
    let bpf: Libbpf;
    try {
      bpf = Libbpf.open(o.libbpfPath, { verbose: o.verbose });
    } catch (e) {
      throw new DatapathError(`cannot load libbpf: ${(e as Error).message}`, { cause: e });
    }
    let step = "";
    const made: (() => void)[] = [];
    try {
      step = `check the cgroup ${o.cgroup}`;
      const st = Deno.statSync(o.cgroup);
      if (!st.isDirectory) throw new Error(`${o.cgroup} is not a directory`);
      const cgroupIno = BigInt(st.ino ?? 0);
      step = `make the pin directory ${o.pinDir}`;
      Deno.mkdirSync(o.pinDir, { recursive: true });

      // What an earlier meshd left: its maps when their layout is ours, else nothing.
      step = "read the pinned maps";
      const pinned = EbpfDatapath.#pinnedMaps(bpf, o.pinDir, o.logger);
      const previousCgroup = pinned?.cgroup ?? null;
      if (!pinned) removePins(o.pinDir);

      step = "open the BPF object";
      const obj = bpf.openObject(o.object);
      made.push(() => bpf.closeObject(obj));
      if (pinned) {
        step = "reuse the pinned maps";
        try {
          for (const name of MAPS) bpf.reuseMapFd(bpf.map(obj, name), pinned.fds[name]);
        } finally {
          // reuse_fd keeps a copy of each.
          for (const name of MAPS) bpf.closeFd(pinned.fds[name]);
        }
      }
      step = "load the programs (the verifier runs here)";
      bpf.load(obj);
      const fds = {} as Record<MapName, number>;
      for (const name of MAPS) fds[name] = bpf.mapFd(bpf.map(obj, name));
      if (!pinned) {
        step = "pin the maps";
        for (const name of MAPS) bpf.pinMap(bpf.map(obj, name), `${o.pinDir}/${name}`);
        made.push(() => removePins(o.pinDir));
      }
      if (previousCgroup !== null && previousCgroup !== cgroupIno) {
        // The earlier meshd balanced another cgroup: its links go, ours replace them.
        removePins(o.pinDir, "links");
      }
      step = `open the cgroup ${o.cgroup}`;
      const cgroupFd = bpf.openDir(o.cgroup);
      const links: BpfLink[] = [];
      try {
        for (const name of PROGRAMS) {
          const prog = bpf.program(obj, name);
          const path = `${o.pinDir}/link_${name}`;
          step = `attach ${name}`;
          const old = bpf.openLink(path);
          if (old) {
            // The hook keeps a program all along: the kernel swaps it in one step.
            bpf.updateLink(old, prog);
            links.push(old);
          } else {
            const link = bpf.attachCgroup(prog, cgroupFd);
            links.push(link);
            bpf.pinLink(link, path);
          }
        }
      } catch (e) {
        for (const l of links) bpf.closeLink(l);
        throw e;
      } finally {
        bpf.closeFd(cgroupFd);
      }
      const dp = new EbpfDatapath(
        bpf,
        o.pinDir,
        fds,
        links,
        () => bpf.closeObject(obj),
        !!pinned,
        cgroupIno,
        o.graceMs ?? DEFAULT_GRACE_MS,
      );
      step = "read the maps taken over";
      if (pinned) dp.#readBack();
      // Maps taken over keep their deadline until this meshd writes a config into them: if
      // they outlived it, they stay unused rather than route from a stale config meanwhile.
      dp.#writeMeta(pinned?.version ?? 0, pinned ? pinned.expires : undefined);
      return dp;
    } catch (e) {
      for (const undo of made.reverse()) {
        try {
          undo();
        } catch { /* best effort: the error below is the one to report */ }
      }
      bpf.close();
      throw new DatapathError(`cannot ${step}: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * Loads the programs into the kernel (the verifier runs) and lets them go, attaching
   * nothing: whether this node could run the eBPF path, for `meshd check`.
   */
  static verify(libbpfPath: string, object: Uint8Array<ArrayBuffer>): void {
    let bpf: Libbpf;
    try {
      bpf = Libbpf.open(libbpfPath);
    } catch (e) {
      throw new DatapathError(`cannot load libbpf: ${(e as Error).message}`, { cause: e });
    }
    try {
      const obj = bpf.openObject(object);
      try {
        bpf.load(obj);
      } finally {
        bpf.closeObject(obj);
      }
    } catch (e) {
      throw new DatapathError(`cannot load the programs: ${(e as Error).message}`, { cause: e });
    } finally {
      bpf.close();
    }
  }

  /** The pinned maps' fds when all are there with this layout; null (and a log) otherwise. */
  static #pinnedMaps(
    bpf: Libbpf,
    dir: string,
    logger: Logger,
  ): { fds: Record<MapName, number>; version: number; cgroup: bigint; expires: bigint } | null {
    const metaFd = bpf.objGet(`${dir}/meshd_meta`);
    if (metaFd === null) return null;
    const buf = new Uint8Array(STRUCTS.meshd_meta.size);
    bpf.mapLookup(metaFd, new Uint8Array(4), buf);
    bpf.closeFd(metaFd);
    const meta = decode(STRUCTS.meshd_meta, buf);
    if (meta["layout"] !== LAYOUT_VERSION) {
      logger.warn("eBPF maps pinned by another meshd layout; replacing them", {
        pinDir: dir,
        pinned: meta["layout"],
        ours: LAYOUT_VERSION,
      });
      return null;
    }
    const fds = {} as Record<MapName, number>;
    for (const name of MAPS) {
      const fd = bpf.objGet(`${dir}/${name}`);
      if (fd === null) {
        for (const f of Object.values(fds)) bpf.closeFd(f);
        logger.warn("eBPF pins incomplete; replacing them", { pinDir: dir, missing: name });
        return null;
      }
      fds[name] = fd;
    }
    return {
      fds,
      version: Number(meta["version"]),
      cgroup: meta["cgroup"] as bigint,
      expires: meta["expires"] as bigint,
    };
  }

  #writeMeta(version: number, expires = this.#bpf.bootTimeNs() + this.#graceNs): void {
    this.#stats.version = version;
    this.#bpf.mapUpdate(
      this.#fds.meshd_meta,
      new Uint8Array(4),
      encode(STRUCTS.meshd_meta, {
        layout: LAYOUT_VERSION,
        version: BigInt(version),
        cgroup: this.#cgroupIno,
        expires,
      }),
    );
    this.#expires = expires;
  }

  /**
   * Moves the maps' deadline a grace period ahead. A meshd calls it while it runs; when no
   * meshd has for that long, the hooks stop sending sockets to backends that may be stale.
   */
  renew(): void {
    // Not before this meshd's first apply: maps taken over may hold an old config.
    if (this.#applied) this.#writeMeta(this.#stats.version);
  }

  /** Milliseconds until the hooks stop balancing unless renewed. */
  expiresInMs(): number {
    return Math.max(0, Number((this.#expires - this.#bpf.bootTimeNs()) / 1_000_000n));
  }

  /** Rebuilds what was written from the maps taken over, so the next apply is a diff. */
  #readBack(): void {
    const counts = new Map<string, number>();
    for (const family of [4, 6] as const) {
      const be = family === 4 ? this.#fds.meshd_be4 : this.#fds.meshd_be6;
      for (const k of this.#bpf.mapKeys(be, STRUCTS.meshd_be_key.size)) {
        const key = decode(STRUCTS.meshd_be_key, k);
        const half = Math.floor(Number(key["slot"]) / MAX_BACKENDS);
        const index = Number(key["slot"]) % MAX_BACKENDS;
        const c = `${family}/${key["id"]}/${half}`;
        counts.set(c, Math.max(counts.get(c) ?? 0, index + 1));
      }
    }
    const used = new Set<number>();
    for (const family of [4, 6] as const) {
      const spec = family === 4 ? STRUCTS.meshd_svc4_key : STRUCTS.meshd_svc6_key;
      const fd = family === 4 ? this.#fds.meshd_svc4 : this.#fds.meshd_svc6;
      for (const key of this.#bpf.mapKeys(fd, spec.size)) {
        const buf = new Uint8Array(STRUCTS.meshd_svc.size);
        if (!this.#bpf.mapLookup(fd, key, buf)) continue;
        const v = decode(STRUCTS.meshd_svc, buf);
        const id = Number(v["id"]);
        used.add(id);
        this.#written.set(`${family}:${keyHex(key)}`, {
          family,
          key,
          id,
          half: Number(v["half"]),
          halves: [counts.get(`${family}/${id}/0`) ?? 0, counts.get(`${family}/${id}/1`) ?? 0],
          sig: "",
        });
      }
    }
    this.#nextId = Math.max(0, ...used) + 1;
    for (let id = 1; id < this.#nextId; id++) if (!used.has(id)) this.#freeIds.push(id);
  }

  #svcKey(e: ServiceAddress): Uint8Array<ArrayBuffer> {
    const proto = e.protocol === "udp" ? 17 : 6;
    return e.family === 4
      ? encode(STRUCTS.meshd_svc4_key, { addr: ipv4Number(e.address), port: e.port, proto })
      : encode(STRUCTS.meshd_svc6_key, { addr: ipv6Bytes(e.address), port: e.port, proto });
  }

  #beValue(family: 4 | 6, address: string, port: number): Uint8Array<ArrayBuffer> {
    return family === 4
      ? encode(STRUCTS.meshd_be4, { addr: ipv4Number(address), port })
      : encode(STRUCTS.meshd_be6, { addr: ipv6Bytes(address), port });
  }

  #beKey(id: number, half: number, index: number): Uint8Array<ArrayBuffer> {
    return encode(STRUCTS.meshd_be_key, { id, slot: half * MAX_BACKENDS + index });
  }

  /**
   * Makes the maps hold `entries` and nothing else. A changed service port gets its new
   * backends in the half of its array not in force, then one update of its service entry
   * switches to them, so a connect sees the old array or the new one, never a mix and never
   * an empty one. Entries that did not change are not written. Returns what it did.
   */
  apply(entries: readonly DatapathEntry[], version: number): { written: number; removed: number } {
    const want = new Map<string, { e: DatapathEntry; key: Uint8Array<ArrayBuffer> }>();
    for (const e of entries) {
      const key = this.#svcKey(e);
      const k = `${e.family}:${keyHex(key)}`;
      // Two services on one address and port cannot both be balanced; the first one stays.
      if (!want.has(k)) want.set(k, { e, key });
    }
    let written = 0;
    let removed = 0;
    for (const [k, { e, key }] of want) {
      const sig = `${e.redirect ? 1 : 0}|${
        e.backends.map((b) => `${b.address}/${b.port}`).join(",")
      }`;
      const cur = this.#written.get(k);
      if (cur && cur.sig === sig) continue;
      this.#write(k, e, key, sig, cur);
      written++;
    }
    for (const [k, w] of this.#written) {
      if (want.has(k)) continue;
      this.#remove(k, w);
      removed++;
    }
    this.#writeMeta(version);
    this.#applied = true;
    return { written, removed };
  }

  #write(
    k: string,
    e: DatapathEntry,
    key: Uint8Array<ArrayBuffer>,
    sig: string,
    cur: Written | undefined,
  ): void {
    const beFd = e.family === 4 ? this.#fds.meshd_be4 : this.#fds.meshd_be6;
    const svcFd = e.family === 4 ? this.#fds.meshd_svc4 : this.#fds.meshd_svc6;
    const id = cur?.id ?? (this.#freeIds.pop() ?? this.#nextId++);
    const half = cur ? 1 - cur.half : 0;
    const halves: [number, number] = cur ? [...cur.halves] : [0, 0];
    const n = Math.min(e.backends.length, MAX_BACKENDS);
    for (let i = 0; i < n; i++) {
      const b = e.backends[i]!;
      this.#bpf.mapUpdate(
        beFd,
        this.#beKey(id, half, i),
        this.#beValue(e.family, b.address, b.port),
      );
      this.#stats.writes++;
    }
    // The new array is whole; now the service switches to it.
    this.#bpf.mapUpdate(
      svcFd,
      key,
      encode(STRUCTS.meshd_svc, { id, half, count: n, flags: e.redirect ? SVC_REDIRECT : 0 }),
    );
    this.#stats.writes++;
    // Slots past the new end of this half were the array before last; nothing reads them.
    for (let i = n; i < halves[half]!; i++) {
      this.#bpf.mapDelete(beFd, this.#beKey(id, half, i));
      this.#stats.deletes++;
    }
    halves[half] = n;
    this.#written.set(k, { family: e.family, key, id, half, halves, sig });
  }

  #remove(k: string, w: Written): void {
    const beFd = w.family === 4 ? this.#fds.meshd_be4 : this.#fds.meshd_be6;
    const svcFd = w.family === 4 ? this.#fds.meshd_svc4 : this.#fds.meshd_svc6;
    // The service first: from then on no connect reads its backends.
    this.#bpf.mapDelete(svcFd, w.key);
    this.#stats.deletes++;
    for (const half of [0, 1]) {
      for (let i = 0; i < w.halves[half]!; i++) {
        this.#bpf.mapDelete(beFd, this.#beKey(w.id, half, i));
        this.#stats.deletes++;
      }
    }
    this.#written.delete(k);
    this.#freeIds.push(w.id);
  }

  /** What the service entry of an address holds, or null: for tests. */
  lookup(e: ServiceAddress): {
    count: number;
    redirect: boolean;
  } | null {
    const buf = new Uint8Array(STRUCTS.meshd_svc.size);
    const fd = e.family === 4 ? this.#fds.meshd_svc4 : this.#fds.meshd_svc6;
    if (!this.#bpf.mapLookup(fd, this.#svcKey(e), buf)) return null;
    const v = decode(STRUCTS.meshd_svc, buf);
    return { count: Number(v["count"]), redirect: (Number(v["flags"]) & SVC_REDIRECT) !== 0 };
  }

  /** Counts for status and metrics. */
  stats(): EbpfStats {
    let services4 = 0, services6 = 0, redirects = 0, backends = 0;
    for (const w of this.#written.values()) {
      if (w.family === 4) services4++;
      else services6++;
      if (w.sig.startsWith("1|")) redirects++;
      backends += w.halves[w.half]!;
    }
    return { services4, services6, redirects, backends, ...this.#stats };
  }

  /** Kernel memory of the maps: the sum of each map's fdinfo `memlock`. */
  mapBytes(): number {
    let bytes = 0;
    for (const name of MAPS) {
      try {
        const info = Deno.readTextFileSync(`/proc/self/fdinfo/${this.#fds[name]}`);
        bytes += Number(info.match(/^memlock:\s*(\d+)/m)?.[1] ?? 0);
      } catch { /* fdinfo unreadable: counted as 0 */ }
    }
    return bytes;
  }

  /**
   * Lets go of the programs and maps and leaves them pinned and attached: sockets keep being
   * balanced from the maps as they are until the next meshd takes them over.
   */
  close(): void {
    for (const l of this.#links) this.#bpf.closeLink(l);
    this.#links = [];
    // The map fds belong to the object: closing it closes them.
    this.#closeObject();
    this.#bpf.close();
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
