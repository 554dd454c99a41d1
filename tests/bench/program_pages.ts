/**
 * Which pages of the `deno` executable a process holds resident, by ELF section and by the
 * large blobs inside `.rodata` (ICU data, V8 startup snapshots): `/proc/PID/maps` gives each
 * mapping of the file and its offset, `/proc/PID/pagemap` whether each page is present, and
 * the section headers place a file offset in a section. Not a test and not a timing: a
 * breakdown for issue 21's memory note (run as root: pagemap needs it).
 *
 *   deno run --allow-all tests/bench/program_pages.ts PID [PID ...]
 *   deno run --allow-all tests/bench/program_pages.ts --diff PID_A PID_B
 *   deno run --allow-all tests/bench/program_pages.ts --icu PID [PID ...]
 *
 * `--diff` prints, by region, the pages B holds and A does not, then the 1 MiB file windows
 * where B holds the most such pages. `--icu` splits the ICU data by item (`coll/root.res`,
 * `zoneinfo64.res`, ...) instead of the file by section.
 *
 * @module
 */

const PAGE = 4096;

/** One named byte range of the executable file. */
export interface FileRegion {
  name: string;
  /** File offset of the first byte. */
  start: number;
  /** File offset one past the last byte. */
  end: number;
}

function u16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function u64(b: Uint8Array, o: number): number {
  return u32(b, o) + u32(b, o + 4) * 2 ** 32;
}

function indexOf(hay: Uint8Array, needle: Uint8Array, from: number, to: number): number {
  const first = needle[0]!;
  for (let i = hay.indexOf(first, from); i >= 0 && i < to; i = hay.indexOf(first, i + 1)) {
    let j = 1;
    while (j < needle.length && hay[i + j] === needle[j]) j++;
    if (j === needle.length) return i;
  }
  return -1;
}

/**
 * The regions of an ELF64 executable: its sections with file contents, with `.rodata` split
 * around the ICU common data (header magic 0xda27, format "CmnD") and each V8 startup
 * snapshot blob (found by the V8 version string at offset 16; the blob runs to the next
 * region, so its end is an upper bound).
 */
export function fileRegions(path: string, v8Version: string): FileRegion[] {
  const b = Deno.readFileSync(path);
  const shoff = u64(b, 0x28);
  const shentsize = u16(b, 0x3a);
  const shnum = u16(b, 0x3c);
  const shstrndx = u16(b, 0x3e);
  const strOff = u64(b, shoff + shstrndx * shentsize + 0x18);
  const name = (o: number) => {
    let e = strOff + o;
    while (b[e] !== 0) e++;
    return new TextDecoder().decode(b.subarray(strOff + o, e));
  };
  const sections: FileRegion[] = [];
  for (let i = 1; i < shnum; i++) {
    const h = shoff + i * shentsize;
    const type = u32(b, h + 4);
    const flags = u64(b, h + 8);
    if (type === 8 /* NOBITS */ || (flags & 2) === 0 /* not ALLOC */) continue;
    const start = u64(b, h + 0x18);
    sections.push({ name: name(u32(b, h)), start, end: start + u64(b, h + 0x20) });
  }
  const rodata = sections.find((s) => s.name === ".rodata");
  if (!rodata) return sections;
  const blobs: FileRegion[] = [];
  // ICU's common data: uint16 header size, 0xda 0x27, then UDataInfo naming format "CmnD".
  const cmnd = new TextEncoder().encode("CmnD");
  for (let at = rodata.start; (at = indexOf(b, cmnd, at, rodata.end)) >= 0; at += 4) {
    const h = at - 12;
    if (b[h + 2] !== 0xda || b[h + 3] !== 0x27) continue;
    const toc = h + u16(b, h);
    const count = u32(b, toc);
    let last = 0;
    for (let i = 0; i < count; i++) last = Math.max(last, u32(b, toc + 8 + 8 * i));
    blobs.push({ name: ".rodata: ICU data", start: h, end: h + last });
    break;
  }
  const version = new TextEncoder().encode(`${v8Version}\0\0\0\0`);
  for (let at = rodata.start; (at = indexOf(b, version, at, rodata.end)) >= 0; at += 1) {
    const start = at - 16;
    const contexts = u32(b, start);
    if (contexts === 0 || contexts > 16) continue;
    blobs.push({ name: `.rodata: V8 snapshot, ${contexts} context(s)`, start, end: 0 });
  }
  blobs.sort((x, y) => x.start - y.start);
  const out: FileRegion[] = [];
  let cursor = rodata.start;
  for (let i = 0; i < blobs.length; i++) {
    const r = blobs[i]!;
    if (r.start > cursor) out.push({ name: ".rodata: other", start: cursor, end: r.start });
    const next = blobs[i + 1]?.start ?? rodata.end;
    const end = r.end === 0 ? next : Math.min(r.end, next);
    out.push({ ...r, end });
    cursor = end;
  }
  if (cursor < rodata.end) out.push({ name: ".rodata: other", start: cursor, end: rodata.end });
  return sections.flatMap((s) => s === rodata ? out : [s]);
}

/**
 * The items of the ICU common data that starts at file offset `start` of `path` (`coll/root.res`,
 * `zoneinfo64.res`, `uts46.nrm`, ...), each a region, from the package's table of contents.
 */
export function icuItems(path: string, start: number): FileRegion[] {
  const b = Deno.readFileSync(path);
  const toc = start + u16(b, start);
  const count = u32(b, toc);
  const items: FileRegion[] = [];
  for (let i = 0; i < count; i++) {
    const nameAt = toc + u32(b, toc + 4 + 8 * i);
    let e = nameAt;
    while (b[e] !== 0) e++;
    const name = new TextDecoder().decode(b.subarray(nameAt, e)).replace(/^icudt\d+l\//, "");
    items.push({ name: `ICU ${name}`, start: toc + u32(b, toc + 8 + 8 * i), end: 0 });
  }
  items.sort((x, y) => x.start - y.start);
  for (let i = 0; i < items.length; i++) {
    items[i]!.end = items[i + 1]?.start ?? items[i]!.start + 4096;
  }
  return items;
}

/** The file pages (offset / 4096) of `program` that process `pid` holds present. */
export function residentPages(pid: number, program: string): Set<number> {
  const pages = new Set<number>();
  const maps = Deno.readTextFileSync(`/proc/${pid}/maps`).split("\n");
  const pagemap = Deno.openSync(`/proc/${pid}/pagemap`, { read: true });
  try {
    for (const line of maps) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \S+\s+(.*)$/.exec(line);
      if (!m || m[4] !== program) continue;
      const start = parseInt(m[1]!, 16);
      const end = parseInt(m[2]!, 16);
      const offset = parseInt(m[3]!, 16);
      const n = (end - start) / PAGE;
      const buf = new Uint8Array(n * 8);
      pagemap.seekSync(BigInt(start / PAGE) * 8n, Deno.SeekMode.Start);
      let got = 0;
      while (got < buf.length) {
        const r = pagemap.readSync(buf.subarray(got));
        if (r === null || r === 0) break;
        got += r;
      }
      const view = new DataView(buf.buffer);
      for (let i = 0; i < got / 8; i++) {
        // Bit 63: present in RAM (file pages are never swapped, so bit 62 is not counted).
        if (view.getUint32(i * 8 + 4, true) & 0x80000000) pages.add(offset / PAGE + i);
      }
    }
  } finally {
    pagemap.close();
  }
  return pages;
}

/** KiB of `pages` in each region (and under "(outside sections)" for the rest). */
export function pagesByRegion(pages: Set<number>, regions: FileRegion[]): Map<string, number> {
  const out = new Map<string, number>(regions.map((r) => [r.name, 0]));
  for (const p of pages) {
    const lo = p * PAGE;
    const hi = lo + PAGE;
    let placed = false;
    for (const r of regions) {
      // A page shared by two sections goes to the one holding its first byte in the page.
      if (r.start < hi && r.end > lo && (r.start <= lo || !placed)) {
        out.set(r.name, out.get(r.name)! + 4);
        placed = true;
        break;
      }
    }
    if (!placed) out.set("(outside sections)", (out.get("(outside sections)") ?? 0) + 4);
  }
  return out;
}

/** Resident MiB of the `deno` file by what the pages hold; see {@linkcode programParts}. */
export interface ProgramParts {
  /** `.text` and the other executable sections: Deno's, V8's and the libraries' code. */
  code: number;
  /** The V8 startup snapshots in `.rodata`. */
  snapshots: number;
  /** ICU's data in `.rodata`: collation, time zones, case mapping and so on. */
  icu: number;
  /**
   * What the dynamic loader reads or writes at start: `.rela.dyn` and the relocated
   * `.data.rel.ro`, `.got`, `.data`.
   */
  relocations: number;
  /** The rest of `.rodata` and the other read-only sections. */
  otherReadOnly: number;
}

/** {@linkcode ProgramParts} of process `pid`, whose executable is `program`. */
export function programParts(pid: number, program: string): ProgramParts {
  const parts: ProgramParts = { code: 0, snapshots: 0, icu: 0, relocations: 0, otherReadOnly: 0 };
  const byRegion = pagesByRegion(
    residentPages(pid, program),
    fileRegions(program, Deno.version.v8),
  );
  for (const [name, kib] of byRegion) {
    const part: keyof ProgramParts = name.includes("V8 snapshot")
      ? "snapshots"
      : name.includes("ICU")
      ? "icu"
      : [".text", ".init", ".fini", ".plt", "__lcxx_override", "malloc_hook"].includes(name)
      ? "code"
      : [".rela.dyn", ".rela.plt", ".data.rel.ro", ".got", ".got.plt", ".data", ".tdata"]
          .includes(name) || name.endsWith("_array") || name === ".dynamic"
      ? "relocations"
      : "otherReadOnly";
    parts[part] += kib / 1024;
  }
  return parts;
}

/** The real path of the `deno` that process `pid` runs. */
export function programOf(pid: number): string {
  return Deno.readLinkSync(`/proc/${pid}/exe`);
}

function mib(kib: number): string {
  return (kib / 1024).toFixed(1).padStart(8);
}

if (import.meta.main) {
  const diff = Deno.args[0] === "--diff";
  const icu = Deno.args[0] === "--icu";
  const pids = Deno.args.filter((a) => !a.startsWith("--")).map(Number);
  if (pids.length === 0 || pids.some((p) => !Number.isInteger(p)) || (diff && pids.length !== 2)) {
    console.error("usage: program_pages.ts [--icu] PID [PID ...] | --diff PID_A PID_B");
    Deno.exit(2);
  }
  const program = programOf(pids[0]!);
  let regions = fileRegions(program, Deno.version.v8);
  if (icu) {
    const data = regions.find((r) => r.name.includes("ICU"));
    regions = data ? icuItems(program, data.start) : [];
  }
  const sets = pids.map((p) => residentPages(p, program));
  if (diff) sets.push(new Set([...sets[1]!].filter((p) => !sets[0]!.has(p))));
  const cols = sets.map((s) => pagesByRegion(s, regions));
  const head = diff ? ["A", "B", "B not A"] : pids.map(String);
  console.log(`resident MiB of ${program}`);
  console.log(`${"region".padEnd(40)}${head.map((h) => h.padStart(8)).join("")}`);
  for (const name of cols[0]!.keys()) {
    if (cols.every((c) => (c.get(name) ?? 0) === 0)) continue;
    console.log(`${name.padEnd(40)}${cols.map((c) => mib(c.get(name) ?? 0)).join("")}`);
  }
  const total = (s: Set<number>) => s.size * 4;
  console.log(`${"total".padEnd(40)}${sets.map((s) => mib(total(s))).join("")}`);
  if (diff) {
    const windows = new Map<number, number>();
    for (const p of sets[2]!) {
      const w = Math.floor(p * PAGE / 2 ** 20);
      windows.set(w, (windows.get(w) ?? 0) + 4);
    }
    console.log("\n1 MiB windows of the file with the most pages B holds and A does not");
    for (const [w, kib] of [...windows].sort((x, y) => y[1] - x[1]).slice(0, 20)) {
      const at = w * 2 ** 20;
      const r = regions.find((x) => x.start <= at + 2 ** 19 && x.end > at)?.name ?? "?";
      console.log(`  0x${at.toString(16).padStart(8, "0")}  ${String(kib).padStart(5)} KiB  ${r}`);
    }
  }
}
