/**
 * meshd's own HTTP/2 layer against hostile peers (the adversarial pass of 2026-11-29): a
 * client that lies in its frames, and an h2c backend that lies in its responses to HTTP/1 and
 * HTTP/2 clients behind meshd.
 */
import assert from "node:assert/strict";
import { encodeBlock } from "../../src/proxy/h2/hpack.ts";
import { FLAG, FRAME } from "../../src/proxy/h2/frames.ts";
import type { Fields, H2Stream } from "../../src/proxy/h2/connection.ts";
import {
  http1,
  RawPeer,
  request,
  SERVER_HOST,
  withHostileBackend,
  withServer,
} from "./_h2_hostile_env.ts";

const text = (s: string) => new TextEncoder().encode(s);

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
