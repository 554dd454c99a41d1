import {
  type BpfLink,
  type BpfMap,
  type BpfObject,
  Libbpf,
  type MapShape,
} from "../../ffi/libbpf.ts";
import type { Logger } from "../observability/mod.ts";
import { decode, LAYOUT_VERSION, STRUCTS } from "./layout.ts";

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

/** The maps of `bpf/meshd_sock.bpf.c`, by what they hold. */
export const MAP_KEYS = ["svc4", "svc6", "be4", "be6", "rnat4", "rnat6", "meta"] as const;

/** One of {@linkcode MAP_KEYS}. */
export type MapKey = typeof MAP_KEYS[number];

/**
 * A map's name, in the object and as pinned: `meshd_<key>_v<layout>`. The layout is in every
 * name, so a meshd never opens a map of another layout by name (`bpf/meshd.h`).
 */
export function mapName(key: MapKey, layout: number = LAYOUT_VERSION): string {
  return `meshd_${key}_v${layout}`;
}

/** The names layouts 1 and 2 pinned their maps under, before the names carried the layout. */
export function legacyMapName(key: MapKey): string {
  return `meshd_${key}`;
}

/** The one layout pinned under {@linkcode legacyMapName} that meshd copies from: its own. */
const LEGACY_LAYOUT_COPIED = 2;

/** Whether `name` is one of meshd's pins: a link, or a map of any layout. */
function isMeshdPin(name: string): boolean {
  return /^(link_)?meshd_[a-z0-9_]+$/.test(name);
}

/**
 * Removes the pins meshd makes in `dir` (all of them, maps of every layout included, or the
 * links only); a link detaches once no process holds it any more. Other files are left alone.
 * Returns how many it removed.
 */
export function removePins(dir: string, which: "all" | "links" = "all"): number {
  let names: string[];
  try {
    names = [...Deno.readDirSync(dir)].map((e) => e.name);
  } catch {
    return 0; // no such directory: nothing of ours to remove
  }
  let removed = 0;
  for (const name of names.filter(isMeshdPin)) {
    if (which === "links" && !name.startsWith("link_")) continue;
    try {
      Deno.removeSync(`${dir}/${name}`);
      removed++;
    } catch { /* gone meanwhile, or bpffs not writable here */ }
  }
  return removed;
}

/** Options of {@linkcode loadPrograms}. */
export interface LoaderOptions {
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
}

/** What `meshd_meta` said in the maps taken over. */
export interface TakenOver {
  /** Where the maps came from: pins of this layout, or layout-2 pins without the suffix. */
  from: "pins" | "unversioned pins";
  version: number;
  expires: bigint;
}

/** The programs loaded and attached, and the maps they read. */
export interface LoadedPrograms {
  bpf: Libbpf;
  fds: Record<MapKey, number>;
  cgroupIno: bigint;
  /** What the maps held when they were taken over; null when they were made new. */
  takenOver: TakenOver | null;
  /** Lets go of links, object and libbpf, leaving everything pinned and attached. */
  release(): void;
}

/** Pinned maps found usable: open fds and what their meta said. */
interface Pinned {
  from: TakenOver["from"];
  fds: Record<MapKey, number>;
  version: number;
  expires: bigint;
}

/**
 * Loads the programs and attaches them to `o.cgroup`, taking over what an earlier meshd pinned
 * at `o.pinDir`:
 *
 * - maps pinned under this layout's names, whose shapes match the object's, are reused;
 * - layout-2 maps pinned under the names without a suffix are copied into new maps, then the
 *   links switch to the new programs, so no socket call goes unbalanced;
 * - any other map pin of meshd's (another layout: a newer meshd was rolled back) is removed
 *   unread and the maps start empty;
 * - links attached to this cgroup get the new programs in place; others are replaced.
 *
 * Throws a {@linkcode DatapathError} naming the step that failed; nothing this call made is
 * left attached then.
 */
export function loadPrograms(o: LoaderOptions): LoadedPrograms {
  const bpf = openLibbpf(o.libbpfPath, o.verbose);
  let step = "";
  const undo: (() => void)[] = [];
  try {
    step = `check the cgroup ${o.cgroup}`;
    const cgroupIno = cgroupInode(o.cgroup);
    step = `make the pin directory ${o.pinDir}`;
    Deno.mkdirSync(o.pinDir, { recursive: true });
    step = "open the BPF object";
    const obj = bpf.openObject(o.object);
    undo.push(() => bpf.closeObject(obj));
    const maps = {} as Record<MapKey, BpfMap>;
    for (const key of MAP_KEYS) maps[key] = bpf.map(obj, mapName(key));
    step = "read the pinned maps";
    const pinned = findPinned(bpf, o.pinDir, maps, o.logger);
    if (pinned?.from === "pins") {
      step = "reuse the pinned maps";
      reuseMaps(bpf, maps, pinned.fds);
    }
    step = "load the programs (the verifier runs here)";
    bpf.load(obj);
    const fds = {} as Record<MapKey, number>;
    for (const key of MAP_KEYS) fds[key] = bpf.mapFd(maps[key]);
    if (pinned?.from !== "pins") {
      step = "pin the maps";
      for (const key of MAP_KEYS) bpf.pinMap(maps[key], `${o.pinDir}/${mapName(key)}`);
      undo.push(() => removeMapPins(o.pinDir, (n) => n.endsWith(`_v${LAYOUT_VERSION}`)));
    }
    if (pinned?.from === "unversioned pins") {
      step = "copy the maps pinned without a layout suffix";
      for (const key of MAP_KEYS) copyEntries(bpf, pinned.fds[key], fds[key]);
    }
    const links = attachPrograms(bpf, obj, o, cgroupIno, (s) => step = s);
    undo.push(() => {
      for (const l of links) bpf.closeLink(l);
      // Links taken over keep balancing from the maps taken over; new ones go.
      if (pinned?.from !== "pins") removePins(o.pinDir, "links");
    });
    if (pinned?.from === "unversioned pins") {
      step = "copy the reverse entries made meanwhile";
      retireUnversioned(bpf, pinned.fds, fds, o);
    } else if (pinned) {
      closeAll(bpf, pinned.fds);
    }
    return {
      bpf,
      fds,
      cgroupIno,
      takenOver: pinned
        ? { from: pinned.from, version: pinned.version, expires: pinned.expires }
        : null,
      release: () => {
        for (const l of links) bpf.closeLink(l);
        // The map fds belong to the object: closing it closes them.
        bpf.closeObject(obj);
        bpf.close();
      },
    };
  } catch (e) {
    for (const u of undo.reverse()) {
      try {
        u();
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
export function verifyPrograms(libbpfPath: string, object: Uint8Array<ArrayBuffer>): void {
  const bpf = openLibbpf(libbpfPath);
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

function openLibbpf(path: string, verbose?: boolean): Libbpf {
  try {
    return Libbpf.open(path, { verbose });
  } catch (e) {
    throw new DatapathError(`cannot load libbpf: ${(e as Error).message}`, { cause: e });
  }
}

function cgroupInode(cgroup: string): bigint {
  const st = Deno.statSync(cgroup);
  if (!st.isDirectory) throw new Error(`${cgroup} is not a directory`);
  return BigInt(st.ino ?? 0);
}

/**
 * The pinned maps to take over, opened, or null; removes the map pins it will not use. Pins
 * without a suffix come first: a meshd of these names removes them when it copies them, so
 * when they are there, an older meshd ran after it and they are the ones in use.
 */
function findPinned(
  bpf: Libbpf,
  dir: string,
  maps: Record<MapKey, BpfMap>,
  logger: Logger,
): Pinned | null {
  const legacy = openPinned(bpf, dir, maps, legacyMapName);
  let found: Pinned | null = null;
  if ("fds" in legacy && legacy.layout === LEGACY_LAYOUT_COPIED) {
    found = { from: "unversioned pins", ...legacy };
  } else {
    if ("fds" in legacy) closeAll(bpf, legacy.fds);
    const ours = openPinned(bpf, dir, maps, (k) => mapName(k));
    if ("fds" in ours && ours.layout === LAYOUT_VERSION) {
      found = { from: "pins", ...ours };
    } else if ("fds" in ours) {
      closeAll(bpf, ours.fds);
      logger.warn("eBPF maps say they are of another layout; replacing them", {
        pinDir: dir,
        pinned: ours.layout,
        ours: LAYOUT_VERSION,
      });
    } else if (ours.problem !== "none pinned") {
      logger.warn("eBPF maps pinned here cannot be taken over; replacing them", {
        pinDir: dir,
        problem: ours.problem,
      });
    }
  }
  // Whatever else of meshd's is pinned (another layout's maps, say) is not read: it goes.
  const keep = new Set(
    found ? MAP_KEYS.map(found.from === "pins" ? (k) => mapName(k) : legacyMapName) : [],
  );
  const others = removeMapPins(dir, (n) => !keep.has(n));
  if (others.length > 0) {
    logger.info(
      "removed eBPF map pins not taken over (another layout, or older than the unversioned ones)",
      { pinDir: dir, pins: others },
    );
  }
  return found;
}

/**
 * Opens the maps pinned in `dir` under `nameOf`, checking each one's shape against the
 * object's before anything is read, then reads `meta`. A map of another shape is never read:
 * a lookup copies the kernel's value size into the buffer given.
 */
function openPinned(
  bpf: Libbpf,
  dir: string,
  maps: Record<MapKey, BpfMap>,
  nameOf: (k: MapKey) => string,
): { fds: Record<MapKey, number>; layout: number; version: number; expires: bigint } | {
  problem: string;
} {
  const fds = {} as Record<MapKey, number>;
  const fail = (problem: string) => {
    closeAll(bpf, fds);
    return { problem };
  };
  for (const key of MAP_KEYS) {
    const name = nameOf(key);
    const fd = bpf.objGet(`${dir}/${name}`);
    if (fd === null) {
      return fail(Object.keys(fds).length === 0 ? "none pinned" : `${name} is missing`);
    }
    fds[key] = fd;
    const want = bpf.mapShape(maps[key]);
    const got = bpf.mapInfo(fd);
    const diff = shapeDiff(want, got);
    if (diff) return fail(`${name} has ${diff}`);
  }
  const buf = new Uint8Array(STRUCTS.meshd_meta.size);
  if (!bpf.mapLookup(fds.meta, new Uint8Array(4), buf)) return fail(`${nameOf("meta")} is empty`);
  const meta = decode(STRUCTS.meshd_meta, buf);
  return {
    fds,
    layout: Number(meta["layout"]),
    version: Number(meta["version"]),
    expires: meta["expires"] as bigint,
  };
}

/**
 * Finishes taking over unversioned pins once the links run the new programs: sockets
 * connected through the old programs until then have reverse entries only in the old maps,
 * so those are copied too; then the old maps are let go and unpinned.
 */
function retireUnversioned(
  bpf: Libbpf,
  old: Record<MapKey, number>,
  fds: Record<MapKey, number>,
  o: LoaderOptions,
): void {
  copyEntries(bpf, old.rnat4, fds.rnat4, { missingOnly: true });
  copyEntries(bpf, old.rnat6, fds.rnat6, { missingOnly: true });
  closeAll(bpf, old);
  const removed = removeMapPins(o.pinDir, (n) => MAP_KEYS.some((k) => legacyMapName(k) === n));
  o.logger.info("eBPF maps pinned without a layout suffix copied into this layout's", {
    pinDir: o.pinDir,
    removed,
  });
}

/** How a pinned map's shape differs from the one wanted ("" when it does not). */
function shapeDiff(want: MapShape, got: MapShape): string {
  for (const k of ["type", "keySize", "valueSize", "maxEntries"] as const) {
    if (want[k] !== got[k]) return `${k} ${got[k]}, expected ${want[k]}`;
  }
  return "";
}

function reuseMaps(bpf: Libbpf, maps: Record<MapKey, BpfMap>, fds: Record<MapKey, number>): void {
  // reuse_fd keeps a copy of each fd; the caller closes the ones it opened.
  for (const key of MAP_KEYS) bpf.reuseMapFd(maps[key], fds[key]);
}

function closeAll(bpf: Libbpf, fds: Partial<Record<MapKey, number>>): void {
  for (const fd of Object.values(fds)) bpf.closeFd(fd);
}

/** Removes the map pins in `dir` whose names `which` picks (links stay); returns their names. */
function removeMapPins(dir: string, which: (name: string) => boolean): string[] {
  const removed: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    if (!isMeshdPin(e.name) || e.name.startsWith("link_") || !which(e.name)) continue;
    Deno.removeSync(`${dir}/${e.name}`);
    removed.push(e.name);
  }
  return removed;
}

/** Copies every entry of the map at `from` into the one at `to` (of the same shape). */
function copyEntries(
  bpf: Libbpf,
  from: number,
  to: number,
  o: { missingOnly?: boolean } = {},
): void {
  const { keySize, valueSize } = bpf.mapInfo(from);
  const value = new Uint8Array(valueSize);
  const existing = new Uint8Array(valueSize);
  for (const key of bpf.mapKeys(from, keySize)) {
    if (o.missingOnly && bpf.mapLookup(to, key, existing)) continue;
    // An LRU entry may be evicted between listing and reading it.
    if (bpf.mapLookup(from, key, value)) bpf.mapUpdate(to, key, value);
  }
}

/**
 * Attaches each program through a link pinned as `link_<program>`. A pinned link attached to
 * this cgroup gets the new program in place (the kernel swaps it in one step, so the hook is
 * never without one); a link attached elsewhere is removed first.
 */
function attachPrograms(
  bpf: Libbpf,
  obj: BpfObject,
  o: LoaderOptions,
  cgroupIno: bigint,
  setStep: (step: string) => void,
): BpfLink[] {
  setStep(`open the cgroup ${o.cgroup}`);
  const cgroupFd = bpf.openDir(o.cgroup);
  const links: BpfLink[] = [];
  try {
    for (const name of PROGRAMS) {
      const prog = bpf.program(obj, name);
      const path = `${o.pinDir}/link_${name}`;
      setStep(`attach ${name}`);
      const old = bpf.openLink(path);
      if (old && bpf.linkCgroupId(old) === cgroupIno) {
        bpf.updateLink(old, prog);
        links.push(old);
        continue;
      }
      if (old) {
        // The earlier meshd balanced another cgroup: its link goes, ours replaces it.
        bpf.closeLink(old);
        Deno.removeSync(path);
      }
      const link = bpf.attachCgroup(prog, cgroupFd);
      links.push(link);
      bpf.pinLink(link, path);
    }
  } catch (e) {
    for (const l of links) bpf.closeLink(l);
    throw e;
  } finally {
    bpf.closeFd(cgroupFd);
  }
  return links;
}
