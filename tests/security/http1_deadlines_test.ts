/**
 * Deadlines of the HTTP entrypoint under slow peers, found in an adversarial pass: each case
 * drives an in-process {@linkcode HttpProxy} with lowered timeouts, from a raw HTTP/1 client
 * or an HTTP/2 one, against a backend (HTTP/1, or h2c) that reads each request body to its end
 * before it answers.
 */
import assert from "node:assert/strict";
import http2 from "node:http2";
import { Logger } from "../../src/observability/mod.ts";
import { EndpointPool } from "../../src/proxy/endpoint_pool.ts";
import { HttpProxy } from "../../src/proxy/http_proxy.ts";
import { buildRouteTable, newRouteState } from "../../src/proxy/route_table.ts";
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";
import { readUntilClosed } from "./_read_until_closed.ts";

const PROXY = "127.0.70.110";
const BACKEND = "127.0.70.111";
const HOST = "web.default.mesh";
const quiet = new Logger({ level: "error", write: () => {} });
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * A backend that reads each request head and its Content-Length body, then answers 200 with
 * the body's length; it counts the requests it answered.
 */
function bodyBackend(hostname: string): { port: number; answered: () => number; close(): void } {
  const listener = Deno.listen({ hostname, port: 0 });
  const conns = new Set<Deno.Conn>();
  let answered = 0;
  (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      (async () => {
        const buf = new Uint8Array(64 * 1024);
        let got = "";
        try {
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) return;
            got += decoder.decode(buf.subarray(0, n));
            for (;;) {
              const end = got.indexOf("\r\n\r\n");
              if (end < 0) break;
              const length = Number(
                /\r\ncontent-length: *(\d+)/i.exec(got.slice(0, end))?.[1] ?? 0,
              );
              if (got.length < end + 4 + length) break;
              got = got.slice(end + 4 + length);
              const body = String(length);
              await conn.write(
                encoder.encode(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`),
              );
              answered++;
            }
          }
        } catch {
          /* the proxy closed it */
        } finally {
          conns.delete(conn);
          try {
            conn.close();
          } catch { /* closed */ }
        }
      })();
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    answered: () => answered,
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

/** A proxy for `web.default.mesh` in front of `backend`, with a 500 ms response timeout. */
function proxyFor(backendPort: number, pool: EndpointPool): HttpProxy {
  const table = buildRouteTable(
    meshConfig([{
      name: "web",
      ports: [{ port: 80, endpoints: [endpoint(BACKEND, backendPort)] }],
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
  });
}

Deno.test("HttpProxy passes an upload that keeps coming for longer than --response-timeout", async () => {
  const backend = bodyBackend(BACKEND);
  const proxy = proxyFor(backend.port, new EndpointPool());
  try {
    const conn = await Deno.connect({ hostname: PROXY, port: proxy.addr.port });
    const reply = readUntilClosed(conn, 10_000);
    await conn.write(
      encoder.encode(
        `POST /up HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 12\r\nConnection: close\r\n\r\n`,
      ),
    );
    // 12 bytes, one each 150 ms: the body takes 1.8 s, over three times the response timeout,
    // and never stops for as long as the timeout.
    for (let i = 0; i < 12; i++) {
      await new Promise((r) => setTimeout(r, 150));
      try {
        await conn.write(encoder.encode("x"));
      } catch {
        break; // the proxy gave up on the request: what it answered says why
      }
    }
    const { text, timedOut } = await reply;
    assert.equal(timedOut, false, `no answer within 10 s; got ${JSON.stringify(text)}`);
    assert.match(
      text,
      /^HTTP\/1\.1 200 /,
      `expected the backend's 200, got ${JSON.stringify(text)}`,
    );
    assert.match(text, /\r\n\r\n12$/, `expected the backend to have read 12 bytes: ${text}`);
  } finally {
    await proxy.close();
    backend.close();
  }
});

Deno.test("HttpProxy answers 408 to a request body that stalls, and holds it against no endpoint", async () => {
  const backend = bodyBackend(BACKEND);
  // One failure ejects: a stall blamed on the endpoint would take it out of rotation.
  const pool = new EndpointPool({ outlier: { consecutiveFailures: 1 } });
  const proxy = proxyFor(backend.port, pool);
  try {
    const conn = await Deno.connect({ hostname: PROXY, port: proxy.addr.port });
    const reply = readUntilClosed(conn, 10_000);
    // Ten bytes announced, two sent, then nothing: the backend waits for the rest.
    await conn.write(
      encoder.encode(`POST /up HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 10\r\n\r\nab`),
    );
    const { text, timedOut } = await reply;
    assert.equal(timedOut, false, `the stalled request still open after 10 s: ${text}`);
    assert.match(text, /^HTTP\/1\.1 408 /, `expected 408, got ${JSON.stringify(text)}`);
    const state = pool.state({ address: BACKEND, port: backend.port });
    assert.equal(state.failures, 0, "the client's stall was counted as an endpoint failure");
    assert.equal(pool.ejected(state), false, "the client's stall ejected the endpoint");
    // The endpoint still serves the next client.
    const next = await Deno.connect({ hostname: PROXY, port: proxy.addr.port });
    const answer = readUntilClosed(next, 10_000);
    await next.write(
      encoder.encode(`GET / HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`),
    );
    const after = await answer;
    assert.match(after.text, /^HTTP\/1\.1 200 /, `next request: ${JSON.stringify(after.text)}`);
  } finally {
    await proxy.close();
    backend.close();
  }
});

Deno.test("HttpProxy still answers 504 when the backend stops taking the request body", async () => {
  // A backend that accepts and never reads: the body's copy waits on it, not on the client.
  const listener = Deno.listen({ hostname: BACKEND, port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const c of listener) held.push(c);
  })();
  const pool = new EndpointPool();
  const proxy = proxyFor((listener.addr as Deno.NetAddr).port, pool);
  try {
    const conn = await Deno.connect({ hostname: PROXY, port: proxy.addr.port });
    const reply = readUntilClosed(conn, 10_000);
    const size = 16 * 1024 * 1024; // far over what the socket buffers on the way hold
    await conn.write(
      encoder.encode(`POST /up HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: ${size}\r\n\r\n`),
    );
    const sending = (async () => {
      const block = new Uint8Array(64 * 1024);
      for (let sent = 0; sent < size;) sent += await conn.write(block);
    })().catch(() => {}); // refused at the end: what the proxy answered says why
    const { text, timedOut } = await reply;
    await sending;
    assert.equal(timedOut, false, `no answer within 10 s: ${text}`);
    assert.match(text, /^HTTP\/1\.1 504 /, `expected 504, got ${JSON.stringify(text)}`);
    const state = pool.state({ address: BACKEND, port: (listener.addr as Deno.NetAddr).port });
    assert.equal(
      state.failures,
      1,
      `the backend's stall was not counted against it (failures ${state.failures})`,
    );
  } finally {
    await proxy.close();
    listener.close();
    for (const c of held) c.close();
    await accepting;
  }
});

/** An h2c backend that reads each request body to its end, then answers 200 with its length. */
async function h2cBackend(hostname: string): Promise<{ port: number; close(): Promise<void> }> {
  const server = http2.createServer();
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  server.on("stream", (stream: http2.ServerHttp2Stream) => {
    let length = 0;
    stream.on("error", () => {});
    stream.on("data", (chunk: Uint8Array) => length += chunk.length);
    stream.on("end", () => {
      if (stream.destroyed) return; // the proxy reset it
      stream.respond({ ":status": 200 });
      stream.end(String(length));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, hostname, () => resolve()));
  return {
    port: (server.address() as { port: number }).port,
    close: () =>
      new Promise((resolve) => {
        for (const s of sessions) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A proxy for `web.default.mesh`, a service with scheme h2c, with a 500 ms response timeout. */
function h2cProxyFor(backendPort: number): HttpProxy {
  const table = buildRouteTable(meshConfig([{
    name: "web",
    scheme: "h2c",
    ports: [{ port: 80, endpoints: [endpoint(BACKEND, backendPort)] }],
  }]));
  return new HttpProxy({
    hostname: PROXY,
    port: 0,
    routes: () => table,
    pool: new EndpointPool(),
    logger: quiet,
    responseTimeoutMs: 500,
    clientIdleMs: 1000,
    writeTimeoutMs: 1000,
  });
}

Deno.test("HttpProxy passes an HTTP/1 upload to an h2c service that keeps coming for longer than --response-timeout", async () => {
  const backend = await h2cBackend(BACKEND);
  const proxy = h2cProxyFor(backend.port);
  try {
    const conn = await Deno.connect({ hostname: PROXY, port: proxy.addr.port });
    const reply = readUntilClosed(conn, 10_000);
    await conn.write(
      encoder.encode(
        `POST /up HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 12\r\nConnection: close\r\n\r\n`,
      ),
    );
    for (let i = 0; i < 12; i++) {
      await new Promise((r) => setTimeout(r, 150));
      try {
        await conn.write(encoder.encode("x"));
      } catch {
        break; // the proxy gave up on the request: what it answered says why
      }
    }
    const { text, timedOut } = await reply;
    assert.equal(timedOut, false, `no answer within 10 s; got ${JSON.stringify(text)}`);
    assert.match(
      text,
      /^HTTP\/1\.1 200 /,
      `expected the backend's 200, got ${JSON.stringify(text)}`,
    );
    // No length from the backend: the body comes chunked ("2", "12", then the last chunk).
    assert.match(
      text,
      /\r\n\r\n2\r\n12\r\n0\r\n\r\n$/,
      `expected the backend to have read 12 bytes: ${text}`,
    );
  } finally {
    await proxy.close();
    await backend.close();
  }
});

Deno.test("HttpProxy answers 408 to an HTTP/1 body for an h2c service that stalls, rather than hang", async () => {
  const backend = await h2cBackend(BACKEND);
  const proxy = h2cProxyFor(backend.port);
  try {
    const conn = await Deno.connect({ hostname: PROXY, port: proxy.addr.port });
    // Every timeout is 1 s at most: an answer that has not come after 10 s never comes.
    const reply = readUntilClosed(conn, 10_000);
    await conn.write(
      encoder.encode(`POST /up HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 10\r\n\r\nab`),
    );
    const { text, timedOut } = await reply;
    assert.equal(timedOut, false, `the stalled request still open after 10 s: ${text}`);
    assert.match(text, /^HTTP\/1\.1 408 /, `expected 408, got ${JSON.stringify(text)}`);
  } finally {
    await proxy.close();
    await backend.close();
  }
});

/**
 * An HTTP/2 request with prior knowledge through the proxy, its body `parts` one byte each
 * 150 ms (the stream left open after them when `stall`); resolves with the status and body.
 */
async function h2Upload(port: number, parts: number, stall: boolean): Promise<string> {
  const client = http2.connect(`http://${PROXY}:${port}`);
  client.on("error", () => {});
  try {
    const req = client.request({ ":method": "POST", ":path": "/up", ":authority": HOST });
    const answer = new Promise<string>((resolve) => {
      let status = "";
      let body = "";
      const timer = setTimeout(() => resolve("no answer in 10 s"), 10_000);
      const done = (): void => {
        clearTimeout(timer);
        resolve(`${status} ${body}`);
      };
      req.on("response", (h) => status = String(h[":status"]));
      req.on("data", (c) => body += c);
      req.on("error", done);
      req.on("close", done);
    });
    for (let i = 0; i < parts && !req.destroyed; i++) {
      await new Promise((r) => setTimeout(r, 150));
      req.write("x");
    }
    if (!stall && !req.destroyed) req.end();
    return await answer;
  } finally {
    client.destroy();
  }
}

Deno.test("HttpProxy passes an HTTP/2 upload that keeps coming for longer than --response-timeout, and answers 408 to one that stalls", async () => {
  const backend = await h2cBackend(BACKEND);
  const pool = new EndpointPool({ outlier: { consecutiveFailures: 1 } });
  const table = buildRouteTable(
    meshConfig([{
      name: "web",
      scheme: "h2c",
      ports: [{ port: 80, endpoints: [endpoint(BACKEND, backend.port)] }],
    }]),
    newRouteState({ pool }),
  );
  const proxy = new HttpProxy({
    hostname: PROXY,
    port: 0,
    routes: () => table,
    pool,
    logger: quiet,
    responseTimeoutMs: 500,
  });
  try {
    // 12 bytes over 1.8 s, against a 500 ms response timeout.
    assert.equal(await h2Upload(proxy.addr.port, 12, false), "200 12");
    // Two bytes, then nothing: the client's stall, held against no endpoint.
    assert.match(await h2Upload(proxy.addr.port, 2, true), /^408 /);
    const state = pool.state({ address: BACKEND, port: backend.port });
    assert.equal(state.failures, 0, "the client's stall was counted as an endpoint failure");
  } finally {
    await proxy.close();
    await backend.close();
  }
});
