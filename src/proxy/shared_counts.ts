/**
 * Connection counts shared by every isolate of one meshd process (the main isolate, the
 * `--workers` workers, the L4 worker), so that `--max-connections` and
 * `--max-connections-per-source` hold for the process, whichever isolate took a connection.
 *
 * One SharedArrayBuffer of 32-bit words:
 *
 * - a header: the caps, the table's size and hash seed, the insert lock, the count of
 *   connections admitted with no per-source count, the connections open, one total per
 *   column, and one epoch per column (bumped as the column is released);
 * - a table of source addresses, open addressing with linear probing from a seeded hash of the
 *   address's 16 bytes (IPv4 as IPv4-mapped IPv6): per slot a state word, the key (5 words), a
 *   generation (bumped at each new key), the count of connections, then one count per column.
 *
 * A connection is taken by an atomic add to the total, then to its source's count, each
 * undone if the value before was at the cap: the count never goes over a cap, and two that
 * race at the cap may both refuse. Each isolate also adds to its own column (one per start of
 * a worker), which it alone writes: a dead isolate's connections died with it, and
 * {@linkcode releaseColumn} takes them off the counts. It bumps the column's epoch first: an
 * isolate ended in a task (Deno's `Worker.terminate()` lets a running task finish) sees it,
 * takes nothing more and gives nothing back.
 *
 * A slot, once keyed, keeps its key while its count is 0, so a source that comes back finds it
 * without the lock; only a new key takes the insert lock, and reuses the first slot of its
 * probe sequence whose count is 0 (or an empty one). An isolate without the lock pins a slot
 * by adding to its count, then checks the key is still there; the lock holder marks a slot
 * busy before it reads the count and rekeys it, so of the two, one sees the other.
 *
 * @module
 */

const MAGIC = 0x6d736332;
// Header words.
const H_MAGIC = 0;
const H_MAX = 1;
const H_PER_SOURCE = 2;
const H_COLUMNS = 3;
const H_MASK = 4;
const H_SEED = 5;
/** 0, or the column + 1 of the isolate inserting a key. */
const H_LOCK = 6;
/** Connections admitted with no per-source count: the table was full, or its lock held too long. */
const H_UNCOUNTED = 7;
/** Connections open over every isolate. */
const H_OPEN = 8;
/** One word per column: the connections that column's isolate holds (written by it alone). */
const H_TOTALS = 9;
/**
 * After the totals, one word per column: its epoch, bumped by {@linkcode releaseColumn}. A
 * {@linkcode SharedCounts} made at another epoch of its column no longer counts.
 */
const epochOf = (columns: number, column: number) => H_TOTALS + columns + column;

// Slot words.
const S_STATE = 0;
const S_KEY = 1;
/** Bumped each time the slot takes a new key: a cached slot whose generation changed is stale. */
const S_GEN = 6;
/** Connections from the slot's source over every isolate. */
const S_COUNT = 7;
/** One word per column: that column's isolate's share of S_COUNT (written by it alone). */
const S_COLUMNS = 8;
// Slot states. A keyed slot whose key family is FAM_NONE is a tombstone: reusable, matching nothing.
const EMPTY = 0;
const KEYED = 1;
const BUSY = -1;
// Key families.
const FAM_NONE = 0;
const FAM_IP = 1;
const FAM_NAME = 2;

/** Slots a source's key may sit from its hash; past them the table counts as full for it. */
const MAX_PROBE = 64;
/** Turns spent spinning for the insert lock, then waits of 1 ms up to LOCK_WAIT_MS. */
const LOCK_SPINS = 2048;
const LOCK_WAIT_MS = 20;
/** Sources with no connection whose slot an isolate remembers, at most (then it forgets them). */
const IDLE_SOURCES = 4096;
/** The table's size: twice the total cap (so live sources fill half at most), within these. */
export const MIN_TABLE_SLOTS = 64;
export const MAX_TABLE_SLOTS = 1 << 16;
const INT32_MAX = 0x7fffffff;

/** Options for {@linkcode sharedCountsBuffer}. */
export interface SharedCountsOptions {
  /** `--max-connections`: connections open at once over every isolate. */
  max: number;
  /** `--max-connections-per-source`. */
  perSource: number;
  /** Columns: one per isolate start that may be live at once (see {@linkcode releaseColumn}). */
  columns: number;
  /**
   * Slots of the source table, a power of two. Default twice `max`, within
   * {@linkcode MIN_TABLE_SLOTS} and {@linkcode MAX_TABLE_SLOTS}.
   */
  tableSlots?: number;
}

/**
 * A zeroed buffer of shared counts for the caps in `options`, to hand to each isolate's
 * {@linkcode SharedCounts}.
 *
 * @example
 * ```ts
 * const buffer = sharedCountsBuffer({ max: 7000, perSource: 437, columns: 3 });
 * const here = new SharedCounts(buffer, 0); // the other columns go to workers
 * ```
 */
export function sharedCountsBuffer(options: SharedCountsOptions): SharedArrayBuffer {
  const { columns } = options;
  if (!(Number.isSafeInteger(columns) && columns >= 1 && columns <= 1024)) {
    throw new RangeError(`Cannot make shared connection counts for ${columns} columns`);
  }
  const cap = (v: number) => Math.max(1, Math.min(INT32_MAX, Math.floor(v)));
  const max = cap(options.max);
  const slots = options.tableSlots ??
    Math.min(MAX_TABLE_SLOTS, Math.max(MIN_TABLE_SLOTS, 2 ** Math.ceil(Math.log2(2 * max))));
  if (
    !(Number.isSafeInteger(slots) && slots >= 1 && slots <= 1 << 24 && (slots & (slots - 1)) === 0)
  ) {
    throw new RangeError(`Cannot make a source table of ${slots} slots: expected a power of two`);
  }
  const stride = S_COLUMNS + columns;
  const buffer = new SharedArrayBuffer(4 * (H_TOTALS + 2 * columns + slots * stride));
  const w = new Int32Array(buffer);
  w[H_MAX] = max;
  w[H_PER_SOURCE] = Math.min(max, cap(options.perSource));
  w[H_COLUMNS] = columns;
  w[H_MASK] = slots - 1;
  w[H_SEED] = crypto.getRandomValues(new Int32Array(1))[0]!;
  Atomics.store(w, H_MAGIC, MAGIC);
  return buffer;
}

/** What {@linkcode SharedCounts.acquire} decided: one of {@linkcode ADMIT}. */
export type Admit = typeof ADMIT[keyof typeof ADMIT];

/** The answers of {@linkcode SharedCounts.acquire}. */
export const ADMIT = {
  /** Taken, counted in all and for its source. */
  counted: 0,
  /** Over `--max-connections`. */
  overTotal: 1,
  /** Over `--max-connections-per-source`. */
  overSource: 2,
  /** Taken, counted in all but not for its source: the table was full (see `uncounted`). */
  uncounted: 3,
} as const;

/**
 * This isolate's connections from one source: counted in `slot` (the slot of generation `gen`,
 * remembered while `held` is 0 too), and how many with no count (`over`).
 */
interface Held {
  slot: number;
  gen: number;
  held: number;
  over: number;
}

/** The header fields of a buffer, checked. */
function layout(buffer: SharedArrayBuffer): {
  w: Int32Array;
  columns: number;
  mask: number;
  stride: number;
  base: number;
} {
  const w = new Int32Array(buffer);
  if (w.length < H_TOTALS || Atomics.load(w, H_MAGIC) !== MAGIC) {
    throw new TypeError(
      "Cannot use a buffer as shared connection counts: not made by sharedCountsBuffer()",
    );
  }
  const columns = w[H_COLUMNS]!;
  return {
    w,
    columns,
    mask: w[H_MASK]!,
    stride: S_COLUMNS + columns,
    base: H_TOTALS + 2 * columns,
  };
}

/** Subtracts `n` from word `i`, down to 0 at most. */
function subClamped(w: Int32Array, i: number, n: number): void {
  for (;;) {
    const cur = Atomics.load(w, i);
    const next = Math.max(0, cur - n);
    if (Atomics.compareExchange(w, i, cur, next) === cur) return;
  }
}

/**
 * One isolate's view of shared connection counts: it writes column `column` alone, and keeps
 * which slot each of its sources is counted in, so that a connection it holds is given back
 * where it was taken.
 */
export class SharedCounts {
  readonly #w: Int32Array;
  readonly #me: number;
  readonly #total: number;
  readonly #col: number;
  readonly #mask: number;
  readonly #stride: number;
  readonly #base: number;
  readonly #probes: number;
  readonly #max: number;
  readonly #perSource: number;
  readonly #seed: number;
  /** The word of this column's epoch, and the epoch this isolate counts at. */
  readonly #epochAt: number;
  readonly #epoch: number;
  readonly #held = new Map<string, Held>();
  readonly #key = new Int32Array(5);
  /** Entries of `#held` with no connection. */
  #idle = 0;
  #open = 0;
  /** The count of the slot {@linkcode #find} pinned, before its pin. */
  #before = 0;

  constructor(buffer: SharedArrayBuffer, column: number) {
    const { w, columns, mask, stride, base } = layout(buffer);
    if (!(Number.isSafeInteger(column) && column >= 0 && column < columns)) {
      throw new RangeError(`Cannot count in column ${column}: the buffer has ${columns}`);
    }
    this.#w = w;
    this.#me = column + 1;
    this.#total = H_TOTALS + column;
    this.#col = S_COLUMNS + column;
    this.#mask = mask;
    this.#stride = stride;
    this.#base = base;
    this.#probes = Math.min(MAX_PROBE, mask + 1);
    this.#max = w[H_MAX]!;
    this.#perSource = w[H_PER_SOURCE]!;
    this.#seed = w[H_SEED]!;
    this.#epochAt = epochOf(columns, column);
    this.#epoch = Atomics.load(w, this.#epochAt);
  }

  /** Whether this column was released since this view was made (its isolate was ended). */
  #released(): boolean {
    return Atomics.load(this.#w, this.#epochAt) !== this.#epoch;
  }

  /** The caps the buffer holds. */
  get caps(): { max: number; perSource: number } {
    return { max: this.#max, perSource: this.#perSource };
  }

  /** Connections this isolate holds. */
  get open(): number {
    return this.#open;
  }

  /** Connections every isolate holds. */
  get openAll(): number {
    return Atomics.load(this.#w, H_OPEN);
  }

  /** Connections admitted with no per-source count, over every isolate, since the start. */
  get uncounted(): number {
    return Atomics.load(this.#w, H_UNCOUNTED);
  }

  /** Connections from `source` counted over every isolate. */
  countOf(source: string): number {
    sourceKey(source, this.#key);
    const home = hashKey(this.#key, this.#seed);
    const w = this.#w;
    for (let i = 0; i < this.#probes; i++) {
      const b = this.#base + ((home + i) & this.#mask) * this.#stride;
      const st = Atomics.load(w, b + S_STATE);
      if (st === EMPTY) return 0;
      if (st === KEYED && this.#keyIs(b)) return Atomics.load(w, b + S_COUNT);
    }
    return 0;
  }

  /** Takes a connection from `source` if the caps allow. */
  acquire(source: string): Admit {
    const w = this.#w;
    // Ended, and its connections given back: it is to serve none.
    if (this.#released()) return ADMIT.overTotal;
    if (Atomics.add(w, H_OPEN, 1) >= this.#max) {
      Atomics.sub(w, H_OPEN, 1);
      return ADMIT.overTotal;
    }
    let h = this.#held.get(source);
    let slot = -1;
    let before = 0;
    if (h !== undefined && h.slot >= 0) {
      slot = h.slot;
      before = Atomics.add(w, slot + S_COUNT, 1);
      // A slot remembered with no connection held may have taken another key since.
      if (
        h.held === 0 && !(Atomics.load(w, slot + S_STATE) === KEYED && w[slot + S_GEN] === h.gen)
      ) {
        Atomics.sub(w, slot + S_COUNT, 1);
        slot = -1;
      }
    }
    if (slot < 0) {
      slot = this.#find(source);
      before = this.#before;
      if (slot < 0) {
        Atomics.add(w, H_UNCOUNTED, 1);
        if (h === undefined) this.#held.set(source, h = { slot: -1, gen: 0, held: 0, over: 0 });
        else if (h.held === 0 && h.over === 0) this.#idle--;
        h.over++;
        this.#count(this.#total, 1);
        this.#open++;
        return ADMIT.uncounted;
      }
    }
    if (before >= this.#perSource) {
      Atomics.sub(w, slot + S_COUNT, 1);
      Atomics.sub(w, H_OPEN, 1);
      return ADMIT.overSource;
    }
    if (h === undefined) {
      if (this.#idle >= IDLE_SOURCES) this.#forgetIdle();
      this.#held.set(source, h = { slot, gen: w[slot + S_GEN]!, held: 0, over: 0 });
    } else if (h.held === 0) {
      if (h.over === 0) this.#idle--;
      h.slot = slot;
      h.gen = w[slot + S_GEN]!;
    }
    h.held++;
    this.#count(slot + this.#col, 1);
    this.#count(this.#total, 1);
    this.#open++;
    return ADMIT.counted;
  }

  /** Gives back a connection from `source` this isolate took; one it holds none of is ignored. */
  release(source: string): void {
    const h = this.#held.get(source);
    // Given back already if its column was released.
    if (h === undefined || this.#released()) return;
    const w = this.#w;
    if (h.over > 0) h.over--;
    else if (h.held > 0) {
      h.held--;
      this.#count(h.slot + this.#col, -1);
      Atomics.sub(w, h.slot + S_COUNT, 1);
    } else return;
    this.#count(this.#total, -1);
    Atomics.sub(w, H_OPEN, 1);
    this.#open--;
    if (h.held === 0 && h.over === 0) this.#idle++;
  }

  /**
   * Adds `n` to a word of this isolate's column. Atomic although no other isolate adds to it:
   * {@linkcode releaseColumn} may empty it as an ended isolate's last task still runs.
   */
  #count(i: number, n: number): void {
    Atomics.add(this.#w, i, n);
  }

  /** Forgets the slots of sources with no connection here. */
  #forgetIdle(): void {
    for (const [source, h] of this.#held) {
      if (h.held === 0 && h.over === 0) this.#held.delete(source);
    }
    this.#idle = 0;
  }

  /**
   * Whether slot `b` holds `#key`. Plain reads: the key is written before its slot's state
   * is stored KEYED, and read after it was loaded KEYED (a key changing meanwhile is caught
   * by the check after the pin).
   */
  #keyIs(b: number): boolean {
    const w = this.#w;
    const k = this.#key;
    return w[b + S_KEY + 4] === k[4] && w[b + S_KEY + 3] === k[3] &&
      w[b + S_KEY + 2] === k[2] && w[b + S_KEY + 1] === k[1] && w[b + S_KEY] === k[0];
  }

  /**
   * The slot of `source`'s key, pinned (its count 1 more, the count before in `#before`); -1
   * if none can be had.
   */
  #find(source: string): number {
    sourceKey(source, this.#key);
    const home = hashKey(this.#key, this.#seed);
    for (let tries = 0; tries < 4; tries++) {
      const r = this.#probe(home);
      if (r >= 0) return r;
      if (r === -1) break;
    }
    return this.#insert(home);
  }

  /** The key's slot, pinned; -1 if absent, -2 if it was rekeyed as it was pinned. */
  #probe(home: number): number {
    const w = this.#w;
    for (let i = 0; i < this.#probes; i++) {
      const b = this.#base + ((home + i) & this.#mask) * this.#stride;
      const st = Atomics.load(w, b + S_STATE);
      if (st === EMPTY) return -1;
      if (st === KEYED && this.#keyIs(b)) {
        this.#before = Atomics.add(w, b + S_COUNT, 1);
        // Rekeyed since it was read? The lock holder marks the slot busy before it reads the
        // count: it saw the pin just added (and left the slot alone), or this sees its mark.
        if (Atomics.load(w, b + S_STATE) === KEYED && this.#keyIs(b)) return b;
        Atomics.sub(w, b + S_COUNT, 1);
        return -2;
      }
    }
    return -1;
  }

  /**
   * Under the insert lock (keys change under it alone): the key's slot if it came meanwhile,
   * else the first reusable slot of its sequence, keyed for it; pinned. -1 when none is (the
   * table is full there) or the lock could not be had.
   */
  #insert(home: number): number {
    if (!this.#lock()) return -1;
    const w = this.#w;
    const k = this.#key;
    try {
      let end = this.#probes;
      for (let i = 0; i < end; i++) {
        const b = this.#base + ((home + i) & this.#mask) * this.#stride;
        const st = Atomics.load(w, b + S_STATE);
        if (st === EMPTY) {
          end = i + 1;
          break;
        }
        if (st === KEYED && this.#keyIs(b)) {
          this.#before = Atomics.add(w, b + S_COUNT, 1);
          return b;
        }
      }
      for (let i = 0; i < end; i++) {
        const b = this.#base + ((home + i) & this.#mask) * this.#stride;
        if (Atomics.load(w, b + S_STATE) !== EMPTY) {
          if (Atomics.load(w, b + S_COUNT) !== 0) continue;
          Atomics.store(w, b + S_STATE, BUSY);
          // An isolate that pinned the slot before the mark is seen here; one after sees it.
          if (Atomics.load(w, b + S_COUNT) !== 0) {
            Atomics.store(w, b + S_STATE, KEYED);
            continue;
          }
        }
        for (let j = 0; j < 5; j++) w[b + S_KEY + j] = k[j]!;
        w[b + S_GEN] = (w[b + S_GEN]! + 1) | 0;
        this.#before = Atomics.add(w, b + S_COUNT, 1);
        Atomics.store(w, b + S_STATE, KEYED);
        return b;
      }
      return -1;
    } finally {
      // Only its own: releaseColumn() may have freed it (this isolate ended mid-insert) and
      // another isolate taken it since.
      Atomics.compareExchange(w, H_LOCK, this.#me, 0);
      Atomics.notify(w, H_LOCK);
    }
  }

  #lock(): boolean {
    const w = this.#w;
    for (let i = 0; i < LOCK_SPINS; i++) {
      if (Atomics.load(w, H_LOCK) === 0 && Atomics.compareExchange(w, H_LOCK, 0, this.#me) === 0) {
        return true;
      }
    }
    // Held long: its holder's thread is off the CPU. A dead holder's lock is freed by
    // releaseColumn(); should it not be, the connection goes uncounted, never stuck.
    const until = performance.now() + LOCK_WAIT_MS;
    while (performance.now() < until) {
      const owner = Atomics.compareExchange(w, H_LOCK, 0, this.#me);
      if (owner === 0) return true;
      Atomics.wait(w, H_LOCK, owner, 1);
    }
    return false;
  }
}

/**
 * Takes off the counts every connection counted in `column`, whose isolate is dead (or not
 * started yet): its connections went with it; a {@linkcode SharedCounts} made on the column
 * before no longer counts (one made after does). Frees the insert lock if that isolate held it,
 * and turns the slot it was rekeying into a tombstone. No count goes below 0. Returns how many
 * connections the column held.
 */
export function releaseColumn(buffer: SharedArrayBuffer, column: number): number {
  const { w, columns, mask, stride, base } = layout(buffer);
  if (!(Number.isSafeInteger(column) && column >= 0 && column < columns)) {
    throw new RangeError(`Cannot release column ${column}: the buffer has ${columns}`);
  }
  Atomics.add(w, epochOf(columns, column), 1);
  const held = Atomics.exchange(w, H_TOTALS + column, 0);
  if (held !== 0) subClamped(w, H_OPEN, held);
  for (let s = 0; s <= mask; s++) {
    const b = base + s * stride;
    // Read first: writing every word would commit the table's untouched pages.
    const n = Atomics.load(w, b + S_COLUMNS + column);
    if (n === 0) continue;
    Atomics.store(w, b + S_COLUMNS + column, 0);
    subClamped(w, b + S_COUNT, n);
  }
  if (Atomics.load(w, H_LOCK) === column + 1) {
    for (let s = 0; s <= mask; s++) {
      const b = base + s * stride;
      if (Atomics.load(w, b + S_STATE) !== BUSY) continue;
      for (let j = 0; j < 5; j++) Atomics.store(w, b + S_KEY + j, FAM_NONE);
      Atomics.add(w, b + S_GEN, 1);
      Atomics.store(w, b + S_STATE, KEYED);
    }
    Atomics.compareExchange(w, H_LOCK, column + 1, 0);
    Atomics.notify(w, H_LOCK);
  }
  return Math.max(0, held);
}

/**
 * Writes the key of `source` into `out` (5 words): an IP address as Deno gives it (a zone is
 * dropped; IPv4 as IPv4-mapped IPv6, so `10.0.0.1` and `::ffff:10.0.0.1` are one source), or a
 * hash of anything else.
 */
export function sourceKey(source: string, out: Int32Array): void {
  out[0] = FAM_IP;
  if (parseIpv4(source, 0, source.length, out)) {
    out[1] = 0;
    out[2] = 0;
    out[3] = 0xffff;
    return;
  }
  if (parseIpv6(source, out)) return;
  out[0] = FAM_NAME;
  for (let j = 1; j < 5; j++) {
    let h = 0x811c9dc5 ^ j;
    for (let i = 0; i < source.length; i++) h = Math.imul(h ^ source.charCodeAt(i), 0x01000193);
    out[j] = h;
  }
}

/** Dotted IPv4 in `s[from, to)` into `out[4]`. */
function parseIpv4(s: string, from: number, to: number, out: Int32Array): boolean {
  let v = 0;
  let part = 0;
  let digits = 0;
  let parts = 0;
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      part = part * 10 + c - 48;
      if (++digits > 3 || part > 255) return false;
    } else if (c === 46 && digits > 0 && parts < 3) {
      v = (v << 8) | part;
      part = 0;
      digits = 0;
      parts++;
    } else return false;
  }
  if (digits === 0 || parts !== 3) return false;
  out[4] = (v << 8) | part;
  return true;
}

const groups = new Uint16Array(8);

/** IPv6 text (`::` once, a dotted IPv4 tail, a `%zone` dropped) into `out[1..4]`. */
function parseIpv6(s: string, out: Int32Array): boolean {
  let end = s.indexOf("%");
  if (end < 0) end = s.length;
  let n = 0;
  let gap = -1;
  let i = 0;
  if (s.charCodeAt(0) === 58) {
    if (s.charCodeAt(1) !== 58) return false;
    gap = 0;
    i = 2;
  }
  while (i < end) {
    if (n === 8) return false;
    let v = 0;
    let d = 0;
    const start = i;
    for (; i < end && d <= 4; i++, d++) {
      const c = s.charCodeAt(i);
      const x = c >= 48 && c <= 57
        ? c - 48
        : c >= 97 && c <= 102
        ? c - 87
        : c >= 65 && c <= 70
        ? c - 55
        : -1;
      if (x < 0) break;
      v = v * 16 + x;
    }
    if (i < end && s.charCodeAt(i) === 46) {
      // A dotted IPv4 tail: two groups.
      if (n > 6 || !parseIpv4(s, start, end, out)) return false;
      groups[n++] = out[4]! >>> 16;
      groups[n++] = out[4]! & 0xffff;
      i = end;
      break;
    }
    if (d === 0 || d > 4) return false;
    groups[n++] = v;
    if (i === end) break;
    if (s.charCodeAt(i) !== 58) return false;
    i++;
    if (s.charCodeAt(i) === 58) {
      if (gap >= 0) return false;
      gap = n;
      i++;
    } else if (i === end) return false;
  }
  if (gap < 0 ? n !== 8 : n > 7) return false;
  if (gap >= 0) {
    const move = n - gap;
    for (let j = 0; j < move; j++) groups[7 - j] = groups[n - 1 - j]!;
    for (let j = gap; j < 8 - move; j++) groups[j] = 0;
  }
  for (let j = 0; j < 4; j++) out[1 + j] = (groups[2 * j]! << 16) | groups[2 * j + 1]!;
  return true;
}

/** A seeded hash of a key's 5 words (murmur3's mixing). */
function hashKey(k: Int32Array, seed: number): number {
  let h = seed;
  for (let j = 0; j < 5; j++) {
    let x = Math.imul(k[j]!, 0xcc9e2d51);
    x = (x << 15) | (x >>> 17);
    h ^= Math.imul(x, 0x1b873593);
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
