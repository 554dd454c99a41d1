/**
 * The HTTP/1.1 wire format, as far as a forwarding proxy needs it: reading message heads,
 * and copying bodies with their framing (RFC 9112) without buffering them whole.
 */

/** Something bytes can be read from, such as a `Deno.Conn`. */
export interface Reader {
  read(p: Uint8Array): Promise<number | null>;
}
/** Something bytes can be written to, such as a `Deno.Conn`. */
export interface Writer {
  write(p: Uint8Array): Promise<number>;
}

/** For ASCII, which UTF-8 decodes alike, and faster than any ISO-8859-1 decoder here. */
const ascii = new TextDecoder();

/**
 * Decodes ISO-8859-1 bytes (header bytes on the wire, RFC 9110 §5.5), each byte the character
 * of its code, so that encoding the string again gives the same bytes. A head is nearly always
 * ASCII, which the UTF-8 decoder turns into the same string fastest. Not `TextDecoder("latin1")`:
 * that label is windows-1252, which turns 0x80-0x9f into other characters (0x85 into U+2026).
 */
export function decodeLatin1(bytes: Uint8Array): string {
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i]! > 0x7f) return byteChars(bytes);
  }
  return ascii.decode(bytes);
}

function byteChars(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192) as unknown as number[]);
  }
  return s;
}

/**
 * The head of the client preface that opens an HTTP/2 connection with prior knowledge (RFC
 * 9113 §3.4), as the HTTP/1 reader returns it.
 */
export const H2_PREFACE_HEAD = "PRI * HTTP/2.0\r\n\r\n";

/** Encodes a string whose characters are all below U+0100 as ISO-8859-1. */
export function encodeLatin1(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  encodeLatin1Into(s, out, 0);
  return out;
}

/**
 * Encodes `s` as {@linkcode encodeLatin1} does into `out` at `offset`, which must have room
 * for `s.length` bytes: a head and the body sent with it share one buffer, with no copy.
 */
export function encodeLatin1Into(s: string, out: Uint8Array, offset: number): void {
  for (let i = 0; i < s.length; i++) out[offset + i] = s.charCodeAt(i) & 0xff;
}

/** A malformed message; the proxy answers 400 (from a client) or 502 (from a backend). */
export class HttpParseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HttpParseError";
  }
}

/**
 * A message head over the size limit, or with more fields than {@linkcode MAX_REQUEST_FIELDS}:
 * the proxy answers 431 (RFC 6585 §5), not 400.
 */
export class HeadTooLargeError extends HttpParseError {
  constructor(limit: number, unit: "bytes" | "fields" = "bytes") {
    super(
      unit === "bytes"
        ? `message head is over ${limit} bytes`
        : `message head has more than ${limit} header fields`,
    );
    this.name = "HeadTooLargeError";
  }
}

/**
 * Header fields a request may have, as Envoy's and HAProxy's defaults (100, 101): within the
 * 64 KiB head, thousands of tiny fields cost meshd a parse each, and a backend with a lower
 * cap of its own (Node's HTTP/2 server: 128) refuses the request in a way meshd would charge
 * to the endpoint, so a client could get a healthy endpoint ejected.
 */
export const MAX_REQUEST_FIELDS = 100;

/** What a {@linkcode BufReader} reads a body into, at least. */
const BODY_BUFFER = 16 * 1024;

/**
 * Told when a {@linkcode BufReader} starts and ends a read from its source, while set: a
 * proxy arms a deadline on the peer's silence with it (`--stream-idle-timeout`). One object
 * per connection, so a read makes no closure.
 */
export interface ReadTimer {
  /** A read from the source starts. */
  start(): void;
  /** That read ended: bytes, the end of the stream, or an error. */
  stop(): void;
}

/** A buffered reader over a connection. */
export class BufReader {
  #buf: Uint8Array;
  #start = 0;
  #end = 0;
  readonly #src: Reader;
  /** A read started while the connection was idle; the next read waits for it. */
  #ahead: Promise<boolean> | null = null;
  /** A read from the source is under way. */
  #reading = false;
  /**
   * Bytes of the buffer were handed out beyond a head (a body, or the rest for a tunnel), so
   * a write elsewhere may still hold a view of it: the buffer is never given up for reuse.
   */
  #lent = false;
  #released = false;
  /** Told of each read from the source while set; none by default. */
  timer: ReadTimer | null = null;

  /**
   * `size` is the buffer's first size: it doubles for a head that does not fit, and grows to
   * 16 KiB for a body. A client connection's starts small, since most requests are a head.
   * `buffer`, when given, is used instead of a new one of `size` bytes.
   */
  constructor(src: Reader, size = BODY_BUFFER, buffer?: Uint8Array) {
    this.#src = src;
    this.#buf = buffer ?? new Uint8Array(size);
  }

  /**
   * Gives up the buffer for reuse by another reader, when no read is under way and no byte of
   * it was handed out but heads (which are used before the next read); `null` otherwise. A
   * read after this fails.
   */
  release(): Uint8Array | null {
    if (this.#reading || this.#ahead !== null || this.#lent || this.#released) return null;
    this.#released = true;
    const buf = this.#buf;
    this.#buf = new Uint8Array(0);
    this.#start = this.#end = 0;
    return buf;
  }

  /** Bytes read from the connection and not consumed yet. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /**
   * Starts a read now, while nothing is expected, and returns it: true when bytes came, false
   * at end of stream. The next read waits for this one rather than starting its own, so no
   * byte is lost. A pooled backend connection keeps one pending this way: anything it
   * returns before a request was sent is not a response to that request.
   */
  readAhead(): Promise<boolean> {
    if (!this.#ahead) {
      const ahead = this.#read();
      this.#ahead = ahead;
      ahead.then(() => {}, () => {}); // the caller or the next read sees the outcome
    }
    return this.#ahead;
  }

  /** Reads more bytes into the buffer; false at end of stream. */
  #fill(): Promise<boolean> {
    const ahead = this.#ahead;
    if (ahead) {
      this.#ahead = null;
      return ahead;
    }
    return this.#read();
  }

  async #read(): Promise<boolean> {
    if (this.#released) throw new Deno.errors.BadResource("the reader's buffer was released");
    if (this.#start > 0 && this.#start === this.#end) this.#start = this.#end = 0;
    if (this.#end === this.#buf.length) {
      if (this.#start > 0) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      } else {
        const bigger = new Uint8Array(this.#buf.length * 2);
        bigger.set(this.#buf);
        this.#buf = bigger;
      }
    }
    this.#reading = true;
    const timer = this.timer;
    timer?.start();
    let n: number | null;
    try {
      n = await this.#src.read(this.#buf.subarray(this.#end));
    } finally {
      this.#reading = false;
      timer?.stop();
    }
    if (n === null) return false;
    this.#end += n;
    return true;
  }

  /**
   * Reads a message head up to and including the empty line. Returns `null` at a clean end of
   * stream before the first byte; throws if the stream ends inside a head or it exceeds `limit`,
   * however the bytes arrived.
   *
   * The head ends at the first empty line, whether its line ends are CRLF or a bare LF: a head
   * with bare LFs is then refused by the parser at once (RFC 9112 §2.2), rather than held until
   * a CRLF CRLF that never comes.
   */
  async readHead(limit: number): Promise<string | null> {
    const head = await this.readHeadBytes(limit);
    return head === null ? null : decodeLatin1(head);
  }

  /**
   * {@linkcode BufReader.readHead} without decoding: the head's bytes as a view of the buffer,
   * valid only until the next read from this reader (which may move or overwrite them). A
   * proxy that forwards the head as it came copies them out before it reads again.
   */
  async readHeadBytes(limit: number): Promise<Uint8Array | null> {
    // Bytes from #start already searched; kept relative because #fill may move the data.
    let scanned = 0;
    for (;;) {
      // Tolerate empty lines before a request (RFC 9112 §2.2).
      while (
        scanned === 0 && this.#start + 1 < this.#end && this.#buf[this.#start] === 13 &&
        this.#buf[this.#start + 1] === 10
      ) {
        this.#start += 2;
      }
      const b = this.#buf;
      for (let i = Math.max(this.#start + scanned, this.#start + 1); i < this.#end; i++) {
        if (b[i] !== 10) continue;
        const empty = b[i - 1] === 10 ||
          (b[i - 1] === 13 && i - 2 >= this.#start && b[i - 2] === 10);
        if (!empty) continue;
        if (i + 1 - this.#start > limit) throw new HeadTooLargeError(limit);
        const head = b.subarray(this.#start, i + 1);
        this.#start = i + 1;
        return head;
      }
      const have = this.#end - this.#start;
      if (have > limit) throw new HeadTooLargeError(limit);
      // Under two bytes, a CRLF before the request may still be coming: look again from the start.
      scanned = have < 2 ? 0 : have;
      if (!(await this.#fill())) {
        if (have === 0) return null;
        throw new HttpParseError("connection closed inside a message head");
      }
    }
  }

  /**
   * Reads one CRLF-terminated line (without the CRLF), for chunk sizes and trailers. A bare LF
   * is an error (RFC 9112 §7.1: the chunked coding has no other line end), and so is a line
   * longer than `limit`, however the bytes arrived.
   */
  async readLine(limit: number): Promise<string> {
    this.#lent = true;
    for (;;) {
      const b = this.#buf;
      for (let i = this.#start; i < this.#end; i++) {
        if (b[i] === 10) {
          if (i === this.#start || b[i - 1] !== 13) {
            throw new HttpParseError("a line in a chunked body ends in a bare LF");
          }
          if (i - 1 - this.#start > limit) throw new HttpParseError(`line is over ${limit} bytes`);
          const line = decodeLatin1(b.subarray(this.#start, i - 1));
          this.#start = i + 1;
          return line;
        }
      }
      if (this.#end - this.#start > limit + 1) {
        throw new HttpParseError(`line is over ${limit} bytes`);
      }
      if (!(await this.#fill())) {
        throw new HttpParseError("connection closed inside a chunked body");
      }
    }
  }

  /** Takes up to `max` bytes already buffered, without reading; may be empty. */
  takeBuffered(max: number): Uint8Array {
    this.#lent = true;
    const n = Math.min(max, this.#end - this.#start);
    const out = this.#buf.subarray(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }

  /** Returns up to `max` bytes (buffered first), or `null` at end of stream. */
  async readSome(max: number): Promise<Uint8Array | null> {
    this.#lent = true;
    if (this.#start === this.#end) {
      // A reader made small for heads grows once it carries a body, so that a body is read
      // in large pieces. Only while it is empty and no read is under way: nothing is moved.
      if (this.#buf.length < BODY_BUFFER && max > this.#buf.length && !this.#ahead) {
        this.#buf = new Uint8Array(BODY_BUFFER);
        this.#start = this.#end = 0;
      }
      if (!(await this.#fill())) return null;
    }
    const n = Math.min(max, this.#end - this.#start);
    const out = this.#buf.subarray(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }
}

/** Writes all of `data`. */
export async function writeAll(w: Writer, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await w.write(data.subarray(off));
}

/** Header fields in their order, names as received. */
export type HeaderList = [name: string, value: string][];

/** A parsed request or response head. */
export interface MessageHead {
  /** Request: method, target. Response: status, reason. */
  method: string;
  target: string;
  status: number;
  reason: string;
  /** Minor version: 1 for HTTP/1.1, 0 for HTTP/1.0. */
  minor: number;
  headers: HeaderList;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** A control character other than HTAB, or DEL: never in a field value (RFC 9110 §5.5). */
// deno-lint-ignore no-control-regex -- matching control characters is the point
const VALUE_CTL = /[\x00-\x08\x0a-\x1f\x7f]/;
/** Optional whitespace around a field value: SP and HTAB only (RFC 9110 §5.6.3). */
function isOws(c: number): boolean {
  return c === 32 || c === 9;
}

/** Whether `s` is a token (RFC 9110 §5.6.2). */
export function isToken(s: string): boolean {
  return TOKEN.test(s);
}

/** Shows a piece of a bad line in an error message with its control characters escaped. */
function quote(s: string, max = 60): string {
  return JSON.stringify(s.slice(0, max)).slice(1, -1);
}

/**
 * Reads one field line (RFC 9112 §5): a token name, a colon with no whitespace before it, and
 * a value with no CR, LF, NUL or other control character but HTAB (RFC 9110 §5.5).
 */
export function parseFieldLine(line: string): [name: string, value: string] {
  return fieldLine(line, false);
}

/** {@linkcode parseFieldLine}; `clean` says the line is known to hold no control character. */
function fieldLine(line: string, clean: boolean): [name: string, value: string] {
  if (line[0] === " " || line[0] === "\t") {
    throw new HttpParseError("obsolete line folding is not accepted");
  }
  const colon = line.indexOf(":");
  const name = colon > 0 ? line.slice(0, colon) : "";
  if (!TOKEN.test(name)) throw new HttpParseError(`invalid header line "${quote(line, 40)}"`);
  // Trimmed by hand: a global regex replace cost more than the rest of the line's parse.
  let start = colon + 1;
  let end = line.length;
  while (start < end && isOws(line.charCodeAt(start))) start++;
  while (end > start && isOws(line.charCodeAt(end - 1))) end--;
  const value = line.slice(start, end);
  if (!clean && VALUE_CTL.test(value)) {
    const what = value.includes("\r")
      ? "a CR"
      : value.includes("\n")
      ? "a LF"
      : value.includes("\0")
      ? "a NUL"
      : "a control character";
    throw new HttpParseError(`header "${quote(name, 40)}" has ${what} in its value`);
  }
  return [name, value];
}

/**
 * Splits a head into its lines. Every line must end in CRLF and hold no other CR or LF: a bare
 * LF or CR is refused (RFC 9112 §2.2), never read as a line end a backend may not share.
 */
function headLines(head: string, clean: boolean): string[] {
  if (!head.endsWith("\r\n\r\n")) {
    throw new HttpParseError("message head has a line that does not end in CRLF");
  }
  const lines = head.slice(0, -4).split("\r\n");
  // One scan of the whole head usually shows it clean; only a head that is not is searched
  // line by line, for the error that names the line.
  if (clean) return lines;
  for (const line of lines) {
    if (line.includes("\n")) {
      throw new HttpParseError(`message head has a bare LF in "${quote(line)}"`);
    }
    if (line.includes("\r")) {
      throw new HttpParseError(`message head has a bare CR in "${quote(line)}"`);
    }
  }
  return lines;
}

/**
 * Whether a head holds no control character other than HTAB, CR and LF, and every CR and LF
 * is part of a CRLF: then no line has a bare CR or LF and no value a control character. One
 * pass over the characters, several times cheaper than the same test as a regular expression.
 */
function isCleanHead(head: string): boolean {
  for (let i = 0; i < head.length; i++) {
    const c = head.charCodeAt(i);
    if (c >= 0x20 && c !== 0x7f) continue;
    if (c === 9) continue;
    if (c === 13 && head.charCodeAt(i + 1) === 10) continue;
    if (c === 10 && i > 0 && head.charCodeAt(i - 1) === 13) continue;
    return false;
  }
  return true;
}

function parseFields(lines: string[], start: number, clean: boolean): HeaderList {
  const out: HeaderList = new Array(lines.length - start);
  for (let i = start; i < lines.length; i++) out[i - start] = fieldLine(lines[i]!, clean);
  return out;
}

/**
 * Parses a request head (request line and fields). The request line is `method SP target SP
 * HTTP/1.x` with single spaces, a token method and a target of visible ASCII (RFC 9112 §3).
 * More than {@linkcode MAX_REQUEST_FIELDS} fields is a {@linkcode HeadTooLargeError}.
 */
export function parseRequestHead(head: string): MessageHead {
  const req = scanRequestHead(head) ?? parseRequestLines(head);
  if (req.headers.length > MAX_REQUEST_FIELDS) {
    throw new HeadTooLargeError(MAX_REQUEST_FIELDS, "fields");
  }
  return req;
}

/** Token characters (RFC 9110 §5.6.2), by character code below 128. */
const TOKEN_CHAR = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") {
  TOKEN_CHAR[c.charCodeAt(0)] = 1;
}

function isTchar(c: number): boolean {
  return c < 128 && TOKEN_CHAR[c] === 1;
}

/**
 * {@linkcode parseRequestHead} in one pass over the characters, for a head with nothing
 * unusual: the same result as {@linkcode parseRequestLines}, or `null` at the first thing
 * that is not plainly valid, which that parser then reads (and refuses with its message).
 * Most requests take this path; it builds no array of lines and runs no regular expression.
 */
export function scanRequestHead(head: string): MessageHead | null {
  const n = head.length;
  let i = 0;
  while (i < n && isTchar(head.charCodeAt(i))) i++;
  if (i === 0 || head.charCodeAt(i) !== 32) return null;
  const method = head.slice(0, i);
  const t = ++i;
  for (let c = head.charCodeAt(i); c >= 0x21 && c <= 0x7e; c = head.charCodeAt(++i));
  if (i === t || head.charCodeAt(i) !== 32 || !head.startsWith("HTTP/1.", i + 1)) return null;
  const target = head.slice(t, i);
  const minor = head.charCodeAt(i + 8) - 48;
  if ((minor !== 0 && minor !== 1) || head.charCodeAt(i + 9) !== 13) return null;
  if (head.charCodeAt(i + 10) !== 10) return null;
  i += 11;
  const headers: HeaderList = [];
  for (;;) {
    // A line: the empty one that ends the head, or `name:value` with the value's OWS trimmed.
    if (head.charCodeAt(i) === 13) {
      return head.charCodeAt(i + 1) === 10 && i + 2 === n
        ? { method, target, minor, status: 0, reason: "", headers }
        : null;
    }
    const nameStart = i;
    while (i < n && isTchar(head.charCodeAt(i))) i++;
    if (i === nameStart || head.charCodeAt(i) !== 58) return null;
    const name = head.slice(nameStart, i);
    i++;
    while (isOws(head.charCodeAt(i))) i++;
    const valueStart = i;
    let valueEnd = i;
    for (;; i++) {
      const c = head.charCodeAt(i);
      if (c === 13) break;
      if (c === 9 || c === 32) continue;
      // A control character, DEL or the end of the string: the full parser says which.
      if (!(c > 0x20 && c !== 0x7f)) return null;
      valueEnd = i + 1;
    }
    if (head.charCodeAt(i + 1) !== 10) return null;
    headers.push([name, head.slice(valueStart, valueEnd)]);
    i += 2;
  }
}

/** {@linkcode parseRequestHead} line by line, with the error that names what is wrong. */
export function parseRequestLines(head: string): MessageHead {
  const clean = isCleanHead(head);
  const lines = headLines(head, clean);
  const m = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP\/1\.([01])$/.exec(lines[0]!);
  if (!m) throw new HttpParseError(`invalid request line "${quote(lines[0]!)}"`);
  return {
    method: m[1]!,
    target: m[2]!,
    minor: Number(m[3]),
    status: 0,
    reason: "",
    headers: parseFields(lines, 1, clean),
  };
}

/** Parses a response head (status line and fields). */
export function parseResponseHead(head: string): MessageHead {
  const clean = isCleanHead(head);
  const lines = headLines(head, clean);
  // deno-lint-ignore no-control-regex -- a reason phrase has no control characters
  const m = /^HTTP\/1\.([01]) (\d{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?$/.exec(lines[0]!);
  // RFC 9110 §15: a status code from 100 to 599. Another one (000, 099) would be passed on as
  // an interim response, in a status line ("HTTP/1.1 0") no client parses alike.
  if (!m || m[2]! < "100" || m[2]! > "599") {
    throw new HttpParseError(`invalid status line "${quote(lines[0]!)}"`);
  }
  return {
    method: "",
    target: "",
    minor: Number(m[1]),
    status: Number(m[2]),
    reason: m[3] ?? "",
    headers: parseFields(lines, 1, clean),
  };
}

/** All values of a header, joined with commas, or `null`. */
export function getHeader(headers: HeaderList, name: string): string | null {
  const lower = name.toLowerCase();
  let out: string | null = null;
  for (const [k, v] of headers) {
    if (k.length === lower.length && k.toLowerCase() === lower) {
      out = out === null ? v : `${out}, ${v}`;
    }
  }
  return out;
}

/** The comma-separated tokens of a header, lower-cased. */
export function headerTokens(headers: HeaderList, name: string): string[] {
  const v = getHeader(headers, name);
  return v === null ? [] : v.split(",").map((t) => t.trim().toLowerCase()).filter((t) => t);
}

/** Whether a `Via` field of `headers` names `name` as a recipient (RFC 9110 §7.6.3). */
export function viaHas(headers: HeaderList, name: string): boolean {
  for (const [k, v] of headers) {
    if (k.length !== 3 || k.toLowerCase() !== "via") continue;
    for (const hop of v.split(",")) {
      // received-protocol received-by [comment]
      if (hop.trim().split(/[ \t]+/)[1] === name) return true;
    }
  }
  return false;
}

/** How a message body is delimited (RFC 9112 §6.3). */
export type BodyFraming =
  | { kind: "none" }
  | { kind: "length"; length: number }
  | { kind: "chunked" }
  /** Response only: the body runs until the connection closes. */
  | { kind: "close" };

/** Works out the framing of a message body; throws on ambiguous framing (request smuggling). */
export function bodyFraming(
  head: MessageHead,
  isRequest: boolean,
  requestMethod = "",
): BodyFraming {
  if (!isRequest) {
    if (
      requestMethod === "HEAD" || head.status === 204 || head.status === 304 || head.status < 200
    ) {
      return { kind: "none" };
    }
  }
  const te = headerTokens(head.headers, "transfer-encoding");
  const cl = getHeader(head.headers, "content-length");
  if (te.length > 0) {
    // RFC 9112 §6.1: both present is a smuggling attempt or a broken peer; refuse it.
    if (cl !== null) {
      throw new HttpParseError("both Transfer-Encoding and Content-Length are present");
    }
    if (te[te.length - 1] !== "chunked") {
      if (isRequest) throw new HttpParseError(`unsupported Transfer-Encoding "${te.join(", ")}"`);
      return { kind: "close" };
    }
    if (te.length > 1) throw new HttpParseError(`unsupported Transfer-Encoding "${te.join(", ")}"`);
    return { kind: "chunked" };
  }
  if (cl !== null) {
    const values = new Set(cl.split(",").map((v) => v.trim()));
    const [only] = values;
    if (values.size !== 1 || !only || !/^\d{1,15}$/.test(only)) {
      throw new HttpParseError(`invalid Content-Length "${cl}"`);
    }
    const length = Number(only);
    return length === 0 ? { kind: "none" } : { kind: "length", length };
  }
  return isRequest ? { kind: "none" } : { kind: "close" };
}

const COPY_CHUNK = 64 * 1024;

/**
 * Told of the bytes a copy moves: a function, or a counter such as a metric (passed as it is,
 * so a request makes no closure to count its bytes).
 */
export type OnData = ((bytes: number) => void) | { inc(bytes: number): void };

function counted(onData: OnData | undefined, n: number): void {
  if (onData === undefined) return;
  if (typeof onData === "function") onData(n);
  else onData.inc(n);
}

/**
 * Copies a body from `src` to `dst` as `framing` says. With `dechunk`, a chunked body is
 * written as plain data (for an HTTP/1.0 peer). Returns false if `src` ended early.
 */
export async function copyBody(
  src: BufReader,
  dst: Writer,
  framing: BodyFraming,
  dechunk = false,
  onData?: OnData,
): Promise<boolean> {
  switch (framing.kind) {
    case "none":
      return true;
    case "length": {
      let left = framing.length;
      while (left > 0) {
        const part = await src.readSome(Math.min(left, COPY_CHUNK));
        if (!part) return false;
        await writeAll(dst, part);
        counted(onData, part.length);
        left -= part.length;
      }
      return true;
    }
    case "close":
      for (;;) {
        const part = await src.readSome(COPY_CHUNK);
        if (!part) return true;
        await writeAll(dst, part);
        counted(onData, part.length);
      }
    case "chunked": {
      for (;;) {
        const line = await src.readLine(4096);
        const size = chunkSize(line);
        if (!dechunk) await writeAll(dst, encodeLatin1(`${line}\r\n`));
        if (size === 0) {
          // Trailer fields, then the empty line.
          let trailerBytes = 0;
          for (;;) {
            const t = await src.readLine(8192);
            trailerBytes += t.length + 2;
            if (trailerBytes > MAX_TRAILERS) {
              throw new HttpParseError(`trailer section is over ${MAX_TRAILERS} bytes`);
            }
            if (t !== "") checkTrailer(t);
            if (!dechunk) await writeAll(dst, encodeLatin1(`${t}\r\n`));
            if (t === "") return true;
          }
        }
        let left = size;
        while (left > 0) {
          const part = await src.readSome(Math.min(left, COPY_CHUNK));
          if (!part) return false;
          await writeAll(dst, part);
          counted(onData, part.length);
          left -= part.length;
        }
        if ((await src.readLine(2)) !== "") {
          throw new HttpParseError("chunk data is not followed by CRLF");
        }
        if (!dechunk) await writeAll(dst, encodeLatin1("\r\n"));
      }
    }
  }
}

const MAX_TRAILERS = 64 * 1024;

// RFC 9112 §7.1: chunk-size is 1*HEXDIG; chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
// with token names and token or quoted-string values. Nothing else, no CR or NUL, no sign,
// prefix or whitespace before the size.
const TCHAR = "[!#$%&'*+\\-.^_`|~0-9A-Za-z]";
const QUOTED =
  '"(?:[\\t \\x21\\x23-\\x5b\\x5d-\\x7e\\x80-\\xff]|\\\\[\\t \\x21-\\x7e\\x80-\\xff])*"';
const CHUNK_LINE = new RegExp(
  `^([0-9A-Fa-f]+)(?:[ \\t]*;[ \\t]*${TCHAR}+(?:[ \\t]*=[ \\t]*(?:${TCHAR}+|${QUOTED}))?)*$`,
);

/** The size a chunk-size line gives; throws on any other form or a size over 2^53 - 1. */
export function chunkSize(line: string): number {
  const m = CHUNK_LINE.exec(line);
  if (!m) throw new HttpParseError(`invalid chunk size line "${quote(line, 40)}"`);
  const digits = m[1]!.replace(/^0+(?=.)/, "");
  const size = digits.length > 14 ? Infinity : parseInt(digits, 16);
  if (!Number.isSafeInteger(size)) {
    throw new HttpParseError(`chunk size "${quote(m[1]!, 40)}" is too large`);
  }
  return size;
}

/**
 * A trailer field must be a valid field line, and never one that frames or routes the message
 * (RFC 9110 §6.5.1), which a recipient that merges trailers into the head could act on.
 */
function checkTrailer(line: string): void {
  const [name] = parseFieldLine(line);
  const lower = name.toLowerCase();
  if (lower === "content-length" || lower === "transfer-encoding" || lower === "host") {
    throw new HttpParseError(`trailer section has the field "${name}"`);
  }
}
