/**
 * `--stream-idle-timeout`: a backend that stops partway through a response body must not hold
 * the client (or its connection-limit slot, or the backend connection) past that timeout,
 * however the response is framed and whichever HTTP version each side speaks; a body that
 * keeps coming, however slowly, is never cut. Found in an adversarial pass: with every other
 * timeout at 500 ms, such a response held its client for good.
 */
import assert from "node:assert/strict";
import http2 from "node:http2";
import { Logger } from "../../src/observability/mod.ts";
import { EndpointPool } from "../../src/proxy/endpoint_pool.ts";
import { HttpProxy, type HttpProxyOptions } from "../../src/proxy/http_proxy.ts";
import type { DropReason } from "../../src/proxy/proxy_metrics.ts";
import { buildRouteTable, newRouteState } from "../../src/proxy/route_table.ts";
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";
import { waitFor } from "../testenv/process.ts";
import { readUntilClosed } from "./_read_until_closed.ts";

const PROXY = "127.0.71.10";
const BACKEND = "127.0.71.11";
const HOST = "web.default.mesh";
const quiet = new Logger({ level: "error", write: () => {} });
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The stream idle timeout of these tests; every other one is as short or shorter. */
const IDLE_MS = 500;

/**
 * An HTTP/1 backend that answers each connection's first request with `head` and `first`,
 * then sends each of `rest` `everyMs` apart and keeps the connection open. It tells when a
 * connection the proxy made was closed.
 */
function stallingBackend(
  head: string,
  first: string,
  rest: string[] = [],
  everyMs = 0,
): { port: number; open: () => number; closed: () => number; close(): void } {
  const listener = Deno.listen({ hostname: BACKEND, port: 0 });
  const conns = new Set<Deno.Conn>();
  let closed = 0;
  (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      (async () => {
        const buf = new Uint8Array(4096);
        try {
          await conn.read(buf);
          await writeAll(conn, encoder.encode(head + first));
          for (const part of rest) {
            await new Promise((r) => setTimeout(r, everyMs));
            await writeAll(conn, encoder.encode(part));
          }
          // Then nothing: read until the proxy closes its side.
          while ((await conn.read(buf)) !== null);
        } catch { /* reset by the proxy */ }
        closed++;
        conns.delete(conn);
        try {
          conn.close();
        } catch { /* closed */ }
      })();
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    open: () => conns.size,
    closed: () => closed,
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

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
}

/** Waits up to `ms` for `done`; on a timeout the message names `what` and `state()` last seen. */
function until(what: string, done: () => boolean, state: () => string, ms: number): Promise<true> {
  return waitFor(what, () => {
    if (done()) return true;
    throw new Error(state());
  }, ms);
}

/** Drops counted by reason. */
function dropCounter(): { drop: (r: DropReason) => void; count: (r: DropReason) => number } {
  const counts = new Map<DropReason, number>();
  return {
    drop: (r) => counts.set(r, (counts.get(r) ?? 0) + 1),
    count: (r) => counts.get(r) ?? 0,
  };
}

/** A proxy for `web.default.mesh` in front of `port`, every timeout at 500 ms unless given. */
function proxyFor(
  port: number,
  pool: EndpointPool,
  options: Partial<HttpProxyOptions> = {},
  scheme?: "h2c",
): HttpProxy {
  const table = buildRouteTable(
    meshConfig([{
      name: "web",
      ...(scheme ? { scheme } : {}),
      ports: [{ port: 80, endpoints: [endpoint(BACKEND, port)] }],
    }]),
    newRouteState({ pool }),
  );
  return new HttpProxy({
    hostname: PROXY,
    port: 0,
    routes: () => table,
    pool,
    logger: quiet,
    responseTimeoutMs: 500,
    clientIdleMs: 500,
    writeTimeoutMs: 500,
    streamIdleTimeoutMs: IDLE_MS,
    ...options,
  });
}

/**
 * Sends `request` and reads what the proxy sends until it closes, or `ms` pass (then
 * `timedOut`); `elapsed` is from the request to the close.
 */
async function exchange(
  port: number,
  request: string,
  ms: number,
): Promise<{ text: string; timedOut: boolean; elapsed: number }> {
  return readUntilClosed(await Deno.connect({ hostname: PROXY, port }), ms, request);
}

const GET = `GET / HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
/** A request after which the proxy closes the client connection: the end of the response. */
const GET_CLOSE = `GET / HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`;

// A plain response (passed on as it came) and two the proxy rebuilds (chunked, and one that
// an HTTP/1.0 client gets dechunked): each copy from the backend is held to the timeout.
const STALLS: { name: string; head: string; first: string; request: string }[] = [
  {
    name: "a Content-Length body",
    head: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
    first: "hello",
    request: GET,
  },
  {
    name: "a chunked body",
    head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    first: "5\r\nhello\r\n",
    request: GET,
  },
  {
    name: "a chunked body dechunked for an HTTP/1.0 client",
    head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    first: "5\r\nhello\r\n",
    request: `GET / HTTP/1.0\r\nHost: ${HOST}\r\n\r\n`,
  },
];

/**
 * How an HTTP/2 stream ended: `status body rst=code`, or "none after 5 s" when it has not
 * closed by then.
 */
function streamOutcome(req: http2.ClientHttp2Stream, ms = 5000): Promise<string> {
  return new Promise<string>((resolve) => {
    let status = "";
    let body = "";
    const timer = setTimeout(() => resolve(`none after ${ms / 1000} s`), ms);
    req.on("response", (h) => status = String(h[":status"]));
    req.on("data", (c) => body += c);
    req.on("error", () => {});
    req.on("close", () => {
      clearTimeout(timer);
      resolve(`${status} ${body} rst=${req.rstCode}`);
    });
  });
}

for (const c of STALLS) {
  Deno.test(`HttpProxy cuts ${c.name} whose backend stalls mid-body after --stream-idle-timeout`, async () => {
    const backend = stallingBackend(c.head, c.first);
    const pool = new EndpointPool();
    const drops = dropCounter();
    const proxy = proxyFor(backend.port, pool, { drop: drops.drop });
    try {
      // Without the timeout the client waits for good: 5 s is 10 times every timeout.
      const got = await exchange(proxy.addr.port, c.request, 5000);
      assert.equal(
        got.timedOut,
        false,
        `the client connection still open after 5 s, every timeout being 500 ms: ` +
          JSON.stringify(got.text),
      );
      assert.match(got.text, /^HTTP\/1\.\d 200 /, `expected the head passed on: ${got.text}`);
      assert.match(got.text, /hello/, `expected the first bytes passed on: ${got.text}`);
      assert.ok(got.elapsed >= IDLE_MS - 50, `cut after ${got.elapsed} ms, before the timeout`);
      await until(
        "the backend connection closed",
        () => backend.closed() === 1,
        () => `closed ${backend.closed()}`,
        2000,
      );
      assert.equal(drops.count("stream_idle_timeout"), 1, "the cut was not counted once");
      const state = pool.state({ address: BACKEND, port: backend.port });
      assert.equal(state.failures, 1, "the endpoint's stall was not charged to it");
      assert.equal(proxy.open, 0, "the client connection is still held");
    } finally {
      await proxy.close();
      backend.close();
    }
  });
}

Deno.test("HttpProxy passes a body that comes a byte every 200 ms, over --stream-idle-timeout of 500 ms", async () => {
  const rest = "0123456789".split("");
  const backend = stallingBackend(
    "HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n",
    "hello",
    rest,
    200,
  );
  const drops = dropCounter();
  const proxy = proxyFor(backend.port, new EndpointPool(), {
    drop: drops.drop,
    clientIdleMs: 5000,
  });
  try {
    // 2 s of body, 4 times the timeout.
    const got = await exchange(proxy.addr.port, GET_CLOSE, 5000);
    assert.equal(got.timedOut, false, `no whole answer in 5 s: ${JSON.stringify(got.text)}`);
    assert.match(got.text, /\r\n\r\nhello0123456789$/, `the body was cut: ${got.text}`);
    assert.equal(drops.count("stream_idle_timeout"), 0);
  } finally {
    await proxy.close();
    backend.close();
  }
});

Deno.test("HttpProxy frees both connections within --stream-idle-timeout when the client left a stalled response", async () => {
  const backend = stallingBackend("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", "hello");
  const proxy = proxyFor(backend.port, new EndpointPool(), { clientIdleMs: 60_000 });
  try {
    const conn = await Deno.connect({ hostname: PROXY, port: proxy.addr.port });
    await conn.write(encoder.encode(GET));
    const buf = new Uint8Array(4096);
    let text = "";
    while (!text.includes("hello")) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += decoder.decode(buf.subarray(0, n));
    }
    assert.match(text, /hello$/, `expected the start of the body: ${text}`);
    conn.close(); // the client leaves; the proxy reads nothing from it while it copies
    const left = Date.now();
    await until(
      "both connections freed",
      () => backend.closed() === 1 && proxy.open === 0,
      () => `backend connections closed ${backend.closed()}, client connections open ${proxy.open}`,
      3000,
    );
    assert.ok(Date.now() - left < IDLE_MS + 1000, `freed only after ${Date.now() - left} ms`);
  } finally {
    await proxy.close();
    backend.close();
  }
});

Deno.test("HttpProxy with --stream-idle-timeout 0 waits on a stalled body as long as it takes", async () => {
  // 1.5 s of silence, three times what the other tests cut at, then the rest.
  const backend = stallingBackend(
    "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
    "hello",
    ["world"],
    1500,
  );
  const drops = dropCounter();
  const proxy = proxyFor(backend.port, new EndpointPool(), {
    drop: drops.drop,
    streamIdleTimeoutMs: 0,
    clientIdleMs: 5000,
  });
  try {
    const got = await exchange(proxy.addr.port, GET_CLOSE, 5000);
    assert.equal(got.timedOut, false, `no whole answer in 5 s: ${JSON.stringify(got.text)}`);
    assert.match(got.text, /\r\n\r\nhelloworld$/, `the body was cut: ${got.text}`);
    assert.equal(drops.count("stream_idle_timeout"), 0);
  } finally {
    await proxy.close();
    backend.close();
  }
});

Deno.test("HttpProxy does not cut a response that a client is slow to take (that is --write-timeout's)", async () => {
  // 4 MiB at once: the client takes none of it for 3 times the stream idle timeout, so the
  // proxy waits on the client, never on the backend.
  const size = 4 * 1024 * 1024;
  const backend = stallingBackend(
    `HTTP/1.1 200 OK\r\nContent-Length: ${size}\r\n\r\n`,
    "x".repeat(size),
  );
  const drops = dropCounter();
  const proxy = proxyFor(backend.port, new EndpointPool(), {
    drop: drops.drop,
    writeTimeoutMs: 10_000,
    clientIdleMs: 10_000,
  });
  try {
    const conn = await Deno.connect({ hostname: PROXY, port: proxy.addr.port });
    try {
      await conn.write(encoder.encode(GET));
      await new Promise((r) => setTimeout(r, 3 * IDLE_MS));
      const buf = new Uint8Array(256 * 1024);
      let got = 0;
      let head = "";
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline) {
        const n = await conn.read(buf);
        if (n === null) break;
        if (head === "") {
          // The head comes first, in one piece with the start of the body.
          const text = decoder.decode(buf.subarray(0, Math.min(n, 200)));
          head = text.slice(0, text.indexOf("\r\n\r\n") + 4);
          got -= head.length;
        }
        got += n;
        if (got >= size) break;
      }
      assert.match(head, /^HTTP\/1\.1 200 /);
      assert.equal(got, size, "the slow client's response was cut");
      assert.equal(drops.count("stream_idle_timeout"), 0);
    } finally {
      conn.close();
    }
  } finally {
    await proxy.close();
    backend.close();
  }
});

/** The size of `/big` from the h2c backend. */
const BIG = 1024 * 1024;

/**
 * An h2c backend: `/big` answers {@linkcode BIG} bytes at once, `/drip` "1234567890" a byte
 * every 200 ms, `/wait` its headers and then, once the request ended, its length; `/stall` answers 200 with "hello" and then nothing (the stream left open);
 * any other path answers 200 "ok".
 */
async function h2cStallingBackend(): Promise<{ port: number; close(): Promise<void> }> {
  const server = http2.createServer();
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  server.on("stream", (stream: http2.ServerHttp2Stream, headers) => {
    stream.on("error", () => {});
    stream.respond({ ":status": 200 });
    if (headers[":path"] === "/stall") stream.write("hello");
    else if (headers[":path"] === "/wait") {
      // Headers at once, then nothing until the request ends: its length then.
      let length = 0;
      stream.on("data", (c: Uint8Array) => length += c.length);
      stream.on("end", () => stream.end(`got ${length}`));
    } else if (headers[":path"] === "/big") stream.end(new Uint8Array(BIG).fill(120));
    else if (headers[":path"] === "/drip") {
      // A byte every 200 ms, 10 in all.
      let i = 0;
      const timer = setInterval(() => {
        if (stream.destroyed) return clearInterval(timer);
        if (++i < 10) return void stream.write(String(i));
        clearInterval(timer);
        stream.end("0");
      }, 200);
    } else stream.end("ok");
  });
  await new Promise<void>((resolve) => server.listen(0, BACKEND, () => resolve()));
  return {
    port: (server.address() as { port: number }).port,
    close: () =>
      new Promise((resolve) => {
        for (const s of sessions) s.destroy();
        server.close(() => resolve());
      }),
  };
}

Deno.test("HttpProxy cuts an HTTP/1 client's response from an h2c backend that stalls mid-body", async () => {
  const backend = await h2cStallingBackend();
  const pool = new EndpointPool();
  const drops = dropCounter();
  const proxy = proxyFor(backend.port, pool, { drop: drops.drop }, "h2c");
  try {
    const got = await exchange(
      proxy.addr.port,
      `GET /stall HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`,
      5000,
    );
    assert.equal(got.timedOut, false, `still open after 5 s: ${JSON.stringify(got.text)}`);
    assert.match(got.text, /^HTTP\/1\.1 200 /);
    assert.match(got.text, /hello/);
    // Chunked, cut: the last chunk never came.
    assert.doesNotMatch(got.text, /\r\n0\r\n\r\n$/, `the cut body looks whole: ${got.text}`);
    assert.equal(drops.count("stream_idle_timeout"), 1);
    assert.equal(pool.state({ address: BACKEND, port: backend.port }).failures, 1);
    await until(
      "the client connection closed",
      () => proxy.open === 0,
      () => `open ${proxy.open}`,
      2000,
    );
  } finally {
    await proxy.close();
    await backend.close();
  }
});

Deno.test("HttpProxy resets only the HTTP/2 stream whose h2c backend stalls mid-body", async () => {
  const backend = await h2cStallingBackend();
  const pool = new EndpointPool();
  const drops = dropCounter();
  const proxy = proxyFor(backend.port, pool, { drop: drops.drop, clientIdleMs: 10_000 }, "h2c");
  const client = http2.connect(`http://${PROXY}:${proxy.addr.port}`);
  client.on("error", () => {});
  /** The status, body and reset code of a request for `path`. */
  const get = (path: string) => {
    const req = client.request({ ":path": path, ":authority": HOST });
    req.end();
    return streamOutcome(req);
  };
  try {
    const stalled = get("/stall");
    const started = Date.now();
    // Another stream on the same connection, while the first one stalls.
    assert.equal(await get("/ok"), `200 ok rst=${http2.constants.NGHTTP2_NO_ERROR}`);
    const cut = await stalled;
    assert.match(cut, /^200 hello rst=(\d+)$/, `expected the stalled stream reset: ${cut}`);
    assert.notEqual(cut, `200 hello rst=${http2.constants.NGHTTP2_NO_ERROR}`);
    assert.ok(Date.now() - started >= IDLE_MS - 50);
    assert.equal(drops.count("stream_idle_timeout"), 1);
    assert.equal(pool.state({ address: BACKEND, port: backend.port }).failures, 1);
    // The connection lives on.
    assert.equal(client.closed || client.destroyed, false, "the client connection was closed");
    assert.equal(await get("/ok"), `200 ok rst=${http2.constants.NGHTTP2_NO_ERROR}`);
  } finally {
    client.destroy();
    await proxy.close();
    await backend.close();
  }
});

Deno.test("HttpProxy does not reset an HTTP/2 stream whose client is slow to take it (flow control holds the backend)", async () => {
  const backend = await h2cStallingBackend();
  const drops = dropCounter();
  const proxy = proxyFor(backend.port, new EndpointPool(), {
    drop: drops.drop,
    clientIdleMs: 10_000,
  }, "h2c");
  // A 16 KiB window, and nothing read for 3 times the timeout: the proxy's stream to the
  // client backs up, so it stops giving window to the backend, which stops sending.
  const client = http2.connect(`http://${PROXY}:${proxy.addr.port}`, {
    settings: { initialWindowSize: 16 * 1024 },
  });
  client.on("error", () => {});
  try {
    const req = client.request({ ":path": "/big", ":authority": HOST });
    req.end();
    req.pause();
    let got = 0;
    const done = new Promise<string>((resolve) => {
      const timer = setTimeout(() => resolve("none after 10 s"), 10_000);
      req.on("data", (c: Uint8Array) => got += c.length);
      req.on("error", () => {});
      req.on("close", () => {
        clearTimeout(timer);
        resolve(`rst=${req.rstCode}`);
      });
    });
    await new Promise((r) => setTimeout(r, 3 * IDLE_MS));
    req.resume();
    assert.equal(await done, `rst=${http2.constants.NGHTTP2_NO_ERROR}`);
    assert.equal(got, BIG, "the slow client's stream was cut");
    assert.equal(drops.count("stream_idle_timeout"), 0);
  } finally {
    client.destroy();
    await proxy.close();
    await backend.close();
  }
});

Deno.test("HttpProxy passes an h2c body that comes a byte every 200 ms, to HTTP/2 and HTTP/1 clients", async () => {
  const backend = await h2cStallingBackend();
  const drops = dropCounter();
  const proxy = proxyFor(backend.port, new EndpointPool(), {
    drop: drops.drop,
    clientIdleMs: 10_000,
  }, "h2c");
  const client = http2.connect(`http://${PROXY}:${proxy.addr.port}`);
  client.on("error", () => {});
  try {
    const drip = client.request({ ":path": "/drip", ":authority": HOST });
    drip.end();
    const h2 = streamOutcome(drip);
    const h1 = exchange(
      proxy.addr.port,
      `GET /drip HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`,
      5000,
    );
    assert.equal(await h2, `200 1234567890 rst=${http2.constants.NGHTTP2_NO_ERROR}`);
    const got = await h1;
    assert.equal(got.timedOut, false, `no whole answer in 5 s: ${JSON.stringify(got.text)}`);
    // Chunked: each byte is a chunk of its own, then the last chunk.
    assert.equal(
      got.text.split("\r\n\r\n").slice(1).join("\r\n\r\n").replace(/1\r\n(\d)\r\n/g, "$1"),
      "12345678900\r\n\r\n",
      `the body was cut: ${JSON.stringify(got.text)}`,
    );
    assert.equal(drops.count("stream_idle_timeout"), 0);
  } finally {
    client.destroy();
    await proxy.close();
    await backend.close();
  }
});

Deno.test("HttpProxy does not reset an HTTP/2 stream whose client keeps sending while its h2c backend waits", async () => {
  const backend = await h2cStallingBackend();
  const drops = dropCounter();
  const proxy = proxyFor(backend.port, new EndpointPool(), {
    drop: drops.drop,
    clientIdleMs: 10_000,
  }, "h2c");
  const client = http2.connect(`http://${PROXY}:${proxy.addr.port}`);
  client.on("error", () => {});
  try {
    // A client-streaming call: 10 bytes, 200 ms apart; the backend answers at the end.
    const req = client.request({ ":method": "POST", ":path": "/wait", ":authority": HOST });
    const answer = streamOutcome(req);
    for (let i = 0; i < 10 && !req.destroyed; i++) {
      await new Promise((r) => setTimeout(r, 200));
      req.write("x");
    }
    req.end();
    assert.equal(await answer, `200 got 10 rst=${http2.constants.NGHTTP2_NO_ERROR}`);
    assert.equal(drops.count("stream_idle_timeout"), 0);
  } finally {
    client.destroy();
    await proxy.close();
    await backend.close();
  }
});
