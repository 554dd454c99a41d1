/**
 * H2Connection against a raw peer on loopback that writes frames by hand: the protocol errors
 * and limits a hostile client meets, and flow control.
 */
import assert from "node:assert/strict";
import {
  type Fields,
  H2Connection,
  type H2ConnectionOptions,
  type H2Stream,
} from "./connection.ts";
import {
  ERROR,
  errorName,
  FLAG,
  FRAME,
  type Frame,
  FrameReader,
  FrameWriter,
  PREFACE,
  SETTING,
} from "./frames.ts";
import { encodeBlock, HpackDecoder } from "./hpack.ts";

const HOST = "127.0.61.2";

/** A frame with its payload copied. */
type Got = Frame;

/** A client that writes frames by hand and reads what the server sends. */
class RawPeer {
  readonly #conn: Deno.TcpConn;
  readonly #reader = new FrameReader();
  readonly seen: Got[] = [];
  readonly decoder = new HpackDecoder();
  closed = false;
  #reading: Promise<number | null> | null = null;

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
    this.#reader.maxFrameSize = 1 << 24;
  }

  static async connect(
    port: number,
    settings: [number, number][] = [],
    preface = PREFACE,
  ): Promise<RawPeer> {
    const conn = await Deno.connect({ hostname: HOST, port });
    const p = new RawPeer(conn);
    const w = new FrameWriter();
    w.bytes(preface);
    w.settings(settings);
    await p.#write(w);
    return p;
  }

  async #write(w: FrameWriter): Promise<void> {
    let at = 0;
    try {
      while (at < w.len) at += await this.#conn.write(w.buf.subarray(at, w.len));
    } catch {
      this.closed = true; // the server closed first
    }
  }

  /** Writes the frames `build` appends. */
  send(build: (w: FrameWriter) => void): Promise<void> {
    const w = new FrameWriter();
    build(w);
    return this.#write(w);
  }

  /** Reads until a frame matches `pred` (returned) or the connection closes (null). */
  async until(pred: (f: Got) => boolean, ms = 5000): Promise<Got | null> {
    const deadline = Date.now() + ms;
    while (true) {
      for (let f = this.#reader.next(); f !== null; f = this.#reader.next()) {
        const got = { ...f, payload: f.payload.slice() };
        this.seen.push(got);
        if (pred(got)) return got;
      }
      if (this.closed) return null;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`no matching frame within ${ms} ms; saw ${this.describe()}`);
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      // A read that outlives a deadline is kept for the next call.
      this.#reading ??= this.#conn.read(this.#reader.space()).catch(() => null);
      const n = await Promise.race([
        this.#reading,
        new Promise<"late">((r) => timer = setTimeout(() => r("late"), left)),
      ]);
      clearTimeout(timer);
      if (n === "late") continue;
      this.#reading = null;
      if (n === null) {
        this.closed = true;
        continue;
      }
      this.#reader.filled(n);
    }
  }

  /** The GOAWAY the server sent (its code), then the close. */
  async goaway(): Promise<number> {
    const f = await this.until((f) => f.type === FRAME.GOAWAY);
    assert.ok(f, `no GOAWAY before the close; saw ${this.describe()}`);
    const code = new DataView(f.payload.buffer, f.payload.byteOffset).getUint32(4);
    assert.equal(await this.until(() => false), null, "the connection stays open after GOAWAY");
    return code;
  }

  /** The RST_STREAM on `stream` (its code). */
  async reset(stream: number): Promise<number> {
    const f = await this.until((f) => f.type === FRAME.RST_STREAM && f.stream === stream);
    assert.ok(f, `no RST_STREAM on ${stream}; saw ${this.describe()}`);
    return new DataView(f.payload.buffer, f.payload.byteOffset).getUint32(0);
  }

  /** The decoded headers of the next HEADERS frame on `stream`. */
  async headers(stream: number): Promise<Fields> {
    const f = await this.until((f) => f.type === FRAME.HEADERS && f.stream === stream);
    assert.ok(f, `no HEADERS on ${stream}; saw ${this.describe()}`);
    const out: Fields = [];
    this.decoder.decode(f.payload, out);
    return out;
  }

  describe(): string {
    return this.seen.map((f) => {
      const code = f.type === FRAME.GOAWAY
        ? ` ${errorName(new DataView(f.payload.buffer, f.payload.byteOffset).getUint32(4))}`
        : f.type === FRAME.RST_STREAM
        ? ` ${errorName(new DataView(f.payload.buffer, f.payload.byteOffset).getUint32(0))}`
        : "";
      return `${Object.entries(FRAME).find(([, t]) => t === f.type)?.[0]}#${f.stream}${code}`;
    }).join(", ") + (this.closed ? ", closed" : "");
  }

  close(): void {
    try {
      this.#conn.close();
    } catch { /* closed */ }
  }
}

const REQUEST: Fields = [
  [":method", "POST"],
  [":scheme", "http"],
  [":path", "/x"],
  [":authority", "a.mesh"],
];

/**
 * Runs `fn` with a server connection on `HOST` whose streams go to `onStream` (default: answer
 * 200 and echo the body), and checks that the server side ended without a thrown error.
 */
async function withServer(
  fn: (port: number, server: () => H2Connection) => Promise<void>,
  options: Partial<H2ConnectionOptions> = {},
  onStream: (s: H2Stream, fields: Fields, end: boolean) => void = echo,
): Promise<void> {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  let server: H2Connection | null = null;
  const accepted = listener.accept().then((conn) => {
    server = new H2Connection(conn, { role: "server", onStream, ...options });
    return server;
  });
  try {
    await fn(listener.addr.port, () => server!);
  } finally {
    listener.close();
    (await accepted).destroy();
  }
}

function echo(s: H2Stream, _fields: Fields, end: boolean): void {
  s.sendHeaders([[":status", "200"]], false);
  if (end) {
    s.end();
    return;
  }
  s.onData = (chunk, end) => s.sendData(chunk, end, s);
}

Deno.test("H2Connection answers a request and echoes its body", async () => {
  await withServer(async (port) => {
    const p = await RawPeer.connect(port);
    try {
      await p.send((w) => {
        w.headers(1, encodeBlock(REQUEST), false, 16384);
        w.data(1, new TextEncoder().encode("hello"), true);
      });
      assert.deepEqual(await p.headers(1), [[":status", "200"]]);
      const data = await p.until((f) => f.type === FRAME.DATA && f.stream === 1);
      assert.equal(new TextDecoder().decode(data!.payload), "hello");
      assert.equal(data!.flags & FLAG.END_STREAM, FLAG.END_STREAM);
    } finally {
      p.close();
    }
  });
});

interface ConnectionCase {
  name: string;
  /** Settings the peer sends first. */
  settings?: [number, number][];
  preface?: Uint8Array;
  send: (w: FrameWriter) => void;
  code: number;
  options?: Partial<H2ConnectionOptions>;
}

const payload = (n: number) => new Uint8Array(n);

// RFC 9113 §4-§6 connection errors, and the floods of CVE-2019-9512/9515/9518, CVE-2023-44487
// and the CONTINUATION flood (VU#421644): each ends with GOAWAY and its code, then a close.
const CONNECTION_CASES: ConnectionCase[] = [
  {
    name: "a frame over SETTINGS_MAX_FRAME_SIZE (§4.2)",
    send: (w) => w.data(1, payload(16385), false),
    code: ERROR.FRAME_SIZE_ERROR,
  },
  {
    name: "a bad connection preface (§3.4)",
    preface: new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
    send: () => {},
    code: ERROR.PROTOCOL_ERROR,
  },
  {
    name: "a PING of 7 bytes (§6.7)",
    send: (w) => {
      w.header(7, FRAME.PING, 0, 0);
      w.bytes(payload(7));
    },
    code: ERROR.FRAME_SIZE_ERROR,
  },
  {
    name: "a SETTINGS flood",
    send: (w) => {
      for (let i = 0; i < 2000; i++) w.settings([[SETTING.MAX_CONCURRENT_STREAMS, 10]]);
    },
    code: ERROR.ENHANCE_YOUR_CALM,
  },
  {
    name: "a PING flood",
    send: (w) => {
      for (let i = 0; i < 2000; i++) w.ping(payload(8), false);
    },
    code: ERROR.ENHANCE_YOUR_CALM,
  },
  {
    name: "rapid reset: streams opened and reset at once",
    send: (w) => {
      const block = encodeBlock(REQUEST);
      for (let id = 1; id < 1000; id += 2) {
        w.headers(id, block, false, 16384);
        w.rstStream(id, ERROR.CANCEL);
      }
    },
    code: ERROR.ENHANCE_YOUR_CALM,
  },
  {
    name: "a CONTINUATION flood of empty frames",
    send: (w) => {
      w.header(0, FRAME.HEADERS, 0, 1);
      for (let i = 0; i < 1000; i++) w.header(0, FRAME.CONTINUATION, 0, 1);
    },
    code: ERROR.ENHANCE_YOUR_CALM,
  },
  {
    name: "a header block growing past twice the header list limit",
    send: (w) => {
      w.header(16384, FRAME.HEADERS, 0, 1);
      w.bytes(payload(16384));
      for (let i = 0; i < 10; i++) {
        w.header(16384, FRAME.CONTINUATION, 0, 1);
        w.bytes(payload(16384));
      }
    },
    code: ERROR.ENHANCE_YOUR_CALM,
  },
  {
    name: "a frame inside a header block (§6.10)",
    send: (w) => {
      w.header(1, FRAME.HEADERS, 0, 1);
      w.bytes(new Uint8Array([0x82]));
      w.ping(payload(8), false);
    },
    code: ERROR.PROTOCOL_ERROR,
  },
  {
    name: "an HPACK table size update above SETTINGS_HEADER_TABLE_SIZE",
    send: (w) => w.headers(1, new Uint8Array([0x3f, 0xe2, 0x1f, 0x82]), true, 16384),
    code: ERROR.COMPRESSION_ERROR,
  },
  {
    name: "an HPACK reference to no table entry",
    send: (w) => w.headers(1, new Uint8Array([0xff, 0x10]), true, 16384),
    code: ERROR.COMPRESSION_ERROR,
  },
  {
    name: "a stream with an even ID (§5.1.1)",
    send: (w) => w.headers(2, encodeBlock(REQUEST), true, 16384),
    code: ERROR.PROTOCOL_ERROR,
  },
  {
    name: "a stream ID lower than one already opened (§5.1.1)",
    send: (w) => {
      w.headers(5, encodeBlock(REQUEST), true, 16384);
      w.headers(3, encodeBlock(REQUEST), true, 16384);
    },
    code: ERROR.PROTOCOL_ERROR,
  },
  {
    name: "DATA on an idle stream (§5.1)",
    send: (w) => w.data(7, payload(4), false),
    code: ERROR.PROTOCOL_ERROR,
  },
  {
    name: "HEADERS on stream 0",
    send: (w) => w.headers(0, encodeBlock(REQUEST), true, 16384),
    code: ERROR.PROTOCOL_ERROR,
  },
  {
    name: "a PUSH_PROMISE from a client (§8.4)",
    send: (w) => {
      w.header(4, FRAME.PUSH_PROMISE, FLAG.END_HEADERS, 1);
      w.u32(2);
    },
    code: ERROR.PROTOCOL_ERROR,
  },
  {
    name: "a connection window pushed over 2^31-1 (§6.9.1)",
    send: (w) => w.windowUpdate(0, 2 ** 31 - 1),
    code: ERROR.FLOW_CONTROL_ERROR,
  },
  {
    name: "a connection WINDOW_UPDATE of 0 (§6.9)",
    send: (w) => w.windowUpdate(0, 0),
    code: ERROR.PROTOCOL_ERROR,
  },
  {
    name: "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1 (§6.5.2)",
    send: (w) => w.settings([[SETTING.INITIAL_WINDOW_SIZE, 2 ** 31]]),
    code: ERROR.FLOW_CONTROL_ERROR,
  },
  {
    name: "SETTINGS_MAX_FRAME_SIZE below 16384 (§6.5.2)",
    send: (w) => w.settings([[SETTING.MAX_FRAME_SIZE, 100]]),
    code: ERROR.PROTOCOL_ERROR,
  },
  {
    name: "DATA with padding longer than the frame (§6.1)",
    send: (w) => {
      w.headers(1, encodeBlock(REQUEST), false, 16384);
      w.header(3, FRAME.DATA, FLAG.PADDED, 1);
      w.bytes(new Uint8Array([5, 0, 0]));
    },
    code: ERROR.PROTOCOL_ERROR,
  },
];

for (const c of CONNECTION_CASES) {
  Deno.test(`H2Connection ends the connection with GOAWAY ${errorName(c.code)} on ${c.name}`, async () => {
    let closedWith: number | null = null;
    // A handler that never answers and never reads: streams stay open.
    await withServer(
      async (port, server) => {
        const p = await RawPeer.connect(port, c.settings ?? [], c.preface);
        try {
          await p.send(c.send);
          if (c.preface) {
            // A bad preface is refused before any frame is read.
            assert.equal(await p.until(() => false), null);
          } else {
            const code = await p.goaway();
            assert.equal(errorName(code), errorName(c.code), p.describe());
          }
          await server().done;
        } finally {
          p.close();
        }
      },
      { ...c.options, onClose: (e) => closedWith = e?.code ?? -1 },
      () => {},
    );
    assert.equal(closedWith, c.code);
  });
}

Deno.test("H2Connection refuses streams over SETTINGS_MAX_CONCURRENT_STREAMS and keeps the connection", async () => {
  await withServer(
    async (port) => {
      const p = await RawPeer.connect(port);
      try {
        const block = encodeBlock(REQUEST);
        await p.send((w) => {
          for (let id = 1; id <= 9; id += 2) w.headers(id, block, false, 16384);
        });
        assert.equal(errorName(await p.reset(9)), "REFUSED_STREAM");
        assert.ok(!p.seen.some((f) => f.type === FRAME.RST_STREAM && f.stream < 9), p.describe());
        // The connection still serves: PING is answered.
        await p.send((w) => w.ping(new Uint8Array(8).fill(7), false));
        assert.ok(await p.until((f) => f.type === FRAME.PING && (f.flags & FLAG.ACK) !== 0));
      } finally {
        p.close();
      }
    },
    { maxConcurrentStreams: 4 },
    () => {},
  );
});

Deno.test("H2Connection answers an HPACK bomb with 431 and keeps the connection", async () => {
  await withServer(async (port) => {
    const p = await RawPeer.connect(port);
    try {
      // One 4000-byte entry into the table, then 1000 references to it: 4 MB of headers.
      const lit = encodeBlock([["x-big", "v".repeat(4000)]]);
      lit[0] = 0x40;
      const block = new Uint8Array(encodeBlock(REQUEST).length + lit.length + 1000);
      const req = encodeBlock(REQUEST);
      block.set(req);
      block.set(lit, req.length);
      block.fill(0x80 | 62, req.length + lit.length);
      await p.send((w) => w.headers(1, block, true, 16384));
      assert.deepEqual(await p.headers(1), [[":status", "431"]]);
      // The table is still in step: stream 3 refers to the entry and is served.
      await p.send((w) =>
        w.headers(3, new Uint8Array([...encodeBlock(REQUEST), 0x80 | 62]), true, 16384)
      );
      assert.deepEqual(await p.headers(3), [[":status", "200"]]);
    } finally {
      p.close();
    }
  });
});

// RFC 9113 stream errors: the stream is reset with the code; the connection stays.
const STREAM_CASES: { name: string; send: (w: FrameWriter) => void; code: number }[] = [
  {
    name: "a stream window pushed over 2^31-1 (§6.9.1)",
    send: (w) => {
      w.headers(1, encodeBlock(REQUEST), false, 16384);
      w.windowUpdate(1, 2 ** 31 - 1);
    },
    code: ERROR.FLOW_CONTROL_ERROR,
  },
  {
    name: "a stream WINDOW_UPDATE of 0 (§6.9)",
    send: (w) => {
      w.headers(1, encodeBlock(REQUEST), false, 16384);
      w.windowUpdate(1, 0);
    },
    code: ERROR.PROTOCOL_ERROR,
  },
  {
    name: "more DATA than the stream window (§6.9.1)",
    send: (w) => {
      w.headers(1, encodeBlock(REQUEST), false, 16384);
      for (let i = 0; i < 5; i++) w.data(1, payload(16384), false);
    },
    code: ERROR.FLOW_CONTROL_ERROR,
  },
  {
    name: "DATA after END_STREAM (§5.1)",
    send: (w) => {
      w.headers(1, encodeBlock(REQUEST), true, 16384);
      w.data(1, payload(4), false);
    },
    code: ERROR.STREAM_CLOSED,
  },
  {
    name: "trailers without END_STREAM (§8.1)",
    send: (w) => {
      w.headers(1, encodeBlock(REQUEST), false, 16384);
      w.headers(1, encodeBlock([["x-t", "1"]]), false, 16384);
    },
    code: ERROR.PROTOCOL_ERROR,
  },
];

for (const c of STREAM_CASES) {
  Deno.test(`H2Connection resets the stream with ${errorName(c.code)} on ${c.name}`, async () => {
    await withServer(
      async (port) => {
        const p = await RawPeer.connect(port);
        try {
          await p.send(c.send);
          assert.equal(errorName(await p.reset(1)), errorName(c.code), p.describe());
          await p.send((w) => w.ping(new Uint8Array(8), false));
          assert.ok(await p.until((f) => f.type === FRAME.PING), "the connection went on");
        } finally {
          p.close();
        }
      },
      {},
      () => {},
    );
  });
}

Deno.test("H2Connection keeps to the peer's stream window and sends the rest after WINDOW_UPDATE", async () => {
  const body = new Uint8Array(100_000).map((_, i) => i & 255);
  await withServer(
    async (port) => {
      const p = await RawPeer.connect(port, [[SETTING.INITIAL_WINDOW_SIZE, 1000]]);
      try {
        await p.send((w) => w.headers(1, encodeBlock(REQUEST), true, 16384));
        const got: number[] = [];
        const take = async () => {
          while (true) {
            const f = await p.until((f) => f.type === FRAME.DATA && f.stream === 1, 300)
              .catch(() => null);
            if (!f) return;
            got.push(...f.payload);
            if (f.flags & FLAG.END_STREAM) return;
          }
        };
        await take();
        assert.equal(got.length, 1000, "only the stream window was sent");
        // Stream window first (the connection window, 65535, allows it), then the rest.
        await p.send((w) => w.windowUpdate(1, 99_000));
        await take();
        assert.equal(got.length, 65_535, "then only the connection window");
        await p.send((w) => w.windowUpdate(0, 40_000));
        await take();
        assert.equal(got.length, 100_000);
        assert.deepEqual(new Uint8Array(got), body);
      } finally {
        p.close();
      }
    },
    {},
    (s) => {
      s.sendHeaders([[":status", "200"]], false);
      s.sendData(body, true);
    },
  );
});

Deno.test("H2Connection gives window back only as the receiver uses the data", async () => {
  let stream: H2Stream | null = null;
  await withServer(
    async (port) => {
      const p = await RawPeer.connect(port);
      try {
        await p.send((w) => {
          w.headers(1, encodeBlock(REQUEST), false, 16384);
          for (let i = 0; i < 3; i++) w.data(1, payload(16384), false);
        });
        // The handler keeps the data unread: no WINDOW_UPDATE for the stream.
        await p.send((w) => w.ping(new Uint8Array(8), false));
        await p.until((f) => f.type === FRAME.PING);
        assert.ok(!p.seen.some((f) => f.type === FRAME.WINDOW_UPDATE && f.stream === 1));
        assert.equal((await stream!.read())!.length, 16384);
        assert.equal((await stream!.read())!.length, 16384);
        const wu = await p.until((f) => f.type === FRAME.WINDOW_UPDATE && f.stream === 1);
        assert.equal(new DataView(wu!.payload.buffer).getUint32(0), 32768);
      } finally {
        p.close();
      }
    },
    {},
    (s) => stream = s,
  );
});

Deno.test("H2Connection drain() sends GOAWAY, lets the open stream finish, then closes", async () => {
  let stream: H2Stream | null = null;
  await withServer(
    async (port, server) => {
      const p = await RawPeer.connect(port);
      try {
        await p.send((w) => w.headers(1, encodeBlock(REQUEST), true, 16384));
        await p.until((f) => f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) !== 0);
        while (!stream) await new Promise((r) => setTimeout(r, 5));
        server().drain();
        const g = await p.until((f) => f.type === FRAME.GOAWAY);
        assert.equal(new DataView(g!.payload.buffer).getUint32(0), 1, "last stream 1");
        // A new stream after GOAWAY is refused.
        await p.send((w) => w.headers(3, encodeBlock(REQUEST), true, 16384));
        assert.equal(errorName(await p.reset(3)), "REFUSED_STREAM");
        stream.sendHeaders([[":status", "204"]], true);
        assert.deepEqual(await p.headers(1), [[":status", "204"]]);
        assert.equal(await p.until(() => false), null, "closed once the stream is done");
      } finally {
        p.close();
      }
    },
    {},
    (s) => stream = s,
  );
});

Deno.test("H2Connection close() sends GOAWAY NO_ERROR naming the last stream, then closes", async () => {
  let opened = 0;
  await withServer(
    async (port, server) => {
      const p = await RawPeer.connect(port);
      try {
        await p.send((w) => w.headers(1, encodeBlock(REQUEST), false, 16384));
        await p.until((f) => f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) !== 0);
        while (opened === 0) await new Promise((r) => setTimeout(r, 5));
        server().close();
        const g = await p.until((f) => f.type === FRAME.GOAWAY);
        const view = new DataView(g!.payload.buffer);
        assert.equal(view.getUint32(0), 1);
        assert.equal(errorName(view.getUint32(4)), "NO_ERROR");
        assert.equal(await p.until(() => false), null, "closed after the GOAWAY");
      } finally {
        p.close();
      }
    },
    {},
    () => opened++,
  );
});

Deno.test("H2Connection answers a request of more than 100 header fields with 431, and serves 100", async () => {
  await withServer(async (port) => {
    const p = await RawPeer.connect(port);
    try {
      const fields = (n: number): [string, string][] =>
        Array.from({ length: n }, (_, i) => [`x-f${i}`, "1"]);
      const regular = REQUEST.filter(([k]) => !k.startsWith(":")).length;
      await p.send((w) =>
        w.headers(1, encodeBlock([...REQUEST, ...fields(101 - regular)]), true, 16384)
      );
      assert.deepEqual(await p.headers(1), [[":status", "431"]]);
      await p.send((w) =>
        w.headers(3, encodeBlock([...REQUEST, ...fields(100 - regular)]), true, 16384)
      );
      assert.deepEqual(await p.headers(3), [[":status", "200"]]);
    } finally {
      p.close();
    }
  });
});
