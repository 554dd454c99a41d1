/**
 * One HTTP/2 connection over a Deno TCP connection (RFC 9113), as a server (clients of meshd)
 * or as a client (meshd to an h2c backend): streams and their states, SETTINGS, flow control
 * on both levels, PING, GOAWAY and RST_STREAM, and the limits a hostile peer meets.
 *
 * Frames produced while handling one read (or in one turn of the event loop) go out in one
 * write. Streams are driven by callbacks, not Node streams, so a proxied request costs a few
 * objects.
 *
 * @module
 */
import {
  DEFAULT_MAX_FRAME,
  DEFAULT_WINDOW,
  ERROR,
  FLAG,
  FRAME,
  type Frame,
  FrameReader,
  FrameWriter,
  H2Error,
  MAX_WINDOW,
  PREFACE,
  SETTING,
  unpad,
} from "./frames.ts";
import { encodeBlock, HpackDecoder, HpackError } from "./hpack.ts";

/** Header fields in their order, as [name, value]. */
export type Fields = [string, string][];

/** Options for {@linkcode H2Connection}. */
export interface H2ConnectionOptions {
  /** "server" for a client of meshd, "client" for meshd's own connection to a backend. */
  role: "server" | "client";
  /** Server: a new stream with its request headers. */
  onStream?: (stream: H2Stream, fields: Fields, end: boolean) => void;
  /** Streams the peer may open at once (server). Default 100. */
  maxConcurrentStreams?: number;
  /** Largest decoded header list accepted (SETTINGS_MAX_HEADER_LIST_SIZE). Default 64 KiB. */
  maxHeaderListSize?: number;
  /**
   * As a server, the regular (not pseudo-) fields a request may have; more is answered 431.
   * Default 100, as the HTTP/1 entrypoint's `MAX_REQUEST_FIELDS`.
   */
  maxRequestFields?: number;
  /** Our receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE). Default 64 KiB. */
  streamWindow?: number;
  /** Our receive window for the whole connection. Default 1 MiB. */
  connectionWindow?: number;
  /**
   * Streams the peer may reset (or have refused) in a burst, refilled at this many per
   * second, before the connection ends with ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487).
   * Default 200.
   */
  resetBurst?: number;
  /**
   * SETTINGS, PING, PRIORITY and empty DATA frames the peer may send in a burst, refilled at
   * this many per second, before the connection ends with ENHANCE_YOUR_CALM (CVE-2019-9512,
   * -9515, -9518). Default 1000.
   */
  controlBurst?: number;
  /** Bytes waiting to be written past which the connection ends (a peer that never reads). */
  maxBacklog?: number;
  /** Called once when the connection has ended, with the error that ended it, if any. */
  onClose?: (error: H2Error | null) => void;
}

interface Pending {
  data: Uint8Array;
  end: boolean;
  /** The stream whose receive window is given back when this data goes out. */
  credit: H2Stream | null;
  /** `data` is a header block (trailers queued behind data), not DATA. */
  headers?: boolean;
}

/**
 * One stream. Set `onHeaders`, `onData` and `onClose` to follow it; data that arrives before
 * `onData` is set (or without it, for `read`) is kept, within the stream's window.
 */
export class H2Stream {
  /** The peer sent END_STREAM. */
  remoteEnded = false;
  /** We sent END_STREAM. */
  localEnded = false;
  /** The stream is over: both ends done, or reset; `code` tells which. */
  closed = false;
  /** The error code it was closed with (NO_ERROR when both ends finished). */
  code: number = ERROR.NO_ERROR;
  /** The peer reset it, or refused it by REFUSED_STREAM or GOAWAY (the request was not processed). */
  refused = false;
  /** Our headers went out. */
  headersSent = false;
  /** Response headers, trailers (or, on the server, request trailers). */
  onHeaders: ((fields: Fields, end: boolean) => void) | null = null;
  /** Data as it arrives: a view valid during the call only; call `credit` once it is used. */
  onData: ((chunk: Uint8Array, end: boolean) => void) | null = null;
  /** The stream has closed; `byPeer` when the peer reset it or the connection ended. */
  onClose: ((code: number, byPeer: boolean) => void) | null = null;

  sendWindow: number;
  /** @internal What the peer may still send (our window less what it sent). */
  _recvWindow: number;
  /** @internal Client: the final response headers came. */
  _gotResponse = false;
  /** @internal The content-length of the peer's message, or -1 when it has none (or no body). */
  _length = -1;
  /** @internal DATA bytes received from the peer, padding left out. */
  _received = 0;
  /** @internal Client: the request is a HEAD, whose response has no content. */
  _head = false;
  #recvUnacked = 0;
  #pending: Pending[] = [];
  #inbox: (Uint8Array | null)[] = [];
  #reader: ((v: Uint8Array | null) => void) | null = null;
  #drain: (() => void) | null = null;

  constructor(readonly id: number, readonly conn: H2Connection, sendWindow: number) {
    this.sendWindow = sendWindow;
    this._recvWindow = conn.streamWindow;
  }

  /** Sends headers (response, request trailers or response trailers). */
  sendHeaders(fields: Fields, end: boolean): void {
    if (this.closed || this.localEnded) return;
    this.headersSent = true;
    if (this.#pending.length > 0 && end) {
      // Trailers wait for the data queued before them.
      this.#pending.push({ data: encodeBlock(fields), end: true, credit: null, headers: true });
      return;
    }
    this.conn._headers(this, fields, end);
    if (end) this._localEnd();
  }

  /**
   * Sends `chunk` as DATA within the flow-control windows, queueing (a copy of) what does not
   * fit; when it goes out, `credit`'s receive window is given back by its length.
   */
  sendData(chunk: Uint8Array, end: boolean, credit: H2Stream | null = null): void {
    if (this.closed || this.localEnded) {
      credit?.credit(chunk.length);
      return;
    }
    if (this.#pending.length === 0 && this.conn._trySend(this, chunk, end)) {
      if (credit) this.conn._giveBack(credit, chunk.length);
      if (end) this._localEnd();
      return;
    }
    this.#pending.push({ data: chunk.slice(), end, credit });
    if (this.#pending.length === 1) this._flush();
  }

  /** Sends `chunk`; resolves once it has gone out (rejects if the stream closed first). */
  write(chunk: Uint8Array): Promise<number> {
    this.sendData(chunk, false);
    if (this.closed) return Promise.reject(new H2Error("Stream closed", this.code, this.id));
    if (this.#pending.length === 0) return Promise.resolve(chunk.length);
    return new Promise((resolve, reject) => {
      this.#drain = () =>
        this.closed
          ? reject(new H2Error("Stream closed", this.code, this.id))
          : resolve(chunk.length);
    });
  }

  /** Data or headers of ours wait for flow-control window: the peer has not taken them. */
  get backlogged(): boolean {
    return this.#pending.length > 0;
  }

  /** Ends our side. */
  end(): void {
    this.sendData(new Uint8Array(0), true);
  }

  /** Resets the stream with `code` (RST_STREAM), unless it is over already. */
  reset(code: number): void {
    if (this.closed) return;
    this.conn._reset(this, code);
    this._close(code, false);
  }

  /** Gives `n` bytes of receive window back to the peer (they were used). */
  credit(n: number): void {
    if (this.remoteEnded || this.closed || n === 0) return;
    this.#recvUnacked += n;
    if (this.#recvUnacked >= this.conn.streamWindow / 2) {
      this.conn._windowUpdate(this.id, this.#recvUnacked);
      this._recvWindow += this.#recvUnacked;
      this.#recvUnacked = 0;
    }
  }

  /** Data has arrived that no one has taken yet. */
  get hasData(): boolean {
    return this.#inbox.some((c) => c !== null);
  }

  /** The next chunk received (its window given back), or `null` at the end of the stream. */
  read(): Promise<Uint8Array | null> {
    const next = this.#inbox.shift();
    if (next !== undefined) {
      if (next !== null) this.credit(next.length);
      return Promise.resolve(next);
    }
    if (this.remoteEnded || this.closed) return Promise.resolve(null);
    return new Promise((resolve) => this.#reader = resolve);
  }

  /** @internal Data from the peer. */
  _data(chunk: Uint8Array, end: boolean): void {
    if (end) this.remoteEnded = true;
    if (this.onData) {
      this.onData(chunk, end);
    } else if (this.#reader) {
      const r = this.#reader;
      this.#reader = null;
      if (chunk.length > 0) {
        this.credit(chunk.length);
        r(chunk.slice());
        if (end) this.#inbox.push(null);
      } else if (end) r(null);
      else this.#reader = r;
    } else {
      if (chunk.length > 0) this.#inbox.push(chunk.slice());
      if (end) this.#inbox.push(null);
    }
    if (end && this.localEnded) this._close(ERROR.NO_ERROR, false);
  }

  /** Hands the data kept so far to `onData` (set it first). */
  replay(): void {
    const kept = this.#inbox;
    this.#inbox = [];
    for (let i = 0; i < kept.length; i++) {
      const c = kept[i]!;
      if (c === null) this.onData?.(new Uint8Array(0), true);
      else this.onData?.(c, i + 1 < kept.length && kept[i + 1] === null);
      if (kept[i + 1] === null) i++;
    }
  }

  /** @internal Sends queued data as far as the windows allow. */
  _flush(): void {
    while (this.#pending.length > 0 && !this.closed) {
      const p = this.#pending[0]!;
      if (p.headers) {
        this.#pending.shift();
        this.conn._rawHeaders(this, p.data, true);
        this._localEnd();
        break;
      }
      const sent = this.conn._sendSome(this, p.data, p.end);
      if (sent === p.data.length && (p.end ? sent >= 0 : true)) {
        this.#pending.shift();
        if (p.credit) this.conn._giveBack(p.credit, sent);
        if (p.end) this._localEnd();
        continue;
      }
      if (sent > 0) {
        if (p.credit) this.conn._giveBack(p.credit, sent);
        p.data = p.data.subarray(sent);
      }
      return;
    }
    if (this.#pending.length === 0 && this.#drain) {
      const d = this.#drain;
      this.#drain = null;
      d();
    }
  }

  /** Data is queued behind flow control. */
  get pending(): boolean {
    return this.#pending.length > 0;
  }

  /** @internal */
  get _hasPending(): boolean {
    return this.#pending.length > 0;
  }

  /** @internal */
  _localEnd(): void {
    this.localEnded = true;
    if (this.remoteEnded) this._close(ERROR.NO_ERROR, false);
  }

  /** @internal Ends the stream once. */
  _close(code: number, byPeer: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.code = code;
    for (const p of this.#pending) p.credit?.credit(p.data.length);
    this.#pending = [];
    this.conn._forget(this);
    if (this.#reader) {
      const r = this.#reader;
      this.#reader = null;
      r(null);
    }
    if (this.#drain) {
      const d = this.#drain;
      this.#drain = null;
      d();
    }
    this.onClose?.(code, byPeer);
  }
}

/** The default `maxBacklog`. */
const MAX_BACKLOG = 4 * 1024 * 1024;

/** Whether `fields` has `name` with exactly `value`. */
function fieldIs(fields: Fields, name: string, value: string): boolean {
  for (let i = 0; i < fields.length; i++) {
    if (fields[i]![0] === name && fields[i]![1] === value) return true;
  }
  return false;
}

const DIGITS = /^[0-9]{1,15}$/;
/** A lower-case token (RFC 9110 §5.1, RFC 9113 §8.2.1). */
const FIELD_NAME = /^[a-z0-9!#$%&'*+\-.^_`|~]+$/;
/** RFC 9113 §8.2.1: what no field value may hold. */
const BAD_VALUE = /[\r\n\0]/;

/**
 * Throws a stream error (PROTOCOL_ERROR) when the fields of a `response` (or of trailers) on
 * stream `id` are malformed: a name that is not a lower-case token, CR, LF or NUL in a value
 * (RFC 9113 §8.2.1), or a pseudo-header other than one :status first in a response (§8.3.2;
 * trailers have none, §8.1). Passed on, such a field could end a line of an HTTP/1 head and
 * start a field of the proxy's making.
 */
function checkFields(fields: Fields, response: boolean, id: number): void {
  for (let i = 0; i < fields.length; i++) {
    const name = fields[i]![0];
    const ok = name === ":status" ? response && i === 0 : FIELD_NAME.test(name);
    if (!ok || BAD_VALUE.test(fields[i]![1])) {
      throw new H2Error(
        `Malformed ${response ? "response" : "trailers"}: field ${
          JSON.stringify(name.slice(0, 40))
        } ${ok ? "has CR, LF or NUL in its value" : "is not allowed there"}`,
        ERROR.PROTOCOL_ERROR,
        id,
      );
    }
  }
  if (response && fields[0]?.[0] !== ":status") {
    throw new H2Error("Malformed response: no :status first", ERROR.PROTOCOL_ERROR, id);
  }
}

/** The fields of a list that are not pseudo-header fields. */
function regularFields(fields: Fields): number {
  let n = 0;
  for (const f of fields) if (f[0].charCodeAt(0) !== 58) n++;
  return n;
}

/** RFC 9110 §15: a status code is three digits, 100 to 599. */
const STATUS = /^[1-5][0-9][0-9]$/;

/**
 * Throws a stream error (PROTOCOL_ERROR) for a response :status that is no status code, 101
 * (RFC 9113 §8.6: no Switching Protocols in HTTP/2), or interim (1xx) on a HEADERS frame that
 * ends the stream (§8.1.1). Passed on to an HTTP/1 client, any of these is a status line its
 * parser reads differently ("HTTP/1.1 NaN", or a 1xx it skips to read the next bytes as the
 * final response).
 */
function checkStatus(status: string, end: boolean, id: number): void {
  if (STATUS.test(status) && status !== "101" && !(end && status[0] === "1")) return;
  throw new H2Error(
    `Malformed response: :status ${JSON.stringify(status.slice(0, 40))}${
      end && STATUS.test(status) ? " ends the stream" : ""
    }`,
    ERROR.PROTOCOL_ERROR,
    id,
  );
}

/**
 * The content-length of a message on stream `id` that the DATA must match, or -1 when it has
 * none or `noContent`; a value that is not one number (RFC 9110 §8.6: a list of equal numbers
 * is that number), or a number above 0 on a message that `end`s with its headers, makes the
 * message malformed (RFC 9113 §8.1.1): a stream error.
 */
function checkLength(fields: Fields, end: boolean, id: number, noContent: boolean): number {
  let length = -1;
  for (let i = 0; i < fields.length; i++) {
    if (fields[i]![0] !== "content-length") continue;
    for (const part of fields[i]![1].split(",")) {
      const v = part.trim();
      if (!DIGITS.test(v) || (length >= 0 && Number(v) !== length)) {
        throw new H2Error(
          `content-length "${fields[i]![1].slice(0, 40)}" is not one number`,
          ERROR.PROTOCOL_ERROR,
          id,
        );
      }
      length = Number(v);
    }
  }
  if (noContent) return -1;
  if (end && length > 0) {
    throw new H2Error(
      `content-length ${length} on a message with no DATA`,
      ERROR.PROTOCOL_ERROR,
      id,
    );
  }
  return length;
}

/** A token bucket: `burst` tokens, refilled at `burst` a second. */
class Bucket {
  #tokens: number;
  #at = performance.now();
  constructor(readonly burst: number) {
    this.#tokens = burst;
  }
  take(): boolean {
    const now = performance.now();
    this.#tokens = Math.min(this.burst, this.#tokens + (now - this.#at) * this.burst / 1000);
    this.#at = now;
    if (this.#tokens < 1) return false;
    this.#tokens--;
    return true;
  }
}

/** An HTTP/2 connection; see the module doc. */
export class H2Connection {
  readonly #conn: Deno.Conn;
  readonly #opts: H2ConnectionOptions;
  readonly #client: boolean;
  readonly #reader = new FrameReader();
  #out = new FrameWriter();
  #spare = new FrameWriter();
  #writing = false;
  #scheduled = false;
  readonly #decoder: HpackDecoder;
  readonly #streams = new Map<number, H2Stream>();
  /** Highest stream ID the peer opened (server) or we opened (client). */
  #lastStream = 0;
  #nextStream = 1;
  #gotSettings = false;
  #prefaceLeft: number;
  /** A header block being read: its stream, flags and fragments. */
  #block:
    | { stream: number; flags: number; parts: Uint8Array[]; size: number; frames: number }
    | null = null;
  // The peer's settings.
  #peerInitialWindow = DEFAULT_WINDOW;
  #peerMaxFrame = DEFAULT_MAX_FRAME;
  #peerMaxStreams = Infinity;
  #connSendWindow = DEFAULT_WINDOW;
  #connRecvUnacked = 0;
  readonly streamWindow: number;
  readonly #connWindow: number;
  readonly #maxStreams: number;
  readonly #maxList: number;
  readonly #resets: Bucket;
  readonly #control: Bucket;
  #blocked = new Set<H2Stream>();
  /** GOAWAY sent or received: no new streams. */
  #goingAway = false;
  /** The peer's GOAWAY last stream ID. */
  #peerLast = Infinity;
  #ended = false;
  /**
   * Server: the last streams we reset before the peer had ended them, oldest first. Trailers
   * the peer had in flight on them are dropped, not taken for a stream opened out of order.
   */
  #resetByUs: number[] = [];
  /** Streams of other connections and the window owed to them, in pairs (`_giveBack`). */
  #owed: (H2Stream | number)[] = [];
  /** The backlog below which window is given back at once: a quarter of `maxBacklog`. */
  readonly #lowWater: number;
  /** Waiters for a stream slot (client: the peer's MAX_CONCURRENT_STREAMS). */
  #slotWaiters: (() => void)[] = [];
  /** When the last stream closed (or the connection began), for idle timeouts. */
  idleSince: number = Date.now();
  /** Resolves when the connection has ended. */
  readonly done: Promise<void>;
  #resolveDone!: () => void;

  constructor(conn: Deno.Conn, options: H2ConnectionOptions, early?: Uint8Array) {
    this.#conn = conn;
    this.#opts = options;
    this.#client = options.role === "client";
    this.streamWindow = options.streamWindow ?? 64 * 1024;
    this.#connWindow = options.connectionWindow ?? 1024 * 1024;
    this.#maxStreams = options.maxConcurrentStreams ?? 100;
    this.#maxList = options.maxHeaderListSize ?? 64 * 1024;
    this.#decoder = new HpackDecoder({ maxListSize: this.#maxList });
    this.#resets = new Bucket(options.resetBurst ?? 200);
    this.#control = new Bucket(options.controlBurst ?? 1000);
    this.#lowWater = (options.maxBacklog ?? MAX_BACKLOG) / 4;
    this.#prefaceLeft = this.#client ? 0 : PREFACE.length;
    this.done = new Promise((r) => this.#resolveDone = r);
    if (this.#client) this.#out.bytes(PREFACE);
    const settings: [number, number][] = [
      [SETTING.MAX_CONCURRENT_STREAMS, this.#client ? 0 : this.#maxStreams],
      [SETTING.INITIAL_WINDOW_SIZE, this.streamWindow],
      [SETTING.MAX_HEADER_LIST_SIZE, this.#maxList],
    ];
    if (this.#client) settings.unshift([SETTING.ENABLE_PUSH, 0]);
    this.#out.settings(settings);
    if (this.#connWindow > DEFAULT_WINDOW) {
      this.#out.windowUpdate(0, this.#connWindow - DEFAULT_WINDOW);
    }
    if (early && early.length > 0) this.#reader.push(early);
    this.#schedule();
    void this.#readLoop();
  }

  /** Streams open now. */
  get streams(): number {
    return this.#streams.size;
  }

  /** The connection takes no new streams (GOAWAY either way, or ended). */
  get closing(): boolean {
    return this.#goingAway || this.#ended;
  }

  /** The connection has ended. */
  get ended(): boolean {
    return this.#ended;
  }

  /**
   * Client: opens a stream with request headers `fields`; waits for a slot when the peer's
   * MAX_CONCURRENT_STREAMS is reached, for `waitMs` at most. Throws an {@linkcode H2Error}
   * (REFUSED_STREAM: nothing was sent) when the connection cannot take new streams or no slot
   * came in time (a peer that allows none, or whose streams never end).
   */
  async request(fields: Fields, end: boolean, waitMs = Infinity): Promise<H2Stream> {
    const deadline = Date.now() + waitMs;
    while (this.#streams.size >= this.#peerMaxStreams && !this.closing) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new H2Error(
          `No stream slot within ${waitMs} ms (the peer allows ${this.#peerMaxStreams} at once)`,
          ERROR.REFUSED_STREAM,
        );
      }
      let wake!: () => void;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((r) => {
        wake = r;
        this.#slotWaiters.push(r);
        if (Number.isFinite(left)) timer = setTimeout(r, left);
      });
      clearTimeout(timer);
      const at = this.#slotWaiters.indexOf(wake);
      if (at >= 0) this.#slotWaiters.splice(at, 1);
    }
    const s = this.tryRequest(fields, end);
    if (s === null) throw new H2Error("Connection is closing", ERROR.REFUSED_STREAM);
    return s;
  }

  /**
   * `request` without waiting: the stream, or `null` when no slot is free or the connection
   * takes no new streams. Its frames go out in the same write as the others made in this
   * turn of the event loop.
   */
  tryRequest(fields: Fields, end: boolean): H2Stream | null {
    if (
      this.closing || this.#nextStream > MAX_WINDOW ||
      this.#streams.size >= this.#peerMaxStreams
    ) {
      return null;
    }
    const id = this.#nextStream;
    this.#nextStream += 2;
    this.#lastStream = id;
    const s = new H2Stream(id, this, this.#peerInitialWindow);
    this.#streams.set(id, s);
    s.headersSent = true;
    s._head = fieldIs(fields, ":method", "HEAD");
    this._headers(s, fields, end);
    if (end) s.localEnded = true;
    return s;
  }

  /**
   * Ends the connection gracefully: GOAWAY with NO_ERROR, no new streams, and the socket
   * closed once the open streams are done (at once when there are none).
   */
  drain(): void {
    if (this.#goingAway || this.#ended) return;
    this.#goingAway = true;
    this.#out.goaway(this.#client ? 0 : this.#lastStream, ERROR.NO_ERROR);
    this.#schedule();
    this.#wake();
    if (this.#streams.size === 0) void this.#closeAfterFlush(null);
  }

  /**
   * Ends the connection without waiting for its streams: GOAWAY with NO_ERROR (so the peer
   * knows which streams were not processed), open streams closed with CANCEL, and the socket
   * closed once the GOAWAY is written (at most 1 s later).
   */
  close(): void {
    if (this.#ended) return;
    if (!this.#goingAway) {
      this.#goingAway = true;
      this.#out.goaway(this.#client ? 0 : this.#lastStream, ERROR.NO_ERROR);
      this.#schedule();
    }
    for (const s of [...this.#streams.values()]) s.reset(ERROR.CANCEL);
    void this.#closeAfterFlush(null);
  }

  /** Ends the connection now; open streams close with CANCEL. */
  destroy(): void {
    this.#end(null);
  }

  // --- Internals used by H2Stream.

  /** @internal */
  _headers(s: H2Stream, fields: Fields, end: boolean): void {
    this.#out.fields(s.id, fields, end, this.#peerMaxFrame);
    this.#schedule();
  }

  /** @internal */
  _rawHeaders(s: H2Stream, block: Uint8Array, end: boolean): void {
    this.#out.headers(s.id, block, end, this.#peerMaxFrame);
    this.#schedule();
  }

  /** @internal Sends all of `chunk` if the windows allow, else nothing. */
  _trySend(s: H2Stream, chunk: Uint8Array, end: boolean): boolean {
    const n = chunk.length;
    if (n > s.sendWindow || n > this.#connSendWindow || this.#ended) return false;
    this.#writeData(s, chunk, end);
    return true;
  }

  /** @internal Sends as much of `chunk` as the windows allow; returns the bytes sent. */
  _sendSome(s: H2Stream, chunk: Uint8Array, end: boolean): number {
    const n = Math.min(chunk.length, s.sendWindow, this.#connSendWindow);
    if (n < chunk.length || (n === 0 && !end)) {
      if (n > 0) this.#writeData(s, chunk.subarray(0, n), false);
      this.#blocked.add(s);
      return n;
    }
    this.#writeData(s, chunk, end);
    return n;
  }

  #writeData(s: H2Stream, chunk: Uint8Array, end: boolean): void {
    const max = this.#peerMaxFrame;
    if (chunk.length <= max) this.#out.data(s.id, chunk, end);
    else {
      this.#writeFrames(s, chunk, end, max);
    }
    s.sendWindow -= chunk.length;
    this.#connSendWindow -= chunk.length;
    this.#schedule();
  }

  #writeFrames(s: H2Stream, chunk: Uint8Array, end: boolean, max: number): void {
    let at = 0;
    do {
      const n = Math.min(max, chunk.length - at);
      const last = at + n === chunk.length;
      this.#out.data(s.id, chunk.subarray(at, at + n), end && last);
      at += n;
    } while (at < chunk.length);
  }

  /**
   * @internal `s` (a stream of another connection whose data went into our output) gets `n`
   * bytes of receive window back: at once while our backlog is small, else once it has been
   * written down. So a peer that opens its windows wide and reads nothing holds the sender
   * back rather than filling our memory.
   */
  _giveBack(s: H2Stream, n: number): void {
    if (this.#backlog <= this.#lowWater || this.#ended) s.credit(n);
    else this.#owed.push(s, n);
  }

  /** Gives back the window owed to other connections' streams. */
  #payOwed(): void {
    const owed = this.#owed;
    this.#owed = [];
    for (let i = 0; i < owed.length; i += 2) {
      (owed[i] as H2Stream).credit(owed[i + 1] as number);
    }
  }

  /** @internal */
  _reset(s: H2Stream, code: number): void {
    if (this.#ended) return;
    if (!this.#client && !s.remoteEnded) {
      this.#resetByUs.push(s.id);
      if (this.#resetByUs.length > 128) this.#resetByUs.shift();
    }
    this.#out.rstStream(s.id, code);
    this.#schedule();
  }

  /** @internal */
  _windowUpdate(stream: number, n: number): void {
    if (this.#ended) return;
    this.#out.windowUpdate(stream, n);
    this.#schedule();
  }

  /** @internal A stream is over. */
  _forget(s: H2Stream): void {
    if (this.#streams.get(s.id) !== s) return;
    this.#streams.delete(s.id);
    this.#blocked.delete(s);
    if (this.#streams.size === 0) {
      this.idleSince = Date.now();
      if (this.#goingAway && !this.#ended) void this.#closeAfterFlush(null);
    }
    const w = this.#slotWaiters.shift();
    w?.();
  }

  // --- Writing.

  #schedule(): void {
    if (this.#scheduled || this.#writing) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      void this.#flush();
    });
  }

  /** The write in progress, if any. */
  #flushing: Promise<void> | null = null;

  #flush(): Promise<void> {
    if (!this.#writing) {
      this.#writing = true;
      this.#flushing = this.#writeOut();
    }
    return this.#flushing!;
  }

  async #writeOut(): Promise<void> {
    try {
      while (this.#out.len > 0 && !this.#ended) {
        const w = this.#out;
        this.#out = this.#spare;
        this.#spare = w;
        let at = 0;
        while (at < w.len) at += await this.#conn.write(w.buf.subarray(at, w.len));
        w.len = 0;
        if (this.#owed.length > 0 && this.#backlog <= this.#lowWater) this.#payOwed();
        if (w.buf.length > 256 * 1024) w.buf = new Uint8Array(16 * 1024);
      }
    } catch {
      this.#end(null);
    } finally {
      this.#writing = false;
    }
  }

  /** The bytes waiting to be written. */
  get #backlog(): number {
    return this.#out.len + (this.#writing ? this.#spare.len : 0);
  }

  /** Ends the connection once what is queued has been written (at most 1 s later). */
  async #closeAfterFlush(error: H2Error | null): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<void>((r) => timer = setTimeout(r, 1000));
    const written = (async () => {
      while ((this.#writing || this.#out.len > 0) && !this.#ended) {
        await this.#flush();
      }
    })();
    await Promise.race([written, late]);
    clearTimeout(timer);
    this.#end(error);
  }

  // --- Reading.

  async #readLoop(): Promise<void> {
    try {
      // Frames already pushed (the bytes read before this connection was made).
      this.#process();
      while (!this.#ended) {
        const n = await this.#conn.read(this.#reader.space());
        if (n === null) break;
        this.#reader.filled(n);
        this.#process();
      }
      this.#end(null);
    } catch (e) {
      if (e instanceof H2Error && e.stream === 0) {
        this.#fail(e);
      } else if (e instanceof HpackError) {
        this.#fail(new H2Error(`Bad header block: ${e.message}`, ERROR.COMPRESSION_ERROR));
      } else {
        this.#end(e instanceof H2Error ? e : null); // the socket failed
      }
    }
  }

  /** Ends the connection for a connection error: GOAWAY with its code, then close. */
  #fail(e: H2Error): void {
    if (this.#ended) return;
    this.#goingAway = true;
    this.#out.goaway(this.#client ? 0 : this.#lastStream, e.code, e.message);
    void this.#closeAfterFlush(e);
    // Stop reading: nothing more from this peer is acted on.
    for (const s of [...this.#streams.values()]) s._close(ERROR.CANCEL, true);
  }

  #end(error: H2Error | null): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#goingAway = true;
    try {
      this.#conn.close();
    } catch { /* closed */ }
    for (const s of [...this.#streams.values()]) s._close(error?.code ?? ERROR.CANCEL, true);
    for (const w of this.#slotWaiters.splice(0)) w();
    this.#payOwed();
    this.#opts.onClose?.(error);
    this.#resolveDone();
  }

  #wake(): void {
    for (const w of this.#slotWaiters.splice(0)) w();
  }

  #process(): void {
    if (this.#prefaceLeft > 0) {
      const got = this.#reader.take(PREFACE.length);
      if (got === null) return;
      for (let i = 0; i < PREFACE.length; i++) {
        if (got[i] !== PREFACE[i]) {
          throw new H2Error("Bad connection preface", ERROR.PROTOCOL_ERROR);
        }
      }
      this.#prefaceLeft = 0;
    }
    for (let f = this.#reader.next(); f !== null && !this.#ended; f = this.#reader.next()) {
      try {
        this.#frame(f);
      } catch (e) {
        if (!(e instanceof H2Error) || e.stream === 0) throw e;
        // A stream error: reset that stream, keep the connection.
        const s = this.#streams.get(e.stream);
        if (s) s.reset(e.code);
        else this._reset({ id: e.stream } as H2Stream, e.code);
        this.#chargeReset();
      }
    }
    if (this.#backlog > (this.#opts.maxBacklog ?? MAX_BACKLOG)) {
      throw new H2Error("Peer does not read what it asks for", ERROR.ENHANCE_YOUR_CALM);
    }
  }

  #chargeReset(): void {
    if (!this.#resets.take()) {
      throw new H2Error("Too many streams reset", ERROR.ENHANCE_YOUR_CALM);
    }
  }

  #chargeControl(what: string): void {
    if (!this.#control.take()) {
      throw new H2Error(`Too many ${what} frames`, ERROR.ENHANCE_YOUR_CALM);
    }
  }

  #frame(f: Frame): void {
    if (!this.#gotSettings && (f.type !== FRAME.SETTINGS || (f.flags & FLAG.ACK))) {
      // RFC 9113 §3.4: the preface's first frame is SETTINGS.
      throw new H2Error("First frame is not SETTINGS", ERROR.PROTOCOL_ERROR);
    }
    if (this.#block !== null && f.type !== FRAME.CONTINUATION) {
      // §6.10: a header block is contiguous.
      throw new H2Error("Frame inside a header block", ERROR.PROTOCOL_ERROR);
    }
    switch (f.type) {
      case FRAME.DATA:
        return this.#onData(f);
      case FRAME.HEADERS:
        return this.#onHeaders(f);
      case FRAME.PRIORITY:
        this.#needStream(f);
        this.#chargeControl("PRIORITY");
        if (f.payload.length !== 5) {
          throw new H2Error("PRIORITY frame is not 5 bytes", ERROR.FRAME_SIZE_ERROR, f.stream);
        }
        return;
      case FRAME.RST_STREAM:
        return this.#onReset(f);
      case FRAME.SETTINGS:
        return this.#onSettings(f);
      case FRAME.PUSH_PROMISE:
        // We never enable push, and clients may not push (§8.4).
        throw new H2Error("PUSH_PROMISE is not allowed", ERROR.PROTOCOL_ERROR);
      case FRAME.PING:
        if (f.stream !== 0) throw new H2Error("PING on a stream", ERROR.PROTOCOL_ERROR);
        if (f.payload.length !== 8) {
          throw new H2Error("PING is not 8 bytes", ERROR.FRAME_SIZE_ERROR);
        }
        if (f.flags & FLAG.ACK) return;
        this.#chargeControl("PING");
        this.#out.ping(f.payload, true);
        this.#schedule();
        return;
      case FRAME.GOAWAY:
        return this.#onGoaway(f);
      case FRAME.WINDOW_UPDATE:
        return this.#onWindowUpdate(f);
      case FRAME.CONTINUATION:
        return this.#onContinuation(f);
      default:
        return; // §5.5: unknown frame types are ignored
    }
  }

  #needStream(f: Frame): void {
    if (f.stream === 0) throw new H2Error(`Frame type ${f.type} on stream 0`, ERROR.PROTOCOL_ERROR);
  }

  /** Whether `id` is a stream that was never opened (idle, §5.1). */
  #idle(id: number): boolean {
    if (this.#client) return id >= this.#nextStream || id % 2 === 0;
    return id > this.#lastStream;
  }

  #onData(f: Frame): void {
    this.#needStream(f);
    const len = f.payload.length;
    // Connection flow control counts the whole payload, padding included (§6.9.1).
    this.#connRecvUnacked += len;
    if (this.#connRecvUnacked > this.#connWindow) {
      throw new H2Error("DATA beyond the connection window", ERROR.FLOW_CONTROL_ERROR);
    }
    if (this.#connRecvUnacked >= this.#connWindow / 2) {
      this.#out.windowUpdate(0, this.#connRecvUnacked);
      this.#connRecvUnacked = 0;
      this.#schedule();
    }
    const s = this.#streams.get(f.stream);
    if (!s) {
      if (this.#idle(f.stream)) throw new H2Error("DATA on an idle stream", ERROR.PROTOCOL_ERROR);
      return; // a stream we closed or reset: frames in flight are dropped
    }
    if (s.remoteEnded) throw new H2Error("DATA after END_STREAM", ERROR.STREAM_CLOSED, s.id);
    const data = unpad(f);
    const end = (f.flags & FLAG.END_STREAM) !== 0;
    if (data.length === 0 && !end) this.#chargeControl("empty DATA");
    s._recvWindow -= len;
    if (s._recvWindow < 0) {
      throw new H2Error("DATA beyond the stream window", ERROR.FLOW_CONTROL_ERROR, s.id);
    }
    if (s._length >= 0) {
      // RFC 9113 §8.1.1: DATA that disagrees with content-length makes the message malformed
      // (a stream error), found before any of it is passed on.
      s._received += data.length;
      if (s._received > s._length || (end && s._received !== s._length)) {
        throw new H2Error(
          `${
            end ? "" : "At least "
          }${s._received} bytes of DATA against content-length ${s._length}`,
          ERROR.PROTOCOL_ERROR,
          s.id,
        );
      }
    }
    if (len > data.length) s.credit(len - data.length);
    s._data(data, end);
  }

  #onHeaders(f: Frame): void {
    this.#needStream(f);
    let p = unpad(f);
    if (f.flags & FLAG.PRIORITY) {
      if (p.length < 5) throw new H2Error("HEADERS priority cut short", ERROR.FRAME_SIZE_ERROR);
      const dep = ((p[0]! & 0x7f) << 24 | p[1]! << 16 | p[2]! << 8 | p[3]!) >>> 0;
      p = p.subarray(5);
      if (dep === f.stream) {
        throw new H2Error("Stream depends on itself", ERROR.PROTOCOL_ERROR, f.stream);
      }
    }
    if (f.flags & FLAG.END_HEADERS) {
      // The whole block in one frame (the usual case): decoded in place, not copied.
      if (p.length > 2 * this.#maxList) {
        throw new H2Error(`Header block over ${2 * this.#maxList} bytes`, ERROR.ENHANCE_YOUR_CALM);
      }
      this.#headerBlock(f.stream, f.flags, p);
      return;
    }
    this.#block = {
      stream: f.stream,
      flags: f.flags,
      parts: [p.slice()],
      size: p.length,
      frames: 1,
    };
    this.#checkBlock();
  }

  #onContinuation(f: Frame): void {
    const b = this.#block;
    if (b === null || f.stream !== b.stream) {
      throw new H2Error("CONTINUATION without a header block", ERROR.PROTOCOL_ERROR);
    }
    b.parts.push(f.payload.slice());
    b.size += f.payload.length;
    b.frames++;
    this.#checkBlock();
    if (f.flags & FLAG.END_HEADERS) this.#endBlock();
  }

  /** CONTINUATION floods: a block may not grow past twice the header list limit or 64 frames. */
  #checkBlock(): void {
    const b = this.#block!;
    if (b.size > 2 * this.#maxList || b.frames > 64) {
      throw new H2Error(
        `Header block over ${b.frames > 64 ? "64 frames" : `${2 * this.#maxList} bytes`}`,
        ERROR.ENHANCE_YOUR_CALM,
      );
    }
  }

  #endBlock(): void {
    const b = this.#block!;
    this.#block = null;
    let block = b.parts[0]!;
    if (b.parts.length > 1) {
      block = new Uint8Array(b.size);
      let at = 0;
      for (const p of b.parts) {
        block.set(p, at);
        at += p.length;
      }
    }
    this.#headerBlock(b.stream, b.flags, block);
  }

  /** A whole header block on `id` with the flags of its HEADERS frame. */
  #headerBlock(id: number, flags: number, block: Uint8Array): void {
    const fields: Fields = [];
    // Always decoded, so the table stays in step with the peer's (RFC 7541 §2.2).
    const fits = this.#decoder.decode(block, fields);
    const end = (flags & FLAG.END_STREAM) !== 0;
    const s = this.#streams.get(id);
    if (s) {
      if (s.remoteEnded) throw new H2Error("HEADERS after END_STREAM", ERROR.STREAM_CLOSED, id);
      if (!fits) throw new H2Error("Header list too large", ERROR.PROTOCOL_ERROR, id);
      if (this.#client && !s._gotResponse) {
        checkFields(fields, true, id);
        const status = fields[0]![1];
        checkStatus(status, end, id);
        // Interim responses (1xx) are not passed on.
        if (status[0] === "1") return;
        s._gotResponse = true;
        // RFC 9110 §6.4.1: a response to HEAD, a 204 or a 304 has no content, whatever its
        // content-length says.
        const noContent = s._head || status === "204" || status === "304";
        s._length = checkLength(fields, end, id, noContent);
      } else if (!end) {
        // §8.1: trailers carry END_STREAM.
        throw new H2Error("Trailers without END_STREAM", ERROR.PROTOCOL_ERROR, id);
      } else {
        checkFields(fields, false, id);
        if (s._length >= 0 && s._received !== s._length) {
          throw new H2Error(
            `${s._received} bytes of DATA against content-length ${s._length}`,
            ERROR.PROTOCOL_ERROR,
            id,
          );
        }
      }
      if (end) s.remoteEnded = true;
      s.onHeaders?.(fields, end);
      if (end && s.localEnded) s._close(ERROR.NO_ERROR, false);
      else if (end) s._data(new Uint8Array(0), true);
      return;
    }
    if (this.#client) {
      if (this.#idle(id)) {
        throw new H2Error("HEADERS on a stream we did not open", ERROR.PROTOCOL_ERROR);
      }
      return; // a stream we reset
    }
    if (id <= this.#lastStream && this.#resetByUs.includes(id)) {
      // §5.1: frames on a stream we reset are ignored (the block was decoded all the same, to
      // keep the HPACK table in step).
      this.#chargeControl("HEADERS on a reset stream");
      return;
    }
    // Server: a new stream. §5.1.1: client streams are odd and increasing.
    if (id % 2 === 0 || id <= this.#lastStream) {
      throw new H2Error(`HEADERS on stream ${id}, which cannot be opened`, ERROR.PROTOCOL_ERROR);
    }
    this.#lastStream = id;
    if (this.#goingAway) {
      this._reset({ id } as H2Stream, ERROR.REFUSED_STREAM);
      return;
    }
    if (this.#streams.size >= this.#maxStreams) {
      // §5.1.2: over our SETTINGS_MAX_CONCURRENT_STREAMS.
      this.#chargeReset();
      this._reset({ id } as H2Stream, ERROR.REFUSED_STREAM);
      return;
    }
    const s2 = new H2Stream(id, this, this.#peerInitialWindow);
    this.#streams.set(id, s2);
    if (end) s2.remoteEnded = true;
    if (!fits || regularFields(fields) > (this.#opts.maxRequestFields ?? 100)) {
      // RFC 9113 §10.5.1: 431 for a header list over the limit.
      s2.sendHeaders([[":status", "431"]], true);
      if (!end) s2.reset(ERROR.NO_ERROR);
      return;
    }
    s2._length = checkLength(fields, end, id, false);
    this.#opts.onStream?.(s2, fields, end);
  }

  #onReset(f: Frame): void {
    this.#needStream(f);
    if (f.payload.length !== 4) {
      throw new H2Error("RST_STREAM is not 4 bytes", ERROR.FRAME_SIZE_ERROR);
    }
    if (this.#idle(f.stream)) {
      throw new H2Error("RST_STREAM on an idle stream", ERROR.PROTOCOL_ERROR);
    }
    const s = this.#streams.get(f.stream);
    if (!s) return;
    const p = f.payload;
    const code = ((p[0]! << 24) | (p[1]! << 16) | (p[2]! << 8) | p[3]!) >>> 0;
    if (!this.#client) this.#chargeReset(); // rapid reset (CVE-2023-44487)
    if (code === ERROR.REFUSED_STREAM) s.refused = true;
    s._close(code, true);
  }

  #onSettings(f: Frame): void {
    if (f.stream !== 0) throw new H2Error("SETTINGS on a stream", ERROR.PROTOCOL_ERROR);
    if (f.flags & FLAG.ACK) {
      if (f.payload.length !== 0) {
        throw new H2Error("SETTINGS ACK with a payload", ERROR.FRAME_SIZE_ERROR);
      }
      return;
    }
    if (f.payload.length % 6 !== 0) {
      throw new H2Error("SETTINGS length is not a multiple of 6", ERROR.FRAME_SIZE_ERROR);
    }
    if (this.#gotSettings) this.#chargeControl("SETTINGS");
    this.#gotSettings = true;
    const p = f.payload;
    for (let i = 0; i < p.length; i += 6) {
      const id = (p[i]! << 8) | p[i + 1]!;
      const v = ((p[i + 2]! << 24) | (p[i + 3]! << 16) | (p[i + 4]! << 8) | p[i + 5]!) >>> 0;
      switch (id) {
        case SETTING.ENABLE_PUSH:
          // §6.5.2: 0 or 1, and a server never sends 1.
          if (v > 1 || (v === 1 && this.#client)) {
            throw new H2Error(`ENABLE_PUSH ${v}`, ERROR.PROTOCOL_ERROR);
          }
          break;
        case SETTING.MAX_CONCURRENT_STREAMS:
          this.#peerMaxStreams = v;
          this.#wake();
          break;
        case SETTING.INITIAL_WINDOW_SIZE: {
          if (v > MAX_WINDOW) {
            throw new H2Error(`INITIAL_WINDOW_SIZE ${v}`, ERROR.FLOW_CONTROL_ERROR);
          }
          const delta = v - this.#peerInitialWindow;
          this.#peerInitialWindow = v;
          for (const s of this.#streams.values()) {
            s.sendWindow += delta;
            if (s.sendWindow > MAX_WINDOW) {
              throw new H2Error("INITIAL_WINDOW_SIZE overflows a window", ERROR.FLOW_CONTROL_ERROR);
            }
          }
          if (delta > 0) this.#unblock();
          break;
        }
        case SETTING.MAX_FRAME_SIZE:
          if (v < DEFAULT_MAX_FRAME || v > 2 ** 24 - 1) {
            throw new H2Error(`MAX_FRAME_SIZE ${v}`, ERROR.PROTOCOL_ERROR);
          }
          this.#peerMaxFrame = v;
          break;
        default:
          break; // HEADER_TABLE_SIZE: our encoder keeps no table; unknown ones are ignored
      }
    }
    this.#out.settings([], true);
    this.#schedule();
  }

  #onGoaway(f: Frame): void {
    if (f.stream !== 0) throw new H2Error("GOAWAY on a stream", ERROR.PROTOCOL_ERROR);
    if (f.payload.length < 8) {
      throw new H2Error("GOAWAY shorter than 8 bytes", ERROR.FRAME_SIZE_ERROR);
    }
    const p = f.payload;
    const last = ((p[0]! & 0x7f) << 24 | p[1]! << 16 | p[2]! << 8 | p[3]!) >>> 0;
    this.#goingAway = true;
    this.#peerLast = Math.min(this.#peerLast, last);
    this.#wake();
    // Streams above `last` were not processed: they may be retried elsewhere (§6.8).
    for (const s of [...this.#streams.values()]) {
      if (s.id > last && (this.#client ? s.id % 2 === 1 : s.id % 2 === 0)) {
        s.refused = true;
        s._close(ERROR.REFUSED_STREAM, true);
      }
    }
    if (this.#streams.size === 0) void this.#closeAfterFlush(null);
  }

  #onWindowUpdate(f: Frame): void {
    if (f.payload.length !== 4) {
      throw new H2Error("WINDOW_UPDATE is not 4 bytes", ERROR.FRAME_SIZE_ERROR);
    }
    const p = f.payload;
    const inc = ((p[0]! & 0x7f) << 24 | p[1]! << 16 | p[2]! << 8 | p[3]!) >>> 0;
    if (f.stream === 0) {
      if (inc === 0) throw new H2Error("WINDOW_UPDATE of 0", ERROR.PROTOCOL_ERROR);
      this.#connSendWindow += inc;
      if (this.#connSendWindow > MAX_WINDOW) {
        throw new H2Error("Connection window over 2^31-1", ERROR.FLOW_CONTROL_ERROR);
      }
      this.#unblock();
      return;
    }
    if (this.#idle(f.stream)) {
      throw new H2Error("WINDOW_UPDATE on an idle stream", ERROR.PROTOCOL_ERROR);
    }
    const s = this.#streams.get(f.stream);
    if (!s) return;
    if (inc === 0) throw new H2Error("WINDOW_UPDATE of 0", ERROR.PROTOCOL_ERROR, s.id);
    s.sendWindow += inc;
    if (s.sendWindow > MAX_WINDOW) {
      throw new H2Error("Stream window over 2^31-1", ERROR.FLOW_CONTROL_ERROR, s.id);
    }
    if (s._hasPending) {
      this.#blocked.delete(s);
      s._flush();
    }
  }

  #unblock(): void {
    const blocked = [...this.#blocked];
    this.#blocked.clear();
    for (const s of blocked) {
      if (this.#connSendWindow <= 0) {
        this.#blocked.add(s);
        continue;
      }
      s._flush();
    }
  }

  /** A short description for logs. */
  toString(): string {
    return `h2 ${this.#opts.role} connection (${this.#streams.size} streams)`;
  }
}
