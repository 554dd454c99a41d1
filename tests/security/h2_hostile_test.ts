/**
 * meshd's own HTTP/2 layer against hostile peers (the adversarial pass of 2026-11-29): a
 * client that lies in its frames, and an h2c backend that lies in its responses to HTTP/1 and
 * HTTP/2 clients behind meshd.
 */
import assert from "node:assert/strict";
import http2 from "node:http2";
import { Logger } from "../../src/observability/mod.ts";
import { NodeProxy } from "../../src/proxy/mod.ts";
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";
import { encodeBlock } from "../../src/proxy/h2/hpack.ts";
import {
  DEFAULT_WINDOW,
  ERROR,
  errorName,
  FLAG,
  FRAME,
  FrameWriter,
  MAX_WINDOW,
  SETTING,
} from "../../src/proxy/h2/frames.ts";
import { type Fields, H2Connection, type H2Stream } from "../../src/proxy/h2/connection.ts";
import {
  BACKEND_HOST,
  http1,
  RawPeer,
  request,
  SERVER_HOST,
  withHostileBackend,
  withServer,
} from "./_h2_hostile_env.ts";

const text = (s: string) => new TextEncoder().encode(s);
const quiet = new Logger({ level: "error", write: () => {} });

/** A handler that takes what comes and records it, answering nothing. */
function recorder(got: { data: number; ended: boolean; opened: number }) {
  return (s: H2Stream, _fields: Fields, end: boolean): void => {
    got.opened++;
    got.ended ||= end;
    s.onData = (chunk, end) => {
      got.data += chunk.length;
      got.ended ||= end;
    };
  };
}

// RFC 9113 §8.1.1: a request whose content-length disagrees with its DATA is malformed, a
// stream error of type PROTOCOL_ERROR; none of the disagreeing DATA reaches the handler.
const LENGTH_CASES: { name: string; send: (peer: RawPeer) => Promise<void>; data: number }[] = [
  {
    name: "more DATA than content-length",
    send: (p) =>
      p.send((w) => {
        w.headers(1, encodeBlock(request([["content-length", "5"]])), false, 16384);
        w.data(1, text("hello, and a second request"), true);
      }),
    data: 0,
  },
  {
    name: "more DATA than content-length over two frames",
    send: (p) =>
      p.send((w) => {
        w.headers(1, encodeBlock(request([["content-length", "5"]])), false, 16384);
        w.data(1, text("hel"), false);
        w.data(1, text("lo!"), false);
      }),
    data: 3,
  },
  {
    name: "less DATA than content-length at END_STREAM",
    send: (p) =>
      p.send((w) => {
        w.headers(1, encodeBlock(request([["content-length", "10"]])), false, 16384);
        w.data(1, text("four"), true);
      }),
    data: 0,
  },
  {
    name: "less DATA than content-length when trailers end the stream",
    send: (p) =>
      p.send((w) => {
        w.headers(1, encodeBlock(request([["content-length", "10"]])), false, 16384);
        w.data(1, text("four"), false);
        w.headers(1, encodeBlock([["x-trailer", "1"]]), true, 16384);
      }),
    data: 4,
  },
  {
    name: "a content-length above 0 on HEADERS with END_STREAM",
    send: (p) =>
      p.send((w) => w.headers(1, encodeBlock(request([["content-length", "3"]])), true, 16384)),
    data: 0,
  },
  {
    name: "two content-length fields that differ",
    send: (p) =>
      p.send((w) => {
        w.headers(
          1,
          encodeBlock(request([["content-length", "3"], ["content-length", "4"]])),
          false,
          16384,
        );
        w.data(1, text("abc"), true);
      }),
    data: 0,
  },
  {
    name: "a content-length that is not a number",
    send: (p) =>
      p.send((w) => {
        w.headers(1, encodeBlock(request([["content-length", "3x"]])), false, 16384);
        w.data(1, text("abc"), true);
      }),
    data: 0,
  },
];

for (const c of LENGTH_CASES) {
  Deno.test(`H2Connection resets a request with PROTOCOL_ERROR on ${c.name}`, async () => {
    const got = { data: 0, ended: false, opened: 0 };
    await withServer(recorder(got), async (port) => {
      const p = await RawPeer.connect(SERVER_HOST, port);
      try {
        await c.send(p);
        assert.equal(await p.reset(1), "PROTOCOL_ERROR", p.describe());
        await p.alive();
        assert.equal(got.data, c.data, "DATA past the disagreement reached the handler");
        assert.equal(got.ended, false, "the handler saw the request end as if it were whole");
      } finally {
        p.close();
      }
    });
  });
}

Deno.test("H2Connection takes a request whose DATA matches its content-length, and a list of equal values", async () => {
  const got = { data: 0, ended: false, opened: 0 };
  await withServer(recorder(got), async (port) => {
    const p = await RawPeer.connect(SERVER_HOST, port);
    try {
      await p.send((w) => {
        w.headers(1, encodeBlock(request([["content-length", "5, 5"]])), false, 16384);
        w.data(1, text("he"), false);
        w.header(6, FRAME.DATA, FLAG.PADDED | FLAG.END_STREAM, 1); // padding is not content
        w.bytes(new Uint8Array([2, 0x6c, 0x6c, 0x6f, 0, 0]));
        w.headers(3, encodeBlock(request([["content-length", "0"]], "GET")), true, 16384);
      });
      await p.alive();
      assert.deepEqual(got, { data: 5, ended: true, opened: 2 }, p.describe());
      assert.ok(!p.seen.some((f) => f.type === FRAME.RST_STREAM), p.describe());
    } finally {
      p.close();
    }
  });
});

Deno.test("NodeProxy never lets an h2c backend's DATA beyond its content-length reach an HTTP/1 client as a second response", async () => {
  const smuggled = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged";
  await withHostileBackend((s) => {
    s.sendHeaders([[":status", "200"], ["content-length", "5"]], false);
    s.sendData(text("hello" + smuggled), true);
  }, async (port) => {
    const r = await http1(
      port,
      "GET /x HTTP/1.1\r\nHost: hostile.default.mesh\r\n\r\n",
    );
    assert.match(r.text, /^HTTP\/1\.1 /);
    assert.doesNotMatch(r.text, /forged/, r.text);
    assert.equal(r.text.match(/HTTP\/1\.1 /g)!.length, 1, r.text);
    assert.ok(r.closed, `the connection stays open after a broken response: ${r.text}`);
  });
});

Deno.test("NodeProxy resets an HTTP/2 client's stream when the h2c backend sends less DATA than its content-length", async () => {
  await withHostileBackend((s) => {
    s.sendHeaders([[":status", "200"], ["content-length", "50"]], false);
    s.sendData(text("short"), true);
  }, async (port) => {
    const p = await RawPeer.connect("127.0.69.1", port);
    try {
      await p.send((w) => w.headers(1, encodeBlock(request([], "GET")), true, 16384));
      const end = await p.until((f) =>
        f.stream === 1 &&
        (f.type === FRAME.RST_STREAM ||
          (f.type === FRAME.DATA && (f.flags & FLAG.END_STREAM) !== 0))
      );
      assert.equal(end?.type, FRAME.RST_STREAM, `the stream ended cleanly: ${p.describe()}`);
    } finally {
      p.close();
    }
  });
});

// RFC 9113 §8.2.1, §8.3.2: a response whose fields have CR, LF or NUL in a value, a name that
// is not a lower-case token, or a pseudo-header other than one leading :status is malformed;
// a proxy passes none of it on, least of all into an HTTP/1 head where CR LF starts a field.
const BAD_RESPONSES: { name: string; fields: Fields }[] = [
  {
    name: "CR LF in a value (a forged set-cookie)",
    fields: [[":status", "200"], ["x-evil", "a\r\nset-cookie: pwned=1"]],
  },
  {
    name: "a bare LF in a value",
    fields: [[":status", "200"], ["x-evil", "a\nset-cookie: pwned=1"]],
  },
  { name: "NUL in a value", fields: [[":status", "200"], ["x-evil", "a\0set-cookie: pwned=1"]] },
  {
    name: "CR LF in a name",
    fields: [[":status", "200"], ["set-cookie: pwned=1\r\nx-evil", "a"]],
  },
  { name: "an upper-case name", fields: [[":status", "200"], ["Set-Cookie", "pwned=1"]] },
  {
    name: "a request pseudo-header",
    fields: [[":status", "200"], [":path", "/set-cookie: pwned=1"]],
  },
  {
    name: "a pseudo-header after a regular field",
    fields: [["set-cookie", "pwned=1"], [":status", "200"]],
  },
  {
    name: "two :status fields",
    fields: [[":status", "200"], [":status", "204"], ["set-cookie", "pwned=1"]],
  },
];

for (const c of BAD_RESPONSES) {
  Deno.test(`NodeProxy answers 502 to an HTTP/1 client when an h2c backend's response has ${c.name}`, async () => {
    await withHostileBackend((s) => {
      s.sendHeaders(c.fields, false);
      s.sendData(text("body"), true);
    }, async (port) => {
      const r = await http1(
        port,
        "GET /x HTTP/1.1\r\nHost: hostile.default.mesh\r\nConnection: close\r\n\r\n",
      );
      assert.doesNotMatch(r.text, /pwned/, r.text);
      assert.match(r.text, /^HTTP\/1\.1 502 /, r.text);
    });
  });
}

Deno.test("NodeProxy passes no CR LF from an h2c backend's trailers into an HTTP/1 client's chunked trailer section", async () => {
  await withHostileBackend((s) => {
    s.sendHeaders([[":status", "200"]], false);
    s.sendData(text("body"), false);
    s.sendHeaders([["grpc-status", "0\r\n\r\nHTTP/1.1 200 OK\r\nset-cookie: pwned=1\r\n"]], true);
  }, async (port) => {
    const r = await http1(port, "GET /x HTTP/1.1\r\nHost: hostile.default.mesh\r\n\r\n");
    assert.match(r.text, /^HTTP\/1\.1 200 /, r.text);
    assert.doesNotMatch(r.text, /pwned/, r.text);
    assert.ok(r.closed, `the connection stays open after a broken response: ${r.text}`);
  });
});

Deno.test("NodeProxy gives an HTTP/2 client a 502, not a response with a request pseudo-header, from an h2c backend", async () => {
  await withHostileBackend((s) => {
    s.sendHeaders([[":status", "200"], [":path", "/evil"]], true);
  }, async (port) => {
    const p = await RawPeer.connect("127.0.69.1", port);
    try {
      await p.send((w) => w.headers(1, encodeBlock(request([], "GET")), true, 16384));
      const f = await p.until((f) => f.type === FRAME.HEADERS && f.stream === 1);
      assert.ok(f, p.describe());
      const fields: Fields = [];
      p.decoder.decode(f.payload, fields);
      assert.deepEqual(fields.filter(([k]) => k.startsWith(":")), [[":status", "502"]]);
    } finally {
      p.close();
    }
  });
});

// RFC 9113 §8.1: trailers carry no pseudo-header; §8.2.1: no CR, LF or NUL in any value.
const BAD_TRAILERS: { name: string; trailers: Fields }[] = [
  { name: "a pseudo-header", trailers: [[":path", "/admin"]] },
  { name: "CR LF in a value", trailers: [["x-t", "1\r\nx-forged: 1"]] },
  { name: "an upper-case name", trailers: [["X-T", "1"]] },
];

for (const c of BAD_TRAILERS) {
  Deno.test(`H2Connection resets a request with PROTOCOL_ERROR on trailers with ${c.name}`, async () => {
    const got = { data: 0, ended: false, opened: 0 };
    let trailers: Fields | null = null;
    await withServer((s, fields, end) => {
      recorder(got)(s, fields, end);
      s.onHeaders = (t) => trailers = t;
    }, async (port) => {
      const p = await RawPeer.connect(SERVER_HOST, port);
      try {
        await p.send((w) => {
          w.headers(1, encodeBlock(request()), false, 16384);
          w.data(1, text("abc"), false);
          w.headers(1, encodeBlock(c.trailers), true, 16384);
        });
        assert.equal(await p.reset(1), "PROTOCOL_ERROR", p.describe());
        await p.alive();
        assert.equal(trailers, null, "the handler got the trailers");
      } finally {
        p.close();
      }
    });
  });
}

/**
 * How many bytes an endless response's backend manages to send through meshd to a client that
 * sent `settings` and `connWindow` more connection window and then reads nothing (it stops
 * when the backend makes no progress for a second, or at 160 MiB).
 */
async function sentToNonReader(settings: [number, number][], connWindow: number): Promise<number> {
  const total = 160 * 1024 * 1024;
  let sent = 0;
  let closed = false;
  await withHostileBackend(async (s) => {
    s.sendHeaders([[":status", "200"]], false);
    const chunk = new Uint8Array(64 * 1024);
    s.onClose = () => closed = true;
    while (!s.closed && sent < total) {
      await s.write(chunk).catch(() => {});
      sent += chunk.length;
    }
  }, async (port) => {
    const p = await RawPeer.connect("127.0.69.1", port, settings);
    try {
      await p.send((w) => {
        if (connWindow > 0) w.windowUpdate(0, connWindow);
        w.headers(1, encodeBlock(request([], "GET")), true, 16384);
      });
      // Never read: what the backend managed to send is what meshd and the sockets hold.
      let last = -1;
      let still = 0;
      const deadline = Date.now() + 20_000;
      while (sent < total && !closed && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        still = sent === last ? still + 1 : 0;
        last = sent;
        if (still >= 10) break; // no progress for a second: the backend is held back
      }
    } finally {
      p.close();
    }
  });
  return sent;
}

Deno.test("NodeProxy holds a bounded amount for an HTTP/2 client that opens its windows wide and never reads", async () => {
  const sent = await sentToNonReader(
    [[SETTING.INITIAL_WINDOW_SIZE, MAX_WINDOW]],
    MAX_WINDOW - DEFAULT_WINDOW,
  );
  assert.ok(
    sent < 48 * 1024 * 1024,
    `the backend sent ${(sent / 2 ** 20).toFixed(1)} MiB to a client that reads nothing`,
  );
});

Deno.test("NodeProxy holds about one stream window for an HTTP/2 client whose window stays 0", async () => {
  const sent = await sentToNonReader([[SETTING.INITIAL_WINDOW_SIZE, 0]], 0);
  assert.ok(
    sent <= 1024 * 1024,
    `the backend sent ${(sent / 2 ** 20).toFixed(1)} MiB to a client that allows nothing`,
  );
});

Deno.test("NodeProxy answers within the response timeout when an h2c backend allows no stream at all", async () => {
  let streams = 0;
  await withHostileBackend(() => streams++, async (port) => {
    // The first request may go out before the backend's SETTINGS arrive (and be refused); the
    // next ones find the connection with no stream slot.
    for (let i = 0; i < 3; i++) {
      const started = Date.now();
      const r = await http1(
        port,
        "GET /x HTTP/1.1\r\nHost: hostile.default.mesh\r\nConnection: close\r\n\r\n",
        5000,
      );
      assert.match(r.text, /^HTTP\/1\.1 50[234] /, `no answer in ${Date.now() - started} ms`);
    }
    assert.equal(streams, 0);
  }, { backend: { maxConcurrentStreams: 0 }, responseTimeoutMs: 300 });
});

Deno.test("H2Connection keeps the connection when trailers arrive on a stream it has reset", async () => {
  await withServer((s) => {
    // Answered before the body came, as meshd answers a request it refuses.
    s.sendHeaders([[":status", "404"]], true);
    s.reset(ERROR.NO_ERROR);
  }, async (port) => {
    const p = await RawPeer.connect(SERVER_HOST, port);
    try {
      await p.send((w) => w.headers(1, encodeBlock(request()), false, 16384));
      assert.equal(await p.reset(1), "NO_ERROR");
      // What the client had in flight when the reset came.
      await p.send((w) => {
        w.data(1, text("body"), false);
        w.headers(1, encodeBlock([["x-checksum", "1"]]), true, 16384);
      });
      await p.alive();
      assert.ok(!p.seen.some((f) => f.type === FRAME.GOAWAY), p.describe());
    } finally {
      p.close();
    }
  });
});

Deno.test("H2Connection as a client ends the connection with PROTOCOL_ERROR when a server sends ENABLE_PUSH 1", async () => {
  // RFC 9113 §6.5.2: a server must not send 1; a client that gets it treats it as a
  // connection error. (A client may send 1 to a server: that is allowed, and checked below.)
  const listener = Deno.listen({ hostname: SERVER_HOST, port: 0 });
  try {
    const accepted = listener.accept();
    let closedWith = -2;
    const tcp = await Deno.connect({ hostname: SERVER_HOST, port: listener.addr.port });
    const client = new H2Connection(tcp, {
      role: "client",
      onClose: (e) => closedWith = e?.code ?? -1,
    });
    const server = await accepted;
    try {
      const w = new FrameWriter();
      w.settings([[SETTING.ENABLE_PUSH, 1]]);
      await server.write(w.buf.subarray(0, w.len));
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([client.done, new Promise((r) => timer = setTimeout(r, 3000))]);
      clearTimeout(timer);
      assert.equal(closedWith === -2 ? "still open" : errorName(closedWith), "PROTOCOL_ERROR");
    } finally {
      client.destroy();
      server.close();
    }
  } finally {
    listener.close();
  }
});

Deno.test("H2Connection as a server takes ENABLE_PUSH 1 from a client", async () => {
  await withServer((s) => s.sendHeaders([[":status", "200"]], true), async (port) => {
    const p = await RawPeer.connect(SERVER_HOST, port, [[SETTING.ENABLE_PUSH, 1]]);
    try {
      await p.send((w) => w.headers(1, encodeBlock(request([], "GET")), true, 16384));
      assert.ok(await p.until((f) => f.type === FRAME.HEADERS && f.stream === 1), p.describe());
    } finally {
      p.close();
    }
  });
});

Deno.test("NodeProxy holds a bounded amount of a request body for an h2c backend that opens its windows wide and never reads", async () => {
  // The backend: SETTINGS and WINDOW_UPDATE that allow 2^31-1 bytes, then no read at all.
  const listener = Deno.listen({ hostname: BACKEND_HOST, port: 0 });
  const conns: Deno.Conn[] = [];
  const serving = (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      const w = new FrameWriter();
      w.settings([[SETTING.INITIAL_WINDOW_SIZE, MAX_WINDOW]]);
      w.windowUpdate(0, MAX_WINDOW - DEFAULT_WINDOW);
      await conn.write(w.buf.subarray(0, w.len)).catch(() => {});
    }
  })().catch(() => {});
  const proxy = new NodeProxy({ hostname: "127.0.69.1", httpPort: 0, logger: quiet });
  await proxy.start();
  const total = 160 * 1024 * 1024;
  let written = 0;
  try {
    await proxy.apply(meshConfig([{
      name: "hostile",
      scheme: "h2c",
      ports: [{ port: 80, endpoints: [endpoint(BACKEND_HOST, listener.addr.port)] }],
    }]));
    const client = http2.connect(`http://${proxy.httpAddress}`);
    client.on("error", () => {});
    try {
      const req = client.request({
        ":method": "POST",
        ":path": "/upload",
        ":authority": "hostile.default.mesh",
      });
      req.on("error", () => {});
      const chunk = new Uint8Array(64 * 1024);
      // Writes as fast as HTTP/2 flow control lets it; stops when a second brings no progress.
      const deadline = Date.now() + 20_000;
      while (written < total && Date.now() < deadline && !req.destroyed) {
        const done = new Promise<boolean>((r) => req.write(chunk, (e) => r(!e)));
        let timer: ReturnType<typeof setTimeout> | undefined;
        const ok = await Promise.race([
          done,
          new Promise<false>((r) => timer = setTimeout(() => r(false), 1000)),
        ]);
        clearTimeout(timer);
        if (!ok) break;
        written += chunk.length;
      }
      req.destroy();
    } finally {
      client.destroy();
    }
  } finally {
    await proxy.stop();
    listener.close();
    for (const c of conns) c.close();
    await serving;
  }
  assert.ok(
    written < 48 * 1024 * 1024,
    `the client wrote ${(written / 2 ** 20).toFixed(1)} MiB to a backend that reads nothing`,
  );
});
