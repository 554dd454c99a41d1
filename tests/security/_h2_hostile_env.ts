/**
 * The pieces of the HTTP/2 adversarial tier (tests/security/h2_hostile_test.ts): a peer that
 * writes frames by hand and reads what meshd sends back, a hostile h2c backend built on meshd's
 * own frame layer (it sends whatever headers and DATA a case asks for), a NodeProxy in front
 * of it, and an HTTP/1 client that reads with a deadline. Everything binds 127.0.69.x.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Logger } from "../../src/observability/mod.ts";
import { NodeProxy } from "../../src/proxy/mod.ts";
import {
  type Fields,
  H2Connection,
  type H2ConnectionOptions,
  type H2Stream,
} from "../../src/proxy/h2/connection.ts";
import {
  errorName,
  FRAME,
  type Frame,
  FrameReader,
  FrameWriter,
  PREFACE,
} from "../../src/proxy/h2/frames.ts";
import { HpackDecoder } from "../../src/proxy/h2/hpack.ts";
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";

/** The proxy's address. */
export const PROXY_HOST = "127.0.69.1";
/** Where a bare H2Connection server listens. */
export const SERVER_HOST = "127.0.69.2";
/** The hostile backend's address. */
export const BACKEND_HOST = "127.0.69.3";

const quiet = new Logger({ level: "error", write: () => {} });

/** A client that writes frames by hand and reads the frames it is sent. */
export class RawPeer {
  readonly #conn: Deno.TcpConn;
  readonly #reader = new FrameReader();
  readonly seen: Frame[] = [];
  readonly decoder = new HpackDecoder();
  closed = false;
  #reading: Promise<number | null> | null = null;

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
    this.#reader.maxFrameSize = 1 << 24;
  }

  /** Connects, writes the preface and SETTINGS with `settings`. */
  static async connect(
    hostname: string,
    port: number,
    settings: [number, number][] = [],
  ): Promise<RawPeer> {
    const p = new RawPeer(await Deno.connect({ hostname, port }));
    await p.send((w) => {
      w.bytes(PREFACE);
      w.settings(settings);
    });
    return p;
  }

  /** Writes the frames `build` appends. */
  async send(build: (w: FrameWriter) => void): Promise<void> {
    const w = new FrameWriter();
    build(w);
    let at = 0;
    try {
      while (at < w.len) at += await this.#conn.write(w.buf.subarray(at, w.len));
    } catch {
      this.closed = true; // the other side closed first
    }
  }

  /** Reads until a frame matches `pred` (returned) or the connection closes (null). */
  async until(pred: (f: Frame) => boolean, ms = 5000): Promise<Frame | null> {
    const deadline = Date.now() + ms;
    while (true) {
      for (let f = this.#reader.next(); f !== null; f = this.#reader.next()) {
        const got = { ...f, payload: f.payload.slice() };
        this.seen.push(got);
        if (pred(got)) return got;
      }
      if (this.closed) return null;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching frame within ${ms} ms; saw ${this.describe()}`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      this.#reading ??= this.#conn.read(this.#reader.space()).catch(() => null);
      const n = await Promise.race([
        this.#reading,
        new Promise<"late">((r) => timer = setTimeout(() => r("late"), left)),
      ]);
      clearTimeout(timer);
      if (n === "late") continue;
      this.#reading = null;
      if (n === null) this.closed = true;
      else this.#reader.filled(n);
    }
  }

  /** The code of the RST_STREAM on `stream`. */
  async reset(stream: number): Promise<string> {
    const f = await this.until((f) => f.type === FRAME.RST_STREAM && f.stream === stream);
    assert.ok(f, `no RST_STREAM on ${stream}; saw ${this.describe()}`);
    return errorName(u32(f.payload, 0));
  }

  /** The code of the GOAWAY the other side sent. */
  async goaway(): Promise<string> {
    const f = await this.until((f) => f.type === FRAME.GOAWAY);
    assert.ok(f, `no GOAWAY; saw ${this.describe()}`);
    return errorName(u32(f.payload, 4));
  }

  /** Sends a PING and waits for its ACK: the connection still serves. */
  async alive(): Promise<void> {
    await this.send((w) => w.ping(new Uint8Array(8).fill(9), false));
    const f = await this.until((f) => f.type === FRAME.PING && (f.flags & 1) !== 0);
    assert.ok(f, `the connection ended; saw ${this.describe()}`);
  }

  /** The frames seen so far, for messages. */
  describe(): string {
    return this.seen.map((f) => {
      const name = Object.entries(FRAME).find(([, t]) => t === f.type)?.[0] ?? f.type;
      const code = f.type === FRAME.GOAWAY
        ? ` ${errorName(u32(f.payload, 4))}`
        : f.type === FRAME.RST_STREAM
        ? ` ${errorName(u32(f.payload, 0))}`
        : "";
      return `${name}#${f.stream}${code}`;
    }).join(", ") + (this.closed ? ", closed" : "");
  }

  close(): void {
    try {
      this.#conn.close();
    } catch { /* closed */ }
  }
}

/** The big-endian 32-bit number at `at` in `p`. */
export function u32(p: Uint8Array, at: number): number {
  return new DataView(p.buffer, p.byteOffset).getUint32(at);
}

/** A request's fields. */
export function request(extra: Fields = [], method = "POST"): Fields {
  return [
    [":method", method],
    [":scheme", "http"],
    [":path", "/x"],
    [":authority", "hostile.default.mesh"],
    ...extra,
  ];
}

/**
 * Runs `fn` with an H2Connection server on SERVER_HOST whose streams go to `onStream`; the
 * server connection is destroyed afterwards.
 */
export async function withServer(
  onStream: (s: H2Stream, fields: Fields, end: boolean) => void,
  fn: (port: number, server: () => H2Connection) => Promise<void>,
  options: Partial<H2ConnectionOptions> = {},
): Promise<void> {
  const listener = Deno.listen({ hostname: SERVER_HOST, port: 0 });
  let server: H2Connection | null = null;
  const accepted = listener.accept().then((conn) => {
    server = new H2Connection(conn, { role: "server", onStream, ...options });
    return server;
  });
  try {
    await fn(listener.addr.port, () => server!);
  } finally {
    listener.close();
    (await accepted.catch(() => null))?.destroy();
  }
}

/** What a hostile backend does with a request: answer it through its stream. */
export type Answer = (s: H2Stream, fields: Fields) => void;

/**
 * Runs `fn` with a NodeProxy on PROXY_HOST whose service `hostile.default.mesh` (scheme h2c)
 * has one endpoint: an h2c backend on BACKEND_HOST that answers every request with `answer`.
 */
export async function withHostileBackend(
  answer: Answer,
  fn: (proxyPort: number) => Promise<void>,
  options: { backend?: Partial<H2ConnectionOptions>; responseTimeoutMs?: number } = {},
): Promise<void> {
  const listener = Deno.listen({ hostname: BACKEND_HOST, port: 0 });
  const conns = new Set<H2Connection>();
  const serving = (async () => {
    for await (const conn of listener) {
      const c: H2Connection = new H2Connection(conn, {
        role: "server",
        onStream: (s, fields) => answer(s, fields),
        onClose: () => conns.delete(c),
        ...options.backend,
      });
      conns.add(c);
    }
  })().catch(() => {});
  const proxy = new NodeProxy({
    hostname: PROXY_HOST,
    httpPort: 0,
    logger: quiet,
    responseTimeoutMs: options.responseTimeoutMs,
  });
  await proxy.start();
  try {
    await proxy.apply(meshConfig([{
      name: "hostile",
      scheme: "h2c",
      ports: [{ port: 80, endpoints: [endpoint(BACKEND_HOST, listener.addr.port)] }],
    }]));
    await fn(Number(proxy.httpAddress.split(":")[1]));
  } finally {
    await proxy.stop();
    listener.close();
    for (const c of conns) c.destroy();
    await serving;
  }
}

/**
 * Sends `data` to `port` on PROXY_HOST over HTTP/1 and reads until the connection closes or
 * `ms` pass; returns what came (Latin-1) and whether the connection closed.
 */
export async function http1(
  port: number,
  data: string,
  ms = 3000,
): Promise<{ text: string; closed: boolean }> {
  const conn = await Deno.connect({ hostname: PROXY_HOST, port });
  const chunks: Uint8Array[] = [];
  let closed = false;
  try {
    let bytes = new TextEncoder().encode(data);
    while (bytes.length > 0) bytes = bytes.subarray(await conn.write(bytes));
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      const buf = new Uint8Array(64 * 1024);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const n = await Promise.race([
        conn.read(buf).catch(() => null),
        new Promise<"late">((r) => timer = setTimeout(() => r("late"), deadline - Date.now())),
      ]);
      clearTimeout(timer);
      if (n === "late") break;
      if (n === null) {
        closed = true;
        break;
      }
      chunks.push(buf.slice(0, n));
    }
  } finally {
    conn.close();
  }
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return { text: new TextDecoder("latin1").decode(all), closed };
}
