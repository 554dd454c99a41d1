/**
 * HTTP/2 frames (RFC 9113 §4, §6): the constants, a reader that cuts whole frames out of the
 * bytes of a connection, and writers that append frames to an output buffer.
 *
 * @module
 */

/** Frame types (RFC 9113 §6). */
export const FRAME = {
  DATA: 0,
  HEADERS: 1,
  PRIORITY: 2,
  RST_STREAM: 3,
  SETTINGS: 4,
  PUSH_PROMISE: 5,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
  CONTINUATION: 9,
} as const;

/** Frame flags. */
export const FLAG = {
  END_STREAM: 0x1,
  ACK: 0x1,
  END_HEADERS: 0x4,
  PADDED: 0x8,
  PRIORITY: 0x20,
} as const;

/** Error codes (RFC 9113 §7). */
export const ERROR = {
  NO_ERROR: 0x0,
  PROTOCOL_ERROR: 0x1,
  INTERNAL_ERROR: 0x2,
  FLOW_CONTROL_ERROR: 0x3,
  SETTINGS_TIMEOUT: 0x4,
  STREAM_CLOSED: 0x5,
  FRAME_SIZE_ERROR: 0x6,
  REFUSED_STREAM: 0x7,
  CANCEL: 0x8,
  COMPRESSION_ERROR: 0x9,
  CONNECT_ERROR: 0xa,
  ENHANCE_YOUR_CALM: 0xb,
  INADEQUATE_SECURITY: 0xc,
  HTTP_1_1_REQUIRED: 0xd,
} as const;

/** SETTINGS parameters (RFC 9113 §6.5.2). */
export const SETTING = {
  HEADER_TABLE_SIZE: 0x1,
  ENABLE_PUSH: 0x2,
  MAX_CONCURRENT_STREAMS: 0x3,
  INITIAL_WINDOW_SIZE: 0x4,
  MAX_FRAME_SIZE: 0x5,
  MAX_HEADER_LIST_SIZE: 0x6,
} as const;

/** The client connection preface (RFC 9113 §3.4). */
export const PREFACE: Uint8Array = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** The length of a frame header. */
export const FRAME_HEADER = 9;
/** The largest flow-control window (RFC 9113 §6.9.1). */
export const MAX_WINDOW = 2 ** 31 - 1;
/** The initial flow-control window of streams and connections (RFC 9113 §6.9.2). */
export const DEFAULT_WINDOW = 65_535;
/** The default and smallest SETTINGS_MAX_FRAME_SIZE. */
export const DEFAULT_MAX_FRAME = 16_384;

/** The name of an error code, for messages and logs. */
export function errorName(code: number): string {
  for (const [name, c] of Object.entries(ERROR)) if (c === code) return name;
  return `0x${code.toString(16)}`;
}

/**
 * A connection error (RFC 9113 §5.4.1): the connection ends with GOAWAY and `code`; or, when
 * `stream` is set, a stream error (§5.4.2): that stream is reset with `code`.
 */
export class H2Error extends Error {
  /**
   * @param code the error code sent in GOAWAY or RST_STREAM
   * @param stream the stream of a stream error; 0 for a connection error
   */
  constructor(message: string, readonly code: number, readonly stream = 0) {
    super(message);
    this.name = "H2Error";
  }
}

/** One frame as read; `payload` is a view into the reader's buffer, valid until the next read. */
export interface Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Uint8Array;
}

/**
 * Cuts whole frames out of a byte stream. `push` the bytes read, then take frames with `next`
 * until it gives `null`. A frame longer than `maxFrameSize` is a FRAME_SIZE_ERROR (§4.2).
 */
export class FrameReader {
  #buf = new Uint8Array(32 * 1024);
  #start = 0;
  #end = 0;
  /** The largest payload accepted: our SETTINGS_MAX_FRAME_SIZE. */
  maxFrameSize = DEFAULT_MAX_FRAME;

  /** Where the next read goes: room for at least one full frame. */
  space(): Uint8Array {
    if (this.#start === this.#end) this.#start = this.#end = 0;
    const need = this.maxFrameSize + FRAME_HEADER;
    if (this.#buf.length - this.#end < need) {
      const used = this.#end - this.#start;
      if (used + need <= this.#buf.length) {
        this.#buf.copyWithin(0, this.#start, this.#end);
      } else {
        const b = new Uint8Array(used + need);
        b.set(this.#buf.subarray(this.#start, this.#end));
        this.#buf = b;
      }
      this.#start = 0;
      this.#end = used;
    }
    return this.#buf.subarray(this.#end);
  }

  /** Records `n` bytes written into the last `space()`. */
  filled(n: number): void {
    this.#end += n;
  }

  /** Appends bytes from elsewhere (those read before the reader existed). */
  push(bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.length) {
      const room = this.space();
      const n = Math.min(room.length, bytes.length - at);
      room.set(bytes.subarray(at, at + n));
      this.filled(n);
      at += n;
    }
  }

  /** The bytes buffered and not yet taken. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /** Takes `n` raw bytes (the preface), or `null` if fewer are buffered. */
  take(n: number): Uint8Array | null {
    if (this.#end - this.#start < n) return null;
    const out = this.#buf.subarray(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }

  /** One frame object, filled again by each `next`. */
  readonly #frame: Frame = { type: 0, flags: 0, stream: 0, payload: new Uint8Array(0) };

  /** The next whole frame (the same object each time, refilled), or `null` when more bytes are needed. */
  next(): Frame | null {
    const b = this.#buf;
    const s = this.#start;
    if (this.#end - s < FRAME_HEADER) return null;
    const len = (b[s]! << 16) | (b[s + 1]! << 8) | b[s + 2]!;
    if (len > this.maxFrameSize) {
      throw new H2Error(
        `Frame of ${len} bytes is over the ${this.maxFrameSize}-byte limit`,
        ERROR.FRAME_SIZE_ERROR,
      );
    }
    if (this.#end - s < FRAME_HEADER + len) return null;
    const frame = this.#frame;
    frame.type = b[s + 3]!;
    frame.flags = b[s + 4]!;
    frame.stream = ((b[s + 5]! & 0x7f) << 24 | (b[s + 6]! << 16) | (b[s + 7]! << 8) | b[s + 8]!) >>>
      0;
    frame.payload = b.subarray(s + FRAME_HEADER, s + FRAME_HEADER + len);
    this.#start = s + FRAME_HEADER + len;
    return frame;
  }
}

/**
 * The payload of a DATA or HEADERS frame without its padding (§6.1, §6.2); a pad length that
 * reaches the end of the frame is a PROTOCOL_ERROR.
 */
export function unpad(f: Frame): Uint8Array {
  if (!(f.flags & FLAG.PADDED)) return f.payload;
  if (f.payload.length < 1) {
    throw new H2Error("Padded frame with no pad length", ERROR.FRAME_SIZE_ERROR);
  }
  const pad = f.payload[0]!;
  if (pad >= f.payload.length) {
    throw new H2Error(`Pad length ${pad} is not smaller than the frame`, ERROR.PROTOCOL_ERROR);
  }
  return f.payload.subarray(1, f.payload.length - pad);
}

import { encode, encodedSize } from "./hpack.ts";

/** An output buffer that frames are appended to, then written out and reset. */
export class FrameWriter {
  buf: Uint8Array = new Uint8Array(16 * 1024);
  len = 0;

  /** Makes room for `n` more bytes. */
  room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const b = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    b.set(this.buf.subarray(0, this.len));
    this.buf = b;
  }

  /** Appends a frame header; the payload (`len` bytes) must follow. */
  header(len: number, type: number, flags: number, stream: number): void {
    this.room(FRAME_HEADER + len);
    const b = this.buf;
    const at = this.len;
    b[at] = len >>> 16;
    b[at + 1] = (len >>> 8) & 0xff;
    b[at + 2] = len & 0xff;
    b[at + 3] = type;
    b[at + 4] = flags;
    b[at + 5] = (stream >>> 24) & 0x7f;
    b[at + 6] = (stream >>> 16) & 0xff;
    b[at + 7] = (stream >>> 8) & 0xff;
    b[at + 8] = stream & 0xff;
    this.len = at + FRAME_HEADER;
  }

  /** Appends raw bytes. */
  bytes(p: Uint8Array): void {
    this.room(p.length);
    this.buf.set(p, this.len);
    this.len += p.length;
  }

  /** Appends a 32-bit big-endian number. */
  u32(v: number): void {
    this.room(4);
    const b = this.buf;
    b[this.len++] = (v >>> 24) & 0xff;
    b[this.len++] = (v >>> 16) & 0xff;
    b[this.len++] = (v >>> 8) & 0xff;
    b[this.len++] = v & 0xff;
  }

  /** A SETTINGS frame with `settings` as [id, value] pairs, or an ACK when `ack`. */
  settings(settings: [number, number][], ack = false): void {
    this.header(ack ? 0 : settings.length * 6, FRAME.SETTINGS, ack ? FLAG.ACK : 0, 0);
    if (ack) return;
    for (const [id, v] of settings) {
      this.buf[this.len++] = id >>> 8;
      this.buf[this.len++] = id & 0xff;
      this.u32(v);
    }
  }

  /** A WINDOW_UPDATE frame. */
  windowUpdate(stream: number, increment: number): void {
    this.header(4, FRAME.WINDOW_UPDATE, 0, stream);
    this.u32(increment);
  }

  /** An RST_STREAM frame. */
  rstStream(stream: number, code: number): void {
    this.header(4, FRAME.RST_STREAM, 0, stream);
    this.u32(code);
  }

  /** A PING frame (an ACK echoes the peer's 8 bytes). */
  ping(data: Uint8Array, ack: boolean): void {
    this.header(8, FRAME.PING, ack ? FLAG.ACK : 0, 0);
    this.bytes(data);
  }

  /** A GOAWAY frame; `debug` is a short ASCII reason. */
  goaway(lastStream: number, code: number, debug = ""): void {
    const text = new TextEncoder().encode(debug.slice(0, 200));
    this.header(8 + text.length, FRAME.GOAWAY, 0, 0);
    this.u32(lastStream);
    this.u32(code);
    this.bytes(text);
  }

  /** A DATA frame. */
  data(stream: number, p: Uint8Array, end: boolean): void {
    this.header(p.length, FRAME.DATA, end ? FLAG.END_STREAM : 0, stream);
    this.bytes(p);
  }

  /**
   * `fields` HPACK-encoded (`hpack.ts`'s `encode`) straight into this buffer as one HEADERS
   * frame, or HEADERS and CONTINUATION frames when the block is over `maxFrame`.
   */
  fields(stream: number, fields: [string, string][], end: boolean, maxFrame: number): void {
    this.room(FRAME_HEADER + encodedSize(fields));
    const start = this.len;
    const blockAt = start + FRAME_HEADER;
    const blockEnd = encode(fields, this.buf, blockAt);
    const n = blockEnd - blockAt;
    if (n > maxFrame) {
      const block = this.buf.slice(blockAt, blockEnd);
      this.len = start;
      this.headers(stream, block, end, maxFrame);
      return;
    }
    this.header(n, FRAME.HEADERS, (end ? FLAG.END_STREAM : 0) | FLAG.END_HEADERS, stream);
    this.len = blockEnd;
  }

  /**
   * A header block as one HEADERS frame and as many CONTINUATION frames as `maxFrame` needs
   * (§4.3: the frames of one block are never interleaved with others).
   */
  headers(stream: number, block: Uint8Array, end: boolean, maxFrame: number): void {
    let at = 0;
    let type: number = FRAME.HEADERS;
    let flags = end ? FLAG.END_STREAM : 0;
    do {
      const n = Math.min(maxFrame, block.length - at);
      const last = at + n === block.length;
      this.header(n, type, flags | (last ? FLAG.END_HEADERS : 0), stream);
      this.bytes(block.subarray(at, at + n));
      at += n;
      type = FRAME.CONTINUATION;
      flags = 0;
    } while (at < block.length);
  }
}
