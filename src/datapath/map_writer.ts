import type { DatapathMap, WrittenMaps } from "./datapath_map.ts";
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

/** What a service entry is keyed by. */
export type ServiceAddress = Pick<DatapathEntry, "family" | "address" | "port" | "protocol">;

/** Counts of what the maps hold, for `/api/status` and `/metrics`. */
export interface MapCounts {
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

/** Options of {@linkcode MapWriter}. */
export interface MapWriterOptions {
  /** `CLOCK_BOOTTIME` in ns, the clock the hooks compare `meshd_meta.expires` with. */
  now: () => bigint;
  /** Inode number of the cgroup the hooks are attached to, kept in `meshd_meta`. */
  cgroupIno: bigint;
  /** How far each write and {@linkcode MapWriter.renew} moves the deadline ahead. */
  graceMs: number;
}

/**
 * What meshd knows of one service port's entry. `slots` counts, for each half, the backend
 * slots that may be in the map: it only shrinks once a delete has succeeded, so a write that
 * failed half-way leaves nothing that a later write or removal does not clean up.
 */
interface Written {
  family: 4 | 6;
  key: Uint8Array<ArrayBuffer>;
  id: number;
  /** The half in force; meaningless while `inMap` is false. */
  half: number;
  slots: [number, number];
  /** Whether the service entry is in the map (false after a failed first write). */
  inMap: boolean;
  redirect: boolean;
  /** The backends and flags, to skip an entry that did not change ("" when unknown). */
  sig: string;
}

function keyHex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

const META_KEY = new Uint8Array(4);

/**
 * Keeps the maps the hooks read equal to a list of {@linkcode DatapathEntry}, through the
 * small {@linkcode DatapathMap} interface: it diffs against what it wrote and writes only the
 * change. A changed service port gets its new backends in the half of its array not in force,
 * then one update of its service entry switches to them, so a connect sees the old array or
 * the new one, never a mix and never an empty one.
 *
 * @example
 * ```ts
 * const writer = new MapWriter(maps, { now, cgroupIno, graceMs: 600_000 });
 * writer.apply(entries, config.version);
 * ```
 */
export class MapWriter {
  #maps: WrittenMaps;
  #o: MapWriterOptions;
  #graceNs: bigint;
  #written = new Map<string, Written>();
  #freeIds: number[] = [];
  #nextId = 1;
  #expires = 0n;
  #applied = false;
  #counts = { writes: 0, deletes: 0, version: 0 };

  constructor(maps: WrittenMaps, o: MapWriterOptions) {
    this.#maps = maps;
    this.#o = o;
    this.#graceNs = BigInt(Math.round(o.graceMs)) * 1_000_000n;
  }

  /**
   * Rebuilds what was written from maps an earlier meshd filled, so the next apply is a diff,
   * and deletes backend slots no service entry refers to (a write cut off half-way).
   */
  readBack(): void {
    const used = new Set<number>();
    for (const family of [4, 6] as const) {
      const slots = this.#readSlots(family);
      const svc = this.#svcMap(family);
      for (const key of svc.keys()) {
        const buf = svc.lookup(key);
        if (!buf) continue;
        const v = decode(STRUCTS.meshd_svc, buf);
        const id = Number(v["id"]);
        used.add(id);
        const found = slots.get(id) ?? [0, 0];
        slots.delete(id);
        this.#written.set(`${family}:${keyHex(key)}`, {
          family,
          key,
          id,
          half: Number(v["half"]),
          slots: found,
          inMap: true,
          redirect: (Number(v["flags"]) & SVC_REDIRECT) !== 0,
          sig: "",
        });
      }
      for (const [id, [a, b]] of slots) {
        for (let i = 0; i < a; i++) this.#delete(this.#beMap(family), beKey(id, 0, i));
        for (let i = 0; i < b; i++) this.#delete(this.#beMap(family), beKey(id, 1, i));
      }
    }
    this.#nextId = Math.max(0, ...used) + 1;
    for (let id = 1; id < this.#nextId; id++) if (!used.has(id)) this.#freeIds.push(id);
  }

  /** For each id in a family's backend map, one past the highest slot of each half. */
  #readSlots(family: 4 | 6): Map<number, [number, number]> {
    const out = new Map<number, [number, number]>();
    for (const k of this.#beMap(family).keys()) {
      const key = decode(STRUCTS.meshd_be_key, k);
      const slot = Number(key["slot"]);
      const half = slot >= MAX_BACKENDS ? 1 : 0;
      const id = Number(key["id"]);
      const s = out.get(id) ?? [0, 0];
      s[half] = Math.max(s[half], (slot % MAX_BACKENDS) + 1);
      out.set(id, s);
    }
    return out;
  }

  /**
   * Writes `meshd_meta`: this layout, `version`, the cgroup, and a deadline (default a grace
   * period from now; maps taken over keep theirs until the first apply).
   */
  writeMeta(version: number, expires: bigint = this.#o.now() + this.#graceNs): void {
    this.#maps.meta.update(
      META_KEY,
      encode(STRUCTS.meshd_meta, {
        layout: LAYOUT_VERSION,
        version: BigInt(version),
        cgroup: this.#o.cgroupIno,
        expires,
      }),
    );
    this.#counts.version = version;
    this.#expires = expires;
  }

  /**
   * Moves the maps' deadline a grace period ahead; nothing before this writer's first apply,
   * as maps taken over may hold an old config.
   */
  renew(): void {
    if (this.#applied) this.writeMeta(this.#counts.version);
  }

  /** Milliseconds until the hooks stop balancing unless renewed. */
  expiresInMs(): number {
    return Math.max(0, Number((this.#expires - this.#o.now()) / 1_000_000n));
  }

  /**
   * Makes the maps hold `entries` and nothing else; entries that did not change are not
   * written. Throws the map's error when a write fails: what was written stays consistent
   * (each service entry points at a whole array) and the next apply finishes the job.
   */
  apply(entries: readonly DatapathEntry[], version: number): { written: number; removed: number } {
    const want = new Map<string, { e: DatapathEntry; key: Uint8Array<ArrayBuffer> }>();
    for (const e of entries) {
      const key = svcKey(e);
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
      if (cur && cur.inMap && cur.sig === sig) continue;
      this.#write(k, e, key, sig, cur);
      written++;
    }
    for (const [k, w] of this.#written) {
      if (want.has(k)) continue;
      this.#remove(k, w);
      removed++;
    }
    this.writeMeta(version);
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
    const be = this.#beMap(e.family);
    const id = cur?.id ?? (this.#freeIds.pop() ?? this.#nextId++);
    // The half not in force; a service not in the map yet has none in force.
    const half = cur?.inMap ? 1 - cur.half : 0;
    const n = Math.min(e.backends.length, MAX_BACKENDS);
    // Recorded before the first write, so a failure part-way leaves slots meshd knows about.
    const w: Written = cur ?? {
      family: e.family,
      key,
      id,
      half: 0,
      slots: [0, 0],
      inMap: false,
      redirect: e.redirect,
      sig: "",
    };
    w.sig = "";
    w.slots[half] = Math.max(w.slots[half]!, n);
    this.#written.set(k, w);
    for (let i = 0; i < n; i++) {
      const b = e.backends[i]!;
      be.update(beKey(id, half, i), beValue(e.family, b.address, b.port));
      this.#counts.writes++;
    }
    // The new array is whole; now the service switches to it.
    this.#svcMap(e.family).update(
      key,
      encode(STRUCTS.meshd_svc, { id, half, count: n, flags: e.redirect ? SVC_REDIRECT : 0 }),
    );
    this.#counts.writes++;
    Object.assign(w, { half, inMap: true, redirect: e.redirect, sig });
    // Slots past the new end of this half were the array before last; nothing reads them.
    this.#trim(w, half, n);
  }

  /** Deletes the slots of `w`'s `half` from `keep` up, from the top, counting as it goes. */
  #trim(w: Written, half: number, keep: number): void {
    const be = this.#beMap(w.family);
    while (w.slots[half]! > keep) {
      this.#delete(be, beKey(w.id, half, w.slots[half]! - 1));
      w.slots[half]!--;
    }
  }

  #remove(k: string, w: Written): void {
    // The service first: from then on no connect reads its backends.
    if (w.inMap) {
      this.#delete(this.#svcMap(w.family), w.key);
      w.inMap = false;
    }
    this.#trim(w, 0, 0);
    this.#trim(w, 1, 0);
    this.#written.delete(k);
    this.#freeIds.push(w.id);
  }

  #delete(map: DatapathMap, key: Uint8Array<ArrayBuffer>): void {
    map.delete(key);
    this.#counts.deletes++;
  }

  #svcMap(family: 4 | 6): DatapathMap {
    return family === 4 ? this.#maps.svc4 : this.#maps.svc6;
  }

  #beMap(family: 4 | 6): DatapathMap {
    return family === 4 ? this.#maps.be4 : this.#maps.be6;
  }

  /** What the service entry of an address holds, or null: for tests. */
  lookup(e: ServiceAddress): { count: number; redirect: boolean } | null {
    const buf = this.#svcMap(e.family).lookup(svcKey(e));
    if (!buf) return null;
    const v = decode(STRUCTS.meshd_svc, buf);
    return { count: Number(v["count"]), redirect: (Number(v["flags"]) & SVC_REDIRECT) !== 0 };
  }

  /** What the maps hold, and what was written and deleted since start. */
  counts(): MapCounts {
    let services4 = 0, services6 = 0, redirects = 0, backends = 0;
    for (const w of this.#written.values()) {
      if (!w.inMap) continue;
      if (w.family === 4) services4++;
      else services6++;
      if (w.redirect) redirects++;
      backends += w.slots[w.half]!;
    }
    return { services4, services6, redirects, backends, ...this.#counts };
  }
}

function svcKey(e: ServiceAddress): Uint8Array<ArrayBuffer> {
  const proto = e.protocol === "udp" ? 17 : 6;
  return e.family === 4
    ? encode(STRUCTS.meshd_svc4_key, { addr: ipv4Number(e.address), port: e.port, proto })
    : encode(STRUCTS.meshd_svc6_key, { addr: ipv6Bytes(e.address), port: e.port, proto });
}

function beValue(family: 4 | 6, address: string, port: number): Uint8Array<ArrayBuffer> {
  return family === 4
    ? encode(STRUCTS.meshd_be4, { addr: ipv4Number(address), port })
    : encode(STRUCTS.meshd_be6, { addr: ipv6Bytes(address), port });
}

function beKey(id: number, half: number, index: number): Uint8Array<ArrayBuffer> {
  return encode(STRUCTS.meshd_be_key, { id, slot: half * MAX_BACKENDS + index });
}
