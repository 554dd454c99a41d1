/**
 * The DNS wire format (RFC 1035, EDNS(0) from RFC 6891), as much of it as an authoritative
 * responder for one zone needs: parse a query, encode a response. Pure: no I/O.
 */

/** Record types meshd reads or writes. */
export const RR_TYPE = {
  A: 1,
  NS: 2,
  SOA: 6,
  AAAA: 28,
  OPT: 41,
  IXFR: 251,
  AXFR: 252,
  ANY: 255,
} as const;

/** Classes: IN, and ANY in questions. */
export const RR_CLASS = { IN: 1, ANY: 255 } as const;

/** Response codes; BADVERS needs EDNS, which carries its upper bits. */
export const RCODE = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
  BADVERS: 16,
} as const;

/** The name of each response code, for logs and metrics. */
export function rcodeName(rcode: number): string {
  for (const [k, v] of Object.entries(RCODE)) if (v === rcode) return k;
  return `RCODE${rcode}`;
}

/** A message that is not a well-formed DNS query. `id` is set when the header was readable. */
export class DnsFormatError extends Error {
  readonly id: number | undefined;
  readonly opcode: number;
  constructor(message: string, id?: number, opcode = 0) {
    super(message);
    this.name = "DnsFormatError";
    this.id = id;
    this.opcode = opcode;
  }
}

/** A name as its labels, each byte of a label kept as one char code (latin1). */
export type DnsName = readonly string[];

/** One question. */
export interface DnsQuestion {
  name: DnsName;
  type: number;
  class: number;
}

/** EDNS(0) settings of a query's OPT record. */
export interface Edns {
  udpSize: number;
  version: number;
}

/** A parsed query. */
export interface DnsQuery {
  id: number;
  opcode: number;
  /** Recursion desired: echoed in the response. */
  rd: boolean;
  /** Checking disabled: echoed in the response. */
  cd: boolean;
  questions: DnsQuestion[];
  edns?: Edns;
}

/** The data of one resource record. */
export type RData =
  | { a: string }
  | { aaaa: string }
  | {
    soa: {
      mname: DnsName;
      rname: DnsName;
      serial: number;
      refresh: number;
      retry: number;
      expire: number;
      minimum: number;
    };
  };

/** One resource record of a response. */
export interface DnsRecord {
  name: DnsName;
  type: number;
  ttl: number;
  data: RData;
}

/** A response to encode. */
export interface DnsResponse {
  id: number;
  opcode: number;
  rd: boolean;
  cd: boolean;
  /** Authoritative answer. */
  aa: boolean;
  /** Full response code; codes above 15 need `edns`. */
  rcode: number;
  question?: DnsQuestion;
  answers: DnsRecord[];
  authority: DnsRecord[];
  /** Answer with an OPT record advertising this UDP payload size. */
  edns?: { udpSize: number };
}

/** `a.b.c` (no trailing dot needed) as labels; the root is `""` or `"."`. */
export function nameFromString(s: string): DnsName {
  const t = s.endsWith(".") ? s.slice(0, -1) : s;
  return t === "" ? [] : t.split(".");
}

/** Labels as text with a trailing dot, bytes outside printable ASCII and `.` escaped. */
export function nameToString(n: DnsName): string {
  if (n.length === 0) return ".";
  return n.map((l) =>
    [...l].map((c) => {
      const code = c.charCodeAt(0);
      if (c === "." || c === "\\") return `\\${c}`;
      return code > 0x20 && code < 0x7f ? c : `\\${String(code).padStart(3, "0")}`;
    }).join("")
  ).join(".") + ".";
}

const MAX_NAME = 255;

/**
 * Compression pointers followed in one name. A name has at most 127 labels and a sane encoder
 * points once; a chain of pointers to pointers is only there to make the parser work.
 */
export const MAX_POINTER_HOPS = 16;
/** Records after the question (answer, authority and additional) a query may carry. */
export const MAX_QUERY_RECORDS = 8;
/**
 * Labels and pointers read in one message, all names together: the parse work of a message
 * is bounded by this, whatever the message holds.
 */
export const MAX_PARSE_STEPS = 1024;

/** Counts the parse work, for tests and metrics: one step per label or pointer read. */
export interface ParseStats {
  steps: number;
}

class Reader {
  pos = 12;
  constructor(
    readonly buf: Uint8Array,
    readonly id: number,
    readonly opcode: number,
    readonly stats: ParseStats,
  ) {}

  fail(what: string): never {
    throw new DnsFormatError(`Cannot parse DNS query: ${what}`, this.id, this.opcode);
  }

  u8(): number {
    if (this.pos + 1 > this.buf.length) this.fail("message ends early");
    return this.buf[this.pos++]!;
  }

  u16(): number {
    return (this.u8() << 8) | this.u8();
  }

  u32(): number {
    return ((this.u16() << 16) >>> 0) + this.u16();
  }

  skip(n: number): void {
    if (this.pos + n > this.buf.length) this.fail("message ends early");
    this.pos += n;
  }

  /** A name, following compression pointers (only backwards, so no loops). */
  name(): DnsName {
    const labels: string[] = [];
    let pos = this.pos;
    let jumped = false;
    let wireLen = 1;
    let hops = 0;
    for (;;) {
      if (pos >= this.buf.length) this.fail("name runs past the message");
      if (++this.stats.steps > MAX_PARSE_STEPS) {
        this.fail(`more than ${MAX_PARSE_STEPS} labels and pointers in the message`);
      }
      const len = this.buf[pos]!;
      if ((len & 0xc0) === 0xc0) {
        if (++hops > MAX_POINTER_HOPS) {
          this.fail(`more than ${MAX_POINTER_HOPS} compression pointers in one name`);
        }
        if (pos + 1 >= this.buf.length) this.fail("name runs past the message");
        const target = ((len & 0x3f) << 8) | this.buf[pos + 1]!;
        if (target >= pos) this.fail("compression pointer does not point backwards");
        if (!jumped) this.pos = pos + 2;
        jumped = true;
        pos = target;
        continue;
      }
      if ((len & 0xc0) !== 0) this.fail(`unknown label type 0x${len.toString(16)}`);
      if (len === 0) {
        if (!jumped) this.pos = pos + 1;
        return labels;
      }
      if (pos + 1 + len > this.buf.length) this.fail("label runs past the message");
      wireLen += len + 1;
      if (wireLen > MAX_NAME) this.fail("name is longer than 255 bytes");
      labels.push(String.fromCharCode(...this.buf.subarray(pos + 1, pos + 1 + len)));
      pos += 1 + len;
    }
  }
}

/**
 * Parses a query. Throws {@linkcode DnsFormatError}: with `id` undefined when not even the
 * header is there (drop it), with `id` set otherwise (answer FORMERR). A response (QR set) is
 * rejected without an id, as a server must never answer one.
 *
 * The work is bounded before any name is read: a query must hold exactly one question and at
 * most {@linkcode MAX_QUERY_RECORDS} other records, and a message may take at most
 * {@linkcode MAX_PARSE_STEPS} labels and pointers in all ({@linkcode MAX_POINTER_HOPS} pointers
 * per name). `stats`, when given, receives the steps taken.
 */
export function parseQuery(buf: Uint8Array, stats: ParseStats = { steps: 0 }): DnsQuery {
  if (buf.length < 12) throw new DnsFormatError("Cannot parse DNS query: shorter than a header");
  const id = (buf[0]! << 8) | buf[1]!;
  const flags = (buf[2]! << 8) | buf[3]!;
  if (flags & 0x8000) throw new DnsFormatError("Cannot parse DNS query: it is a response");
  const opcode = (flags >> 11) & 0xf;
  const r = new Reader(buf, id, opcode, stats);
  const qd = (buf[4]! << 8) | buf[5]!;
  const an = (buf[6]! << 8) | buf[7]!;
  const ns = (buf[8]! << 8) | buf[9]!;
  const ar = (buf[10]! << 8) | buf[11]!;
  // Checked from the header alone, before a single name is decoded. RFC 9619: a query holds
  // one question (QDCOUNT > 1 is answered FORMERR).
  if (qd !== 1) r.fail(`${qd} questions, expected 1`);
  if (an + ns + ar > MAX_QUERY_RECORDS) {
    r.fail(`${an + ns + ar} records besides the question, expected at most ${MAX_QUERY_RECORDS}`);
  }
  const questions: DnsQuestion[] = [];
  for (let i = 0; i < qd; i++) {
    const name = r.name();
    questions.push({ name, type: r.u16(), class: r.u16() });
  }
  let edns: Edns | undefined;
  for (let i = 0; i < an + ns + ar; i++) {
    const name = r.name();
    const type = r.u16();
    const cls = r.u16();
    const ttl = r.u32();
    const rdlen = r.u16();
    r.skip(rdlen);
    if (type !== RR_TYPE.OPT) continue;
    // RFC 6891 6.1.1: one OPT, in the additional section, owned by the root.
    if (i < an + ns) r.fail("OPT record outside the additional section");
    if (edns) r.fail("more than one OPT record");
    if (name.length !== 0) r.fail("OPT record not owned by the root");
    edns = { udpSize: cls, version: (ttl >>> 16) & 0xff };
  }
  if (r.pos !== buf.length) r.fail("bytes after the last record");
  return {
    id,
    opcode,
    rd: (flags & 0x0100) !== 0,
    cd: (flags & 0x0010) !== 0,
    questions,
    ...(edns ? { edns } : {}),
  };
}

class Writer {
  buf = new Uint8Array(512);
  len = 0;
  /** Offsets of names already written, by lower-cased suffix, for compression. */
  #names = new Map<string, number>();

  #grow(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  u8(v: number): void {
    this.#grow(1);
    this.buf[this.len++] = v & 0xff;
  }

  u16(v: number): void {
    this.u8(v >> 8);
    this.u8(v);
  }

  u32(v: number): void {
    this.u16((v >>> 16) & 0xffff);
    this.u16(v & 0xffff);
  }

  bytes(b: Uint8Array): void {
    this.#grow(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  setU16(at: number, v: number): void {
    this.buf[at] = (v >> 8) & 0xff;
    this.buf[at + 1] = v & 0xff;
  }

  /** A name, pointing at an earlier copy of its longest known suffix (RFC 1035 4.1.4). */
  name(n: DnsName, compress = true): void {
    for (let i = 0; i < n.length; i++) {
      const key = n.slice(i).join(".").toLowerCase();
      const at = compress ? this.#names.get(key) : undefined;
      if (at !== undefined) {
        this.u16(0xc000 | at);
        return;
      }
      if (compress && this.len < 0x4000) this.#names.set(key, this.len);
      const label = n[i]!;
      this.u8(label.length);
      for (let j = 0; j < label.length; j++) this.u8(label.charCodeAt(j));
    }
    this.u8(0);
  }

  done(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

/** An IPv4 address's 4 bytes. */
export function ipv4Bytes(s: string): Uint8Array {
  const parts = s.split(".");
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
    throw new TypeError(`Cannot use "${s}" as an IPv4 address`);
  }
  return Uint8Array.from(parts.map(Number));
}

/** An IPv6 address's 16 bytes; `::` and a trailing dotted IPv4 part are understood. */
export function ipv6Bytes(s: string): Uint8Array {
  const bad = () => new TypeError(`Cannot use "${s}" as an IPv6 address`);
  let text = s;
  const tail: number[] = [];
  const dotted = text.match(/^(.*:)(\d+\.\d+\.\d+\.\d+)$/);
  if (dotted) {
    const v4 = ipv4Bytes(dotted[2]!);
    tail.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
    text = dotted[1]!.endsWith("::") ? dotted[1]! : dotted[1]!.slice(0, -1);
  }
  const halves = text.split("::");
  if (halves.length > 2) throw bad();
  const group = (g: string) => {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) throw bad();
    return parseInt(g, 16);
  };
  const head = halves[0] ? halves[0].split(":").map(group) : [];
  const rest = halves.length === 2 && halves[1] ? halves[1].split(":").map(group) : [];
  const groups = [...head];
  const given = head.length + rest.length + tail.length;
  if (halves.length === 2) {
    if (given > 7) throw bad();
    for (let i = given; i < 8; i++) groups.push(0);
  } else if (given !== 8) throw bad();
  groups.push(...rest, ...tail);
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

function writeRecord(w: Writer, r: DnsRecord): void {
  w.name(r.name);
  w.u16(r.type);
  w.u16(RR_CLASS.IN);
  w.u32(r.ttl);
  const lenAt = w.len;
  w.u16(0);
  const d = r.data;
  if ("a" in d) w.bytes(ipv4Bytes(d.a));
  else if ("aaaa" in d) w.bytes(ipv6Bytes(d.aaaa));
  else {
    w.name(d.soa.mname);
    w.name(d.soa.rname);
    for (const v of [d.soa.serial, d.soa.refresh, d.soa.retry, d.soa.expire, d.soa.minimum]) {
      w.u32(v);
    }
  }
  w.setU16(lenAt, w.len - lenAt - 2);
}

function encode(m: DnsResponse, truncated: boolean): Uint8Array {
  const w = new Writer();
  const answers = truncated ? [] : m.answers;
  const authority = truncated ? [] : m.authority;
  w.u16(m.id);
  w.u16(
    0x8000 | ((m.opcode & 0xf) << 11) | (m.aa ? 0x0400 : 0) | (truncated ? 0x0200 : 0) |
      (m.rd ? 0x0100 : 0) | (m.cd ? 0x0010 : 0) | (m.rcode & 0xf),
  );
  w.u16(m.question ? 1 : 0);
  w.u16(answers.length);
  w.u16(authority.length);
  w.u16(m.edns ? 1 : 0);
  if (m.question) {
    w.name(m.question.name);
    w.u16(m.question.type);
    w.u16(m.question.class);
  }
  for (const r of answers) writeRecord(w, r);
  for (const r of authority) writeRecord(w, r);
  if (m.edns) {
    w.u8(0); // the root
    w.u16(RR_TYPE.OPT);
    w.u16(m.edns.udpSize);
    w.u32(((m.rcode >> 4) & 0xff) << 24); // extended rcode, version 0, no flags
    w.u16(0);
  }
  return w.done();
}

/**
 * Encodes a response. When it is longer than `maxSize` (the client's UDP limit), the answer
 * and authority sections are left out and TC is set, so the client asks again over TCP.
 */
export function encodeResponse(m: DnsResponse, maxSize = 65535): Uint8Array {
  if (m.rcode > 15 && !m.edns) throw new TypeError(`RCODE ${m.rcode} needs an OPT record`);
  const full = encode(m, false);
  return full.length <= maxSize ? full : encode(m, true);
}
