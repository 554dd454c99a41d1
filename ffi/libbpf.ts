/**
 * `Deno.dlopen` bindings to libbpf.so.1 and the few libc calls around it, and nothing else:
 * open and load an object from memory, find its programs and maps, attach a program to a
 * cgroup, pin and take over maps and links, and update, look up, delete and walk map entries.
 * Every failure is a {@linkcode BpfCallError} naming the call and the errno text.
 *
 * libbpf 1.x reports errors as a negative errno from calls that return an int, and as NULL
 * with errno set from calls that return a pointer; errno is read right after such a call,
 * before any other JavaScript runs.
 *
 * @module
 */

/** A libbpf or libc call that failed. */
export class BpfCallError extends Error {
  /** The positive errno value. */
  readonly errno: number;
  constructor(call: string, errno: number, text: string) {
    super(`${call} failed: ${text} (errno ${errno})`);
    this.name = "BpfCallError";
    this.errno = errno;
  }
}

const LIBBPF_SYMBOLS = {
  bpf_object__open_mem: { parameters: ["buffer", "usize", "pointer"], result: "pointer" },
  bpf_object__load: { parameters: ["pointer"], result: "i32" },
  bpf_object__close: { parameters: ["pointer"], result: "void" },
  bpf_object__find_program_by_name: { parameters: ["pointer", "buffer"], result: "pointer" },
  bpf_object__find_map_by_name: { parameters: ["pointer", "buffer"], result: "pointer" },
  bpf_program__attach_cgroup: { parameters: ["pointer", "i32"], result: "pointer" },
  bpf_program__fd: { parameters: ["pointer"], result: "i32" },
  bpf_prog_attach: { parameters: ["i32", "i32", "u32", "u32"], result: "i32" },
  bpf_prog_detach2: { parameters: ["i32", "i32", "u32"], result: "i32" },
  libbpf_num_possible_cpus: { parameters: [], result: "i32" },
  bpf_map__fd: { parameters: ["pointer"], result: "i32" },
  bpf_map__reuse_fd: { parameters: ["pointer", "i32"], result: "i32" },
  bpf_map__pin: { parameters: ["pointer", "buffer"], result: "i32" },
  bpf_link__pin: { parameters: ["pointer", "buffer"], result: "i32" },
  bpf_link__open: { parameters: ["buffer"], result: "pointer" },
  bpf_link__update_program: { parameters: ["pointer", "pointer"], result: "i32" },
  bpf_link__destroy: { parameters: ["pointer"], result: "i32" },
  bpf_obj_get: { parameters: ["buffer"], result: "i32" },
  bpf_obj_get_info_by_fd: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  bpf_map__type: { parameters: ["pointer"], result: "i32" },
  bpf_map__key_size: { parameters: ["pointer"], result: "u32" },
  bpf_map__value_size: { parameters: ["pointer"], result: "u32" },
  bpf_map__max_entries: { parameters: ["pointer"], result: "u32" },
  bpf_link__fd: { parameters: ["pointer"], result: "i32" },
  bpf_map_update_elem: { parameters: ["i32", "buffer", "buffer", "u64"], result: "i32" },
  bpf_map_lookup_elem: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  bpf_map_delete_elem: { parameters: ["i32", "buffer"], result: "i32" },
  bpf_map_get_next_key: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  libbpf_set_print: { parameters: ["pointer"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

const LIBC_SYMBOLS = {
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The clock `bpf_ktime_get_boot_ns()` reads: monotonic, and counting suspend. */
const CLOCK_BOOTTIME = 7;

const O_RDONLY = 0;
const O_DIRECTORY = 0o200000;
const O_CLOEXEC = 0o2000000;

/** The attach type (`enum bpf_attach_type`) of an sk_msg program on a sockmap or sockhash. */
export const BPF_SK_MSG_VERDICT = 7;

/** The flag of {@linkcode Libbpf.mapUpdate}: create the entry or replace it. */
export const BPF_ANY = 0n;

const ENOENT = 2;

const cstr = (s: string): Uint8Array<ArrayBuffer> => new TextEncoder().encode(`${s}\0`);

/** The shape of a map: what must match before meshd reads or reuses a pinned one. */
export interface MapShape {
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

/** Opaque libbpf handles. */
export type BpfObject = { readonly object: Deno.PointerObject };
/** A program inside a loaded object. */
export type BpfProgram = { readonly program: Deno.PointerObject; readonly name: string };
/** A map inside an object. */
export type BpfMap = { readonly map: Deno.PointerObject; readonly name: string };
/** An attachment (a bpf_link). */
export type BpfLink = { readonly link: Deno.PointerObject };

/**
 * libbpf, loaded from one shared object. Not thread-safe; meshd calls it from its one thread.
 *
 * @example
 * ```ts
 * const bpf = Libbpf.open("/usr/lib/x86_64-linux-gnu/libbpf.so.1");
 * const obj = bpf.openObject(await Deno.readFile("meshd_sock.bpf.o"));
 * bpf.load(obj);
 * ```
 */
export class Libbpf {
  readonly path: string;
  #lib: Deno.DynamicLibrary<typeof LIBBPF_SYMBOLS>;
  #libc: Deno.DynamicLibrary<typeof LIBC_SYMBOLS>;

  private constructor(
    path: string,
    lib: Deno.DynamicLibrary<typeof LIBBPF_SYMBOLS>,
    libc: Deno.DynamicLibrary<typeof LIBC_SYMBOLS>,
  ) {
    this.path = path;
    this.#lib = lib;
    this.#libc = libc;
  }

  /**
   * Loads libbpf from `path`. Throws a {@linkcode BpfCallError} naming `dlopen` when it cannot
   * be loaded or lacks a symbol meshd uses (libbpf older than 1.0).
   */
  static open(path: string, o: { verbose?: boolean } = {}): Libbpf {
    let libc: Deno.DynamicLibrary<typeof LIBC_SYMBOLS>;
    try {
      libc = Deno.dlopen("libc.so.6", LIBC_SYMBOLS);
    } catch (e) {
      throw new BpfCallError(`dlopen(libc.so.6)`, 0, (e as Error).message);
    }
    let lib: Deno.DynamicLibrary<typeof LIBBPF_SYMBOLS>;
    try {
      lib = Deno.dlopen(path, LIBBPF_SYMBOLS);
    } catch (e) {
      libc.close();
      throw new BpfCallError(`dlopen(${path})`, 0, (e as Error).message);
    }
    // libbpf prints its progress and the verifier's log to stderr; meshd's own errors say
    // what failed, so that output is kept for --log-level=debug.
    if (!o.verbose) lib.symbols.libbpf_set_print(null);
    return new Libbpf(path, lib, libc);
  }

  /** Closes the shared objects; handles from this instance are not used after. */
  close(): void {
    this.#lib.close();
    this.#libc.close();
  }

  #errno(): number {
    const p = this.#libc.symbols.__errno_location();
    return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
  }

  #text(errno: number): string {
    const p = this.#libc.symbols.strerror(errno);
    return p ? Deno.UnsafePointerView.getCString(p) : `errno ${errno}`;
  }

  /** Throws for a negative int result (libbpf returns -errno). */
  #check(call: string, rc: number): number {
    if (rc < 0) throw new BpfCallError(call, -rc, this.#text(-rc));
    return rc;
  }

  /** Throws for a NULL pointer result, with errno. */
  #ptr(call: string, p: Deno.PointerValue): Deno.PointerObject {
    if (p === null) {
      const errno = this.#errno();
      throw new BpfCallError(call, errno, this.#text(errno));
    }
    return p;
  }

  /** Opens a BPF object from its ELF bytes (not loaded into the kernel yet). */
  openObject(elf: Uint8Array<ArrayBuffer>): BpfObject {
    return {
      object: this.#ptr(
        "bpf_object__open_mem",
        this.#lib.symbols.bpf_object__open_mem(elf, BigInt(elf.byteLength), null),
      ),
    };
  }

  /** Loads the object's maps and programs into the kernel (the verifier runs here). */
  load(obj: BpfObject): void {
    this.#check("bpf_object__load", this.#lib.symbols.bpf_object__load(obj.object));
  }

  /** Frees the object; programs stay in the kernel while a pinned link holds them. */
  closeObject(obj: BpfObject): void {
    this.#lib.symbols.bpf_object__close(obj.object);
  }

  /** A program by its function name. */
  program(obj: BpfObject, name: string): BpfProgram {
    return {
      name,
      program: this.#ptr(
        `bpf_object__find_program_by_name(${name})`,
        this.#lib.symbols.bpf_object__find_program_by_name(obj.object, cstr(name)),
      ),
    };
  }

  /** A map by its name. */
  map(obj: BpfObject, name: string): BpfMap {
    return {
      name,
      map: this.#ptr(
        `bpf_object__find_map_by_name(${name})`,
        this.#lib.symbols.bpf_object__find_map_by_name(obj.object, cstr(name)),
      ),
    };
  }

  /** The shape the object declares for a map (before load). */
  mapShape(m: BpfMap): MapShape {
    const s = this.#lib.symbols;
    return {
      type: s.bpf_map__type(m.map),
      keySize: s.bpf_map__key_size(m.map),
      valueSize: s.bpf_map__value_size(m.map),
      maxEntries: s.bpf_map__max_entries(m.map),
    };
  }

  /** The shape and name of the map open at `fd`, as the kernel has it. */
  mapInfo(fd: number): MapShape & { name: string } {
    // struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags (u32 each),
    // then name[16]; 88 bytes in all, the kernel fills what fits.
    const info = new Uint8Array(88);
    const len = new Uint8Array(new Uint32Array([info.byteLength]).buffer);
    this.#check("bpf_obj_get_info_by_fd", this.#lib.symbols.bpf_obj_get_info_by_fd(fd, info, len));
    const v = new DataView(info.buffer);
    const name = new TextDecoder().decode(info.subarray(24, 40)).replace(/\0.*$/s, "");
    return {
      type: v.getUint32(0, true),
      keySize: v.getUint32(8, true),
      valueSize: v.getUint32(12, true),
      maxEntries: v.getUint32(16, true),
      name,
    };
  }

  /** The id of the cgroup a cgroup link is attached to (its inode number on cgroup v2). */
  linkCgroupId(l: BpfLink): bigint {
    const fd = this.#check("bpf_link__fd", this.#lib.symbols.bpf_link__fd(l.link));
    // struct bpf_link_info: type, id, prog_id (u32 each), then the union at 8-byte offset 16,
    // whose cgroup member starts with the u64 cgroup_id.
    const info = new Uint8Array(64);
    const len = new Uint8Array(new Uint32Array([info.byteLength]).buffer);
    this.#check("bpf_obj_get_info_by_fd", this.#lib.symbols.bpf_obj_get_info_by_fd(fd, info, len));
    return new DataView(info.buffer).getBigUint64(16, true);
  }

  /** The map's file descriptor (after load, or after {@linkcode reuseMapFd}). */
  mapFd(m: BpfMap): number {
    return this.#check(`bpf_map__fd(${m.name})`, this.#lib.symbols.bpf_map__fd(m.map));
  }

  /** Makes the object use an existing map (a pinned one) instead of creating its own. */
  reuseMapFd(m: BpfMap, fd: number): void {
    this.#check(`bpf_map__reuse_fd(${m.name})`, this.#lib.symbols.bpf_map__reuse_fd(m.map, fd));
  }

  /** Pins the map at `path` in bpffs. */
  pinMap(m: BpfMap, path: string): void {
    this.#check(
      `bpf_map__pin(${m.name}, ${path})`,
      this.#lib.symbols.bpf_map__pin(m.map, cstr(path)),
    );
  }

  /** Attaches a loaded program to the cgroup open as `cgroupFd`. */
  attachCgroup(p: BpfProgram, cgroupFd: number): BpfLink {
    return {
      link: this.#ptr(
        `bpf_program__attach_cgroup(${p.name})`,
        this.#lib.symbols.bpf_program__attach_cgroup(p.program, cgroupFd),
      ),
    };
  }

  /** A loaded program's file descriptor (owned by the object). */
  programFd(p: BpfProgram): number {
    return this.#check(`bpf_program__fd(${p.name})`, this.#lib.symbols.bpf_program__fd(p.program));
  }

  /**
   * Attaches a program to a target that takes no link, such as an sk_msg program to a
   * sockhash (`type` {@linkcode BPF_SK_MSG_VERDICT}). It stays until
   * {@linkcode progDetach} or until the target is freed.
   */
  progAttach(p: BpfProgram, targetFd: number, type: number): void {
    this.#check(
      `bpf_prog_attach(${p.name})`,
      this.#lib.symbols.bpf_prog_attach(this.programFd(p), targetFd, type, 0),
    );
  }

  /** Undoes {@linkcode progAttach}. */
  progDetach(p: BpfProgram, targetFd: number, type: number): void {
    this.#check(
      `bpf_prog_detach2(${p.name})`,
      this.#lib.symbols.bpf_prog_detach2(this.programFd(p), targetFd, type),
    );
  }

  /** How many CPUs the kernel may bring up: the value count of a per-CPU map entry. */
  possibleCpus(): number {
    return this.#check("libbpf_num_possible_cpus", this.#lib.symbols.libbpf_num_possible_cpus());
  }

  /** Pins the link at `path`, so the attachment outlives this process. */
  pinLink(l: BpfLink, path: string): void {
    this.#check(`bpf_link__pin(${path})`, this.#lib.symbols.bpf_link__pin(l.link, cstr(path)));
  }

  /** Opens a pinned link, or null when nothing is pinned at `path`. */
  openLink(path: string): BpfLink | null {
    const p = this.#lib.symbols.bpf_link__open(cstr(path));
    if (p === null) {
      const errno = this.#errno();
      if (errno === ENOENT) return null;
      throw new BpfCallError(`bpf_link__open(${path})`, errno, this.#text(errno));
    }
    return { link: p };
  }

  /** Swaps the program behind a link in one step: the hook is never without a program. */
  updateLink(l: BpfLink, p: BpfProgram): void {
    this.#check(
      `bpf_link__update_program(${p.name})`,
      this.#lib.symbols.bpf_link__update_program(l.link, p.program),
    );
  }

  /** Closes this process's handle to the link; a pinned link stays attached. */
  closeLink(l: BpfLink): void {
    this.#lib.symbols.bpf_link__destroy(l.link);
  }

  /** Opens the object pinned at `path`, or returns null when nothing is pinned there. */
  objGet(path: string): number | null {
    const rc = this.#lib.symbols.bpf_obj_get(cstr(path));
    if (rc === -ENOENT) return null;
    return this.#check(`bpf_obj_get(${path})`, rc);
  }

  /** Writes one map entry. */
  mapUpdate(
    fd: number,
    key: Uint8Array<ArrayBuffer>,
    value: Uint8Array<ArrayBuffer>,
    flags = BPF_ANY,
  ): void {
    this.#check(
      "bpf_map_update_elem",
      this.#lib.symbols.bpf_map_update_elem(fd, key, value, flags),
    );
  }

  /** Reads one entry into `value`; false when the key is not there. */
  mapLookup(fd: number, key: Uint8Array<ArrayBuffer>, value: Uint8Array<ArrayBuffer>): boolean {
    const rc = this.#lib.symbols.bpf_map_lookup_elem(fd, key, value);
    if (rc === -ENOENT) return false;
    this.#check("bpf_map_lookup_elem", rc);
    return true;
  }

  /** Deletes one entry; false when it was not there. */
  mapDelete(fd: number, key: Uint8Array<ArrayBuffer>): boolean {
    const rc = this.#lib.symbols.bpf_map_delete_elem(fd, key);
    if (rc === -ENOENT) return false;
    this.#check("bpf_map_delete_elem", rc);
    return true;
  }

  /** Every key of a hash map, `keySize` bytes each. */
  mapKeys(fd: number, keySize: number): Uint8Array<ArrayBuffer>[] {
    const keys: Uint8Array<ArrayBuffer>[] = [];
    let prev: Uint8Array<ArrayBuffer> | null = null;
    for (;;) {
      const next = new Uint8Array(keySize);
      // A NULL previous key asks for the first one.
      const rc = this.#lib.symbols.bpf_map_get_next_key(fd, prev, next);
      if (rc === -ENOENT) return keys;
      this.#check("bpf_map_get_next_key", rc);
      keys.push(next);
      prev = next;
    }
  }

  /** Opens a directory (a cgroup) for its file descriptor. */
  openDir(path: string): number {
    const fd = this.#libc.symbols.open(cstr(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      const errno = this.#errno();
      throw new BpfCallError(`open(${path})`, errno, this.#text(errno));
    }
    return fd;
  }

  /** CLOCK_BOOTTIME now, in ns: the clock BPF programs read with bpf_ktime_get_boot_ns(). */
  bootTimeNs(): bigint {
    const ts = new Uint8Array(16); // struct timespec: tv_sec, tv_nsec (64-bit each)
    if (this.#libc.symbols.clock_gettime(CLOCK_BOOTTIME, ts) !== 0) {
      const errno = this.#errno();
      throw new BpfCallError("clock_gettime(CLOCK_BOOTTIME)", errno, this.#text(errno));
    }
    const v = new DataView(ts.buffer);
    return v.getBigInt64(0, true) * 1_000_000_000n + v.getBigInt64(8, true);
  }

  /** Closes a file descriptor this process opened. */
  closeFd(fd: number): void {
    this.#libc.symbols.close(fd);
  }
}
