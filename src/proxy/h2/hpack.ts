/**
 * HPACK (RFC 7541) for meshd's HTTP/2 frame layer: a decoder that keeps the peer's dynamic
 * table and decodes Huffman strings, bounded against hostile peers (table size updates above
 * our setting, header lists above a limit, bad Huffman padding), and an encoder that writes
 * fields from the static table where they match and otherwise as literals without indexing
 * and without Huffman, so the next hop's table stays empty and no encoder state is kept.
 * Strings are kept byte for byte as Latin-1.
 *
 * @module
 */

/** RFC 7541 Appendix A: [name, value] for indexes 1 to 61. */
const STATIC: readonly (readonly [string, string])[] = [
  [":authority", ""],
  [":method", "GET"],
  [":method", "POST"],
  [":path", "/"],
  [":path", "/index.html"],
  [":scheme", "http"],
  [":scheme", "https"],
  [":status", "200"],
  [":status", "204"],
  [":status", "206"],
  [":status", "304"],
  [":status", "400"],
  [":status", "404"],
  [":status", "500"],
  ["accept-charset", ""],
  ["accept-encoding", "gzip, deflate"],
  ["accept-language", ""],
  ["accept-ranges", ""],
  ["accept", ""],
  ["access-control-allow-origin", ""],
  ["age", ""],
  ["allow", ""],
  ["authorization", ""],
  ["cache-control", ""],
  ["content-disposition", ""],
  ["content-encoding", ""],
  ["content-language", ""],
  ["content-length", ""],
  ["content-location", ""],
  ["content-range", ""],
  ["content-type", ""],
  ["cookie", ""],
  ["date", ""],
  ["etag", ""],
  ["expect", ""],
  ["expires", ""],
  ["from", ""],
  ["host", ""],
  ["if-match", ""],
  ["if-modified-since", ""],
  ["if-none-match", ""],
  ["if-range", ""],
  ["if-unmodified-since", ""],
  ["last-modified", ""],
  ["link", ""],
  ["location", ""],
  ["max-forwards", ""],
  ["proxy-authenticate", ""],
  ["proxy-authorization", ""],
  ["range", ""],
  ["referer", ""],
  ["refresh", ""],
  ["retry-after", ""],
  ["server", ""],
  ["set-cookie", ""],
  ["strict-transport-security", ""],
  ["transfer-encoding", ""],
  ["user-agent", ""],
  ["vary", ""],
  ["via", ""],
  ["www-authenticate", ""],
];

/**
 * RFC 7541 Appendix B: the Huffman code's length in bits for symbols 0 to 256 (EOS). The code
 * is canonical (codes of one length are consecutive, in symbol order, shorter lengths first),
 * so the lengths alone define it.
 */
// deno-fmt-ignore
const HUFFMAN_LENGTHS = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
  28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
  6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
  5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
  13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
  7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
  15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
  6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
  20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
  24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
  22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
  21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
  26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
  19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
  20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
  26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
  30,
];

/** The canonical codes, from the lengths: [code, length] by symbol. */
export function huffmanCodes(): [number, number][] {
  const order = HUFFMAN_LENGTHS.map((len, sym) => ({ len, sym }))
    .sort((a, b) => a.len - b.len || a.sym - b.sym);
  const codes: [number, number][] = new Array(HUFFMAN_LENGTHS.length);
  let code = 0;
  let prev = order[0]!.len;
  for (const { len, sym } of order) {
    code *= 2 ** (len - prev);
    prev = len;
    codes[sym] = [code, len];
    code++;
  }
  return codes;
}

/**
 * The decoding tree: node i's children at 2i (bit 0) and 2i+1 (bit 1); a child below zero is
 * the leaf of symbol -child-1, zero is no child yet (the root is node 0 and never a child).
 */
const TREE: Int32Array = (() => {
  const tree = new Int32Array(2 * 512);
  let nodes = 1;
  huffmanCodes().forEach(([code, len], sym) => {
    let node = 0;
    for (let i = len - 1; i >= 0; i--) {
      const slot = 2 * node + (Math.floor(code / 2 ** i) & 1);
      if (i === 0) tree[slot] = -sym - 1;
      else {
        if (tree[slot] === 0) tree[slot] = nodes++;
        node = tree[slot]!;
      }
    }
  });
  return tree;
})();

/** The HPACK input ended early or is malformed. */
export class HpackError extends Error {
  override name = "HpackError";
}

/** Bytes as a Latin-1 string, made in one go rather than a character at a time. */
function latin1(b: Uint8Array, start: number, end: number): string {
  let s = "";
  // Chunks keep the argument list of fromCharCode short.
  for (let at = start; at < end; at += 4096) {
    s += String.fromCharCode.apply(
      null,
      b.subarray(at, Math.min(end, at + 4096)) as unknown as number[],
    );
  }
  return s;
}

/** Decoded Huffman symbols, reused between strings (8 symbols at most per 5 bits). */
let scratch = new Uint8Array(256);

function huffmanDecode(b: Uint8Array, start: number, end: number): string {
  const most = Math.ceil((end - start) * 8 / 5);
  if (scratch.length < most) scratch = new Uint8Array(most);
  const out = scratch;
  let n = 0;
  let node = 0;
  // Bits read since the last whole symbol, and whether they were all ones (RFC 7541 §5.2:
  // the padding is the most significant bits of EOS, at most 7 of them).
  let pending = 0;
  let ones = true;
  for (let i = start; i < end; i++) {
    const byte = b[i]!;
    for (let bit = 7; bit >= 0; bit--) {
      const one = (byte >> bit) & 1;
      const next = TREE[2 * node + one]!;
      if (next < 0) {
        if (next === -257) throw new HpackError("EOS in a Huffman string");
        out[n++] = -next - 1;
        node = 0;
        pending = 0;
        ones = true;
      } else {
        node = next;
        pending++;
        ones &&= one === 1;
      }
    }
  }
  if (pending > 7 || !ones) throw new HpackError("Huffman padding is not a prefix of EOS");
  return latin1(out, 0, n);
}

/** Options for {@linkcode HpackDecoder}. */
export interface HpackDecoderOptions {
  /** Our SETTINGS_HEADER_TABLE_SIZE: the largest table the peer may ask for. Default 4096. */
  maxTableSize?: number;
  /**
   * Decoded header lists above this size (names, values and 32 bytes a field, RFC 9113
   * §6.5.2) are cut short and reported. Default 64 KiB.
   */
  maxListSize?: number;
}

/** Decodes header blocks from one peer, keeping that peer's dynamic table. */
export class HpackDecoder {
  /** Newest first. */
  #table: [string, string][] = [];
  #size = 0;
  #max: number;
  readonly #limit: number;
  readonly #maxList: number;
  #pos = 0;

  constructor(options: HpackDecoderOptions = {}) {
    this.#limit = this.#max = options.maxTableSize ?? 4096;
    this.#maxList = options.maxListSize ?? 64 * 1024;
  }

  /**
   * Appends the fields of one whole header block to `out` as [name, value]. Returns `false`
   * when the list went over the size limit: the block was still read to its end (the table
   * stays in step with the peer's) but the fields past the limit were left out. Throws
   * {@linkcode HpackError} on a malformed block (a connection error, COMPRESSION_ERROR).
   */
  decode(b: Uint8Array, out: [string, string][]): boolean {
    this.#pos = 0;
    let listSize = 0;
    let fits = true;
    let first = true;
    while (this.#pos < b.length) {
      const byte = b[this.#pos]!;
      let f: readonly [string, string];
      if (byte & 0x80) {
        f = this.#entry(this.#int(b, 7));
      } else if (byte & 0x40) {
        const lit = this.#literal(b, 6);
        this.#add(lit);
        f = lit;
      } else if (byte & 0x20) {
        // RFC 7541 §4.2: a size update comes first in a block, and never above our setting.
        if (!first) throw new HpackError("dynamic table size update after a field");
        const max = this.#int(b, 5);
        if (max > this.#limit) {
          throw new HpackError(`dynamic table size ${max} is over the ${this.#limit} allowed`);
        }
        this.#max = max;
        this.#evict(0);
        continue;
      } else f = this.#literal(b, 4); // without indexing, or never indexed
      first = false;
      listSize += f[0].length + f[1].length + 32;
      if (listSize > this.#maxList) fits = false;
      if (fits) out.push([f[0], f[1]]);
    }
    return fits;
  }

  /** The dynamic table's size in RFC 7541 §4.1's measure, and its entry count. */
  get tableSize(): { size: number; entries: number } {
    return { size: this.#size, entries: this.#table.length };
  }

  #int(b: Uint8Array, prefix: number): number {
    const mask = (1 << prefix) - 1;
    let v = b[this.#pos++]! & mask;
    if (v < mask) return v;
    let shift = 0;
    while (true) {
      if (this.#pos >= b.length) throw new HpackError("integer runs past the block");
      const byte = b[this.#pos++]!;
      v += (byte & 0x7f) * 2 ** shift;
      shift += 7;
      if (!(byte & 0x80)) return v;
      if (shift > 21) throw new HpackError("integer too large");
    }
  }

  #string(b: Uint8Array): string {
    if (this.#pos >= b.length) throw new HpackError("string runs past the block");
    const huffman = (b[this.#pos]! & 0x80) !== 0;
    const len = this.#int(b, 7);
    const start = this.#pos;
    const end = start + len;
    if (end > b.length) throw new HpackError("string runs past the block");
    this.#pos = end;
    return huffman ? huffmanDecode(b, start, end) : latin1(b, start, end);
  }

  #literal(b: Uint8Array, prefix: number): [string, string] {
    const index = this.#int(b, prefix);
    const name = index === 0 ? this.#string(b) : this.#entry(index)[0];
    return [name, this.#string(b)];
  }

  #entry(index: number): readonly [string, string] {
    const e = index <= STATIC.length ? STATIC[index - 1] : this.#table[index - STATIC.length - 1];
    if (!e || index === 0) throw new HpackError(`no table entry ${index}`);
    return e;
  }

  #add(f: [string, string]): void {
    const size = f[0].length + f[1].length + 32;
    this.#evict(size);
    if (size <= this.#max) {
      this.#table.unshift(f);
      this.#size += size;
    }
  }

  #evict(room: number): void {
    while (this.#table.length > 0 && this.#size + room > this.#max) {
      const e = this.#table.pop()!;
      this.#size -= e[0].length + e[1].length + 32;
    }
  }
}

function putInt(out: Uint8Array, at: number, v: number, prefix: number, first: number): number {
  const mask = (1 << prefix) - 1;
  if (v < mask) {
    out[at++] = first | v;
    return at;
  }
  out[at++] = first | mask;
  v -= mask;
  while (v >= 128) {
    out[at++] = (v & 0x7f) | 0x80;
    v = Math.floor(v / 128);
  }
  out[at++] = v;
  return at;
}

/** Static table indexes by name: the name's first index, and the index of each value. */
const STATIC_INDEX = new Map<string, { index: number; values: Map<string, number> }>();
STATIC.forEach(([k, v], i) => {
  let e = STATIC_INDEX.get(k);
  if (!e) STATIC_INDEX.set(k, e = { index: i + 1, values: new Map() });
  if (v !== "") e.values.set(v, i + 1);
});

/** The most bytes `encode` writes for `fields`. */
export function encodedSize(fields: [string, string][]): number {
  let n = 0;
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i]!;
    n += f[0].length + f[1].length + 11;
  }
  return n;
}

/**
 * Writes `fields` at `at` in `out` (room for `encodedSize(fields)` bytes) and returns the end:
 * a field in the static table as its index (RFC 7541 §6.1), else a literal without indexing
 * (§6.2.2) with the static name index when there is one, without Huffman. Names and values
 * must be Latin-1 (char codes below 256).
 */
export function encode(fields: [string, string][], out: Uint8Array, at: number): number {
  for (let f = 0; f < fields.length; f++) {
    const k = fields[f]![0];
    const v = fields[f]![1];
    const known = STATIC_INDEX.get(k);
    if (known !== undefined) {
      const full = known.values.get(v);
      if (full !== undefined) {
        out[at++] = 0x80 | full;
        continue;
      }
      at = putInt(out, at, known.index, 4, 0);
    } else {
      out[at++] = 0;
      at = putInt(out, at, k.length, 7, 0);
      for (let i = 0; i < k.length; i++) out[at++] = k.charCodeAt(i);
    }
    at = putInt(out, at, v.length, 7, 0);
    for (let i = 0; i < v.length; i++) out[at++] = v.charCodeAt(i);
  }
  return at;
}

/** `fields` as one header block. */
export function encodeBlock(fields: [string, string][]): Uint8Array {
  const buf = new Uint8Array(encodedSize(fields));
  return buf.subarray(0, encode(fields, buf, 0));
}
