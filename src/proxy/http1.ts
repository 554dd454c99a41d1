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

/** Header bytes are ISO-8859-1 on the wire (RFC 9110 §5.5). */
const latin1 = new TextDecoder("latin1");

/** Encodes a string whose characters are all below U+0100 as ISO-8859-1. */
export function encodeLatin1(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
}

/** A malformed message; the proxy answers 400 (from a client) or 502 (from a backend). */
export class HttpParseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HttpParseError";
  }
}

/** A buffered reader over a connection. */
export class BufReader {
  #buf: Uint8Array;
  #start = 0;
  #end = 0;
  readonly #src: Reader;

  constructor(src: Reader, size = 16 * 1024) {
    this.#src = src;
    this.#buf = new Uint8Array(size);
  }

  /** Bytes read from the connection and not consumed yet. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /** Reads more bytes into the buffer; false at end of stream. */
  async #fill(): Promise<boolean> {
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
    const n = await this.#src.read(this.#buf.subarray(this.#end));
    if (n === null) return false;
    this.#end += n;
    return true;
  }

  /**
   * Reads a message head up to and including the empty line. Returns `null` at a clean end of
   * stream before the first byte; throws if the stream ends inside a head or it exceeds `limit`.
   */
  async readHead(limit: number): Promise<string | null> {
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
      for (let i = Math.max(this.#start + scanned, this.#start + 3); i < this.#end; i++) {
        if (b[i] === 10 && b[i - 1] === 13 && b[i - 2] === 10 && b[i - 3] === 13) {
          const head = latin1.decode(b.subarray(this.#start, i + 1));
          this.#start = i + 1;
          return head;
        }
      }
      const have = this.#end - this.#start;
      if (have > limit) throw new HttpParseError(`message head is over ${limit} bytes`);
      scanned = Math.max(0, have - 3);
      if (!(await this.#fill())) {
        if (have === 0) return null;
        throw new HttpParseError("connection closed inside a message head");
      }
    }
  }

  /** Reads one CRLF-terminated line (without the CRLF), for chunk sizes and trailers. */
  async readLine(limit: number): Promise<string> {
    for (;;) {
      const b = this.#buf;
      for (let i = this.#start; i < this.#end; i++) {
        if (b[i] === 10) {
          const end = i > this.#start && b[i - 1] === 13 ? i - 1 : i;
          const line = latin1.decode(b.subarray(this.#start, end));
          this.#start = i + 1;
          return line;
        }
      }
      if (this.#end - this.#start > limit) throw new HttpParseError(`line is over ${limit} bytes`);
      if (!(await this.#fill())) {
        throw new HttpParseError("connection closed inside a chunked body");
      }
    }
  }

  /** Takes up to `max` bytes already buffered, without reading; may be empty. */
  takeBuffered(max: number): Uint8Array {
    const n = Math.min(max, this.#end - this.#start);
    const out = this.#buf.subarray(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }

  /** Returns up to `max` bytes (buffered first), or `null` at end of stream. */
  async readSome(max: number): Promise<Uint8Array | null> {
    if (this.#start === this.#end && !(await this.#fill())) return null;
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

function parseFields(lines: string[]): HeaderList {
  const headers: HeaderList = [];
  for (const line of lines) {
    if (line === "") continue;
    if (line[0] === " " || line[0] === "\t") {
      throw new HttpParseError("obsolete line folding is not accepted");
    }
    const colon = line.indexOf(":");
    const name = colon > 0 ? line.slice(0, colon) : "";
    if (!TOKEN.test(name)) throw new HttpParseError(`invalid header line "${line.slice(0, 40)}"`);
    headers.push([name, line.slice(colon + 1).trim()]);
  }
  return headers;
}

/** Parses a request head (request line and fields). */
export function parseRequestHead(head: string): MessageHead {
  const lines = head.split("\r\n");
  const m = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP\/1\.([01])$/.exec(lines[0] ?? "");
  if (!m) throw new HttpParseError(`invalid request line "${(lines[0] ?? "").slice(0, 60)}"`);
  return {
    method: m[1]!,
    target: m[2]!,
    minor: Number(m[3]),
    status: 0,
    reason: "",
    headers: parseFields(lines.slice(1)),
  };
}

/** Parses a response head (status line and fields). */
export function parseResponseHead(head: string): MessageHead {
  const lines = head.split("\r\n");
  const m = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(lines[0] ?? "");
  if (!m) throw new HttpParseError(`invalid status line "${(lines[0] ?? "").slice(0, 60)}"`);
  return {
    method: "",
    target: "",
    minor: Number(m[1]),
    status: Number(m[2]),
    reason: m[3] ?? "",
    headers: parseFields(lines.slice(1)),
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
 * Copies a body from `src` to `dst` as `framing` says. With `dechunk`, a chunked body is
 * written as plain data (for an HTTP/1.0 peer). Returns false if `src` ended early.
 */
export async function copyBody(
  src: BufReader,
  dst: Writer,
  framing: BodyFraming,
  dechunk = false,
  onData?: (bytes: number) => void,
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
        onData?.(part.length);
        left -= part.length;
      }
      return true;
    }
    case "close":
      for (;;) {
        const part = await src.readSome(COPY_CHUNK);
        if (!part) return true;
        await writeAll(dst, part);
        onData?.(part.length);
      }
    case "chunked":
      for (;;) {
        const line = await src.readLine(4096);
        const size = parseInt(line.split(";")[0]!.trim(), 16);
        if (!/^[0-9a-fA-F]+$/.test(line.split(";")[0]!.trim()) || !Number.isSafeInteger(size)) {
          throw new HttpParseError(`invalid chunk size line "${line.slice(0, 40)}"`);
        }
        if (!dechunk) await writeAll(dst, encodeLatin1(`${line}\r\n`));
        if (size === 0) {
          // Trailer fields, then the empty line.
          for (;;) {
            const t = await src.readLine(8192);
            if (!dechunk) await writeAll(dst, encodeLatin1(`${t}\r\n`));
            if (t === "") return true;
          }
        }
        let left = size;
        while (left > 0) {
          const part = await src.readSome(Math.min(left, COPY_CHUNK));
          if (!part) return false;
          await writeAll(dst, part);
          onData?.(part.length);
          left -= part.length;
        }
        if ((await src.readLine(2)) !== "") {
          throw new HttpParseError("chunk data is not followed by CRLF");
        }
        if (!dechunk) await writeAll(dst, encodeLatin1("\r\n"));
      }
  }
}
