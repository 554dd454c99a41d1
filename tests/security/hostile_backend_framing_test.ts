/**
 * Backends that frame their responses wrong, behind meshd's HTTP/1 entrypoint (the adversarial
 * pass of 2026-11-30): whatever a backend sends, an HTTP/1 client reads well-framed responses,
 * each with its own request, and a backend that frames right is not charged for one that did
 * not. meshd listens on 127.0.72.1, the backends on 127.0.72.10-11.
 */
import assert from "node:assert/strict";
import { Logger } from "../../src/observability/mod.ts";
import { NodeProxy } from "../../src/proxy/mod.ts";
import { type Fields, H2Connection, type H2Stream } from "../../src/proxy/h2/connection.ts";
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";
import { readUntilClosed } from "./_read_until_closed.ts";

const PROXY = "127.0.72.1";
const BACKEND = "127.0.72.10";
const H2_BACKEND = "127.0.72.11";
const quiet = new Logger({ level: "error", write: () => {} });
const latin1 = new TextDecoder("latin1");
const encode = (s: string) => new TextEncoder().encode(s);

/** One request head a raw backend read on a connection, and that connection's number. */
interface Seen {
  conn: number;
  line: string;
}

/**
 * A raw HTTP/1 backend: reads request heads (no bodies but a Content-Length one) and answers
 * each with what `answer` gives: the bytes to send, and whether to close the connection after
 * them (`closeAfterMs`), taking nothing more from it until then.
 */
function rawBackend(
  answer: (line: string) => { bytes: string; closeAfterMs?: number },
): { port: number; seen: Seen[]; close(): void } {
  const listener = Deno.listen({ hostname: BACKEND, port: 0 });
  const seen: Seen[] = [];
  const conns = new Set<Deno.Conn>();
  const serve = async (conn: Deno.Conn, id: number) => {
    let buf = "";
    const chunk = new Uint8Array(16 * 1024);
    for (;;) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) {
        const n = await conn.read(chunk);
        if (n === null) return;
        buf += latin1.decode(chunk.subarray(0, n));
        continue;
      }
      const head = buf.slice(0, end);
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      while (buf.length < end + 4 + length) {
        const n = await conn.read(chunk);
        if (n === null) return;
        buf += latin1.decode(chunk.subarray(0, n));
      }
      buf = buf.slice(end + 4 + length);
      const line = head.split("\r\n")[0]!;
      seen.push({ conn: id, line });
      const a = answer(line);
      await conn.write(Uint8Array.from(a.bytes, (c) => c.charCodeAt(0)));
      if (a.closeAfterMs !== undefined) {
        await new Promise((r) => setTimeout(r, a.closeAfterMs));
        return;
      }
    }
  };
  (async () => {
    for (let id = 0;; id++) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch {
        return;
      }
      conns.add(conn);
      serve(conn, id).catch(() => {}).finally(() => {
        conns.delete(conn);
        try {
          conn.close();
        } catch { /* closed */ }
      });
    }
  })();
  return {
    port: listener.addr.port,
    seen,
    close: () => {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

/** A NodeProxy routing `web.default.mesh` to `port` on `address` (with `scheme`). */
async function withProxy(
  address: string,
  port: number,
  scheme: "http" | "h2c",
  fn: (send: (data: string) => Promise<{ text: string; timedOut: boolean }>) => Promise<void>,
): Promise<void> {
  const proxy = new NodeProxy({ hostname: PROXY, httpPort: 0, logger: quiet });
  await proxy.start();
  try {
    await proxy.apply(meshConfig([{
      name: "web",
      scheme,
      ports: [{ port: 80, endpoints: [endpoint(address, port)] }],
    }]));
    const proxyPort = Number(proxy.httpAddress.split(":")[1]);
    await fn(async (data) =>
      readUntilClosed(await Deno.connect({ hostname: PROXY, port: proxyPort }), 3000, data)
    );
  } finally {
    await proxy.stop();
  }
}

const H = "Host: web.default.mesh\r\n";
/** A request, then a second on the same connection that ends it. */
const TWO = `GET /first HTTP/1.1\r\n${H}\r\nGET /second HTTP/1.1\r\n${H}Connection: close\r\n\r\n`;

Deno.test("NodeProxy keeps the Content-Length of a response whose Connection names it, so the client frames the body as meshd did", async () => {
  // RFC 9112 §6.3: an HTTP/1.1 response with neither Content-Length nor Transfer-Encoding runs
  // to the close; the client would read the next response as the rest of this body.
  const backend = rawBackend((line) =>
    line.startsWith("GET /first")
      ? { bytes: "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello" }
      : { bytes: "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond" }
  );
  try {
    await withProxy(BACKEND, backend.port, "http", async (send) => {
      const r = await send(TWO);
      const [first] = r.text.split("hello");
      assert.match(first!, /^HTTP\/1\.1 200 OK\r\n/, r.text);
      assert.match(
        first!,
        /\r\ncontent-length: 5\r\n/i,
        `the first response lost its length: ${r.text}`,
      );
      assert.match(r.text, /hello(HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nsecond)$/, r.text);
    });
  } finally {
    backend.close();
  }
});

Deno.test("NodeProxy never sends a request on a connection after an HTTP/1.0 response without keep-alive", async () => {
  // RFC 9112 §9.3: the backend closes such a connection after its response, here 300 ms on,
  // having read nothing more: a request sent on it gets no answer (a 502 for a POST).
  const backend = rawBackend((line) =>
    line.startsWith("GET /first")
      ? { bytes: "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", closeAfterMs: 300 }
      : { bytes: "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond" }
  );
  try {
    await withProxy(BACKEND, backend.port, "http", async (send) => {
      const r = await send(
        `GET /first HTTP/1.1\r\n${H}\r\n` +
          `POST /second HTTP/1.1\r\n${H}Content-Length: 3\r\nConnection: close\r\n\r\nabc`,
      );
      assert.match(r.text, /hello(HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nsecond)$/, r.text);
      const [first, second] = backend.seen;
      assert.equal(second?.line, "POST /second HTTP/1.1", JSON.stringify(backend.seen));
      assert.notEqual(second.conn, first!.conn, "the POST went on the connection being closed");
    });
  } finally {
    backend.close();
  }
});

// RFC 9110 §15: a status code is three digits from 100 to 599. A status below 100 would go to
// the client as an interim response in a status line no parser reads ("HTTP/1.1 0 X").
for (const status of ["000", "099", "600", "999"]) {
  Deno.test(`NodeProxy answers 502 to an HTTP/1 backend's status ${status}`, async () => {
    const backend = rawBackend(() => ({
      bytes: `HTTP/1.1 ${status} X\r\nContent-Length: 2\r\n\r\nno` +
        "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
    }));
    try {
      await withProxy(BACKEND, backend.port, "http", async (send) => {
        const r = await send(`GET /first HTTP/1.1\r\n${H}Connection: close\r\n\r\n`);
        assert.match(r.text, /^HTTP\/1\.1 502 Bad Gateway\r\n/, r.text);
        assert.doesNotMatch(r.text, /forged/, r.text);
      });
    } finally {
      backend.close();
    }
  });
}

/** An h2c backend on meshd's own frame layer that answers each stream with `answer`. */
async function withH2Backend(
  answer: (s: H2Stream) => void,
  fn: (send: (data: string) => Promise<{ text: string; timedOut: boolean }>) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: H2_BACKEND, port: 0 });
  const conns = new Set<H2Connection>();
  const serving = (async () => {
    for await (const conn of listener) {
      const c: H2Connection = new H2Connection(conn, {
        role: "server",
        onStream: (s) => answer(s),
        onClose: () => conns.delete(c),
      });
      conns.add(c);
    }
  })().catch(() => {});
  try {
    await withProxy(H2_BACKEND, listener.addr.port, "h2c", fn);
  } finally {
    listener.close();
    for (const c of conns) c.destroy();
    await serving;
  }
}

// RFC 9113 §8.6: no 101 in HTTP/2; §8.1.1: an interim status on HEADERS that end the stream
// is malformed; RFC 9110 §15: three digits, 100 to 599. Passed on, "HTTP/1.1 101" or a 1xx
// makes an HTTP/1 client read the body (here a whole response) as what comes after it.
const BAD_STATUSES: { name: string; headers: Fields; end: boolean }[] = [
  { name: "101 Switching Protocols", headers: [[":status", "101"]], end: false },
  { name: "100 ending the stream", headers: [[":status", "100"]], end: true },
  { name: "99", headers: [[":status", "99"]], end: false },
  { name: "600", headers: [[":status", "600"]], end: false },
  { name: "a word", headers: [[":status", "abc"]], end: false },
  { name: "four digits", headers: [[":status", "2000"]], end: false },
];

for (const c of BAD_STATUSES) {
  Deno.test(`NodeProxy answers 502 to an HTTP/1 client when an h2c backend's :status is ${c.name}`, async () => {
    await withH2Backend((s) => {
      s.sendHeaders(c.headers, c.end);
      if (!c.end) s.sendData(encode("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged"), true);
    }, async (send) => {
      const r = await send(`GET /x HTTP/1.1\r\n${H}Connection: close\r\n\r\n`);
      assert.match(r.text, /^HTTP\/1\.1 502 Bad Gateway\r\n/, r.text);
      assert.doesNotMatch(r.text, /forged/, r.text);
    });
  });
}

Deno.test("NodeProxy passes an h2c backend's interim 103 by and its final response on", async () => {
  await withH2Backend((s) => {
    s.sendHeaders([[":status", "103"], ["link", "</a>"]], false);
    s.sendHeaders([[":status", "200"], ["content-length", "2"]], false);
    s.sendData(encode("ok"), true);
  }, async (send) => {
    const r = await send(`GET /x HTTP/1.1\r\n${H}Connection: close\r\n\r\n`);
    assert.match(r.text, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nok$/, r.text);
  });
});

Deno.test("NodeProxy passes no framing field from an h2c backend's trailers into an HTTP/1 client's trailer section", async () => {
  // RFC 9110 §6.5.1: Content-Length, Transfer-Encoding and Host are not trailer fields; a client
  // that merges trailers into the head would frame or route by them. meshd's HTTP/1 side
  // refuses them from an HTTP/1 backend (copyBody); from an h2c one they are dropped.
  await withH2Backend((s) => {
    s.sendHeaders([[":status", "200"]], false);
    s.sendData(encode("ok"), false);
    s.sendHeaders([
      ["content-length", "500"],
      ["transfer-encoding", "chunked"],
      ["host", "admin.default.mesh"],
      ["grpc-status", "0"],
    ], true);
  }, async (send) => {
    const r = await send(`GET /x HTTP/1.1\r\n${H}Connection: close\r\n\r\n`);
    const trailers = r.text.split("\r\n0\r\n")[1];
    assert.equal(trailers, "grpc-status: 0\r\n\r\n", r.text);
  });
});

Deno.test("NodeProxy answers 502 to a response with a transfer coding it would pass on as content", async () => {
  // RFC 9112 §6.3: the gzip-coded body runs to the close. Without Transfer-Encoding, which is
  // hop by hop, the client would read the coded bytes as the content itself.
  const backend = rawBackend(() => ({
    bytes: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8bcoded",
    closeAfterMs: 0,
  }));
  try {
    await withProxy(BACKEND, backend.port, "http", async (send) => {
      const r = await send(`GET /first HTTP/1.1\r\n${H}Connection: close\r\n\r\n`);
      assert.match(r.text, /^HTTP\/1\.1 502 Bad Gateway\r\n/, r.text);
      assert.doesNotMatch(r.text, /coded/, r.text);
    });
  } finally {
    backend.close();
  }
});

Deno.test("NodeProxy sends one Content-Length for a response whose length came as a list or twice", async () => {
  // RFC 9110 §8.6: a recipient may read "5, 5" as 5, or refuse it; meshd reads it as 5, so its
  // client gets that one value, not a list its parser may refuse or read otherwise.
  const backend = rawBackend((line) => ({
    bytes: line.startsWith("GET /first")
      ? "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nX-A: 1\r\n\r\nhello"
      : "HTTP/1.1 200 OK\r\nContent-Length: 6\r\ncontent-length: 6\r\n\r\nsecond",
  }));
  try {
    await withProxy(BACKEND, backend.port, "http", async (send) => {
      const r = await send(TWO);
      const heads = r.text.split(/\r\n\r\n(?:hello|second)/).slice(0, 2);
      assert.equal(heads.length, 2, r.text);
      assert.deepEqual(heads.map((h) => h.match(/^content-length: .*$/gim)), [
        ["Content-Length: 5"],
        ["Content-Length: 6"],
      ], r.text);
    });
  } finally {
    backend.close();
  }
});
