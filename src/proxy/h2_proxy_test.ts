/**
 * HTTP/2 cleartext and gRPC through the node proxy's HTTP entrypoint: real node:http2 clients
 * and backends on loopback.
 */
import assert from "node:assert/strict";
import http2 from "node:http2";
import net from "node:net";
import { Logger } from "../observability/mod.ts";
import { type MeshConfig, parseBreakerExpression } from "../topology/mod.ts";
import { NodeProxy } from "./mod.ts";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { RawClient, rawRequest } from "./_testing.ts";
import { waitFor } from "../_testing.ts";

const quiet = new Logger({ level: "error", write: () => {} });

interface H2Backend {
  port: number;
  sessions: number;
  /** Streams open now, and GOAWAY frames received. */
  open: number;
  goaways: number;
  seen: http2.IncomingHttpHeaders[];
  close(): Promise<void>;
}

/**
 * An h2c backend. `/echo` streams each request chunk back as it arrives, prefixed with the
 * backend's name, then ends with gRPC-style trailers; `/slow` never answers.
 */
function h2Backend(name: string): Promise<H2Backend> {
  const server = http2.createServer();
  const open = new Set<http2.ServerHttp2Session>();
  const b: H2Backend = {
    port: 0,
    sessions: 0,
    open: 0,
    goaways: 0,
    seen: [],
    close: () =>
      new Promise((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      }),
  };
  server.on("session", (s) => {
    b.sessions++;
    open.add(s);
    s.on("close", () => open.delete(s));
    s.on("goaway", () => b.goaways++);
  });
  server.on("stream", (stream: http2.ServerHttp2Stream, headers) => {
    b.seen.push(headers);
    b.open++;
    stream.on("close", () => b.open--);
    stream.on("error", () => {});
    if (headers[":path"] === "/slow") return;
    if (headers[":path"] === "/mirror" || headers[":path"] === "/late") {
      // The body back as it came; /late answers after 300 ms.
      const answer = () => {
        if (stream.destroyed) return;
        stream.respond({ ":status": 200, "x-backend": name });
        stream.pipe(stream);
      };
      if (headers[":path"] === "/late") setTimeout(answer, 300);
      else answer();
      return;
    }
    stream.respond({ ":status": 200, "content-type": "application/grpc", "x-backend": name }, {
      waitForTrailers: true,
    });
    stream.on("wantTrailers", () => {
      stream.sendTrailers({ "grpc-status": "0", "grpc-message": `served-by-${name}` });
    });
    stream.on(
      "data",
      (chunk: Uint8Array) => stream.write(`${name}:${new TextDecoder().decode(chunk)};`),
    );
    stream.on("end", () => stream.end());
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      b.port = (server.address() as { port: number }).port;
      resolve(b);
    });
  });
}

interface H2Result {
  headers: http2.IncomingHttpHeaders;
  body: string;
  trailers: http2.IncomingHttpHeaders | null;
}

function call(
  client: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  chunks: string[] = [],
): Promise<H2Result> {
  return new Promise((resolve, reject) => {
    const req = client.request(headers);
    let got: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders | null = null;
    let body = "";
    req.on("response", (h) => got = h);
    req.on("trailers", (t) => trailers = t);
    req.on("data", (d: Uint8Array) => body += new TextDecoder().decode(d));
    req.on("end", () => resolve({ headers: got, body, trailers }));
    req.on("error", reject);
    for (const c of chunks) req.write(c);
    req.end();
  });
}

async function withH2Proxy(
  config: MeshConfig,
  fn: (client: http2.ClientHttp2Session, port: number, proxy: NodeProxy) => Promise<void>,
  options: { responseTimeoutMs?: number } = {},
): Promise<void> {
  const proxy = new NodeProxy({ hostname: "127.0.0.1", httpPort: 0, logger: quiet, ...options });
  await proxy.start();
  await proxy.apply(config);
  const port = Number(proxy.httpAddress.split(":")[1]);
  const client = http2.connect(`http://127.0.0.1:${port}`);
  client.on("error", () => {});
  try {
    await fn(client, port, proxy);
  } finally {
    client.close();
    await proxy.stop();
  }
}

/** The h2c service `greeter.default.mesh` with one endpoint, on 127.0.0.1:`port`. */
const greeter = (port: number): MeshConfig =>
  meshConfig([{
    name: "greeter",
    scheme: "h2c",
    ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", port)] }],
  }]);

const grpcHeaders = (authority: string, path = "/echo"): http2.OutgoingHttpHeaders => ({
  ":method": "POST",
  ":path": path,
  ":authority": authority,
  "content-type": "application/grpc",
  "te": "trailers",
});

Deno.test("h2c: a gRPC call gets its body and trailers back, with X-Forwarded-For added", async () => {
  const a = await h2Backend("a");
  try {
    const config = greeter(a.port);
    await withH2Proxy(config, async (client) => {
      const r = await call(
        client,
        { ...grpcHeaders("greeter.default.mesh"), "x-forwarded-for": "10.9.9.9" },
        ["hello", "world"],
      );
      assert.equal(r.headers[":status"], 200);
      assert.equal(r.headers["x-backend"], "a");
      assert.match(r.body, /^a:hello;?(a:)?/);
      assert.equal(r.body.replaceAll("a:", "").replaceAll(";", ""), "helloworld");
      assert.equal(r.trailers?.["grpc-status"], "0");
      assert.equal(r.trailers?.["grpc-message"], "served-by-a");
      const seen = a.seen[0]!;
      assert.equal(seen[":authority"], "greeter.default.mesh");
      assert.equal(seen["te"], "trailers");
      assert.equal(seen["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
      assert.equal(seen["forwarded"], "for=127.0.0.1");
    });
  } finally {
    await a.close();
  }
});

Deno.test("h2c: many concurrent streams share one backend connection per endpoint", async () => {
  const a = await h2Backend("a");
  const b = await h2Backend("b");
  try {
    const config = meshConfig([{
      name: "greeter",
      scheme: "h2c",
      ports: [{
        port: 80,
        endpoints: [endpoint("127.0.0.1", a.port), endpoint("127.0.0.1", b.port)],
      }],
    }]);
    await withH2Proxy(config, async (client) => {
      const results = await Promise.all(
        Array.from(
          { length: 100 },
          (_, i) => call(client, grpcHeaders("greeter.default.mesh"), [`m${i}`]),
        ),
      );
      const by = new Map<string, number>();
      for (const r of results) {
        assert.equal(r.trailers?.["grpc-status"], "0");
        const who = String(r.headers["x-backend"]);
        by.set(who, (by.get(who) ?? 0) + 1);
      }
      assert.equal((by.get("a") ?? 0) + (by.get("b") ?? 0), 100);
      assert.ok((by.get("a") ?? 0) > 10 && (by.get("b") ?? 0) > 10, `spread: ${[...by]}`);
      assert.equal(a.sessions, 1);
      assert.equal(b.sessions, 1);
    });
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("h2c: failures come back as gRPC statuses a client understands", async () => {
  const a = await h2Backend("a");
  try {
    const config = meshConfig([
      { name: "empty", scheme: "h2c", ports: [{ port: 80 }] },
      {
        name: "plain",
        scheme: "http",
        ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", a.port)] }],
      },
      {
        name: "slow",
        scheme: "h2c",
        ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", a.port)] }],
      },
      {
        name: "locked",
        scheme: "h2c",
        ports: [{
          port: 80,
          access: [],
          endpoints: [endpoint("127.0.0.1", a.port, { serviceAccount: "default/locked" })],
        }],
      },
    ], { acl: true });
    await withH2Proxy(config, async (client) => {
      const noEndpoint = await call(client, grpcHeaders("empty.default.mesh"));
      assert.equal(noEndpoint.headers[":status"], 200);
      assert.equal(noEndpoint.headers["grpc-status"], "14");
      assert.match(
        decodeURIComponent(String(noEndpoint.headers["grpc-message"])),
        /Service "default\/empty:80" has no ready endpoint/,
      );
      const denied = await call(client, grpcHeaders("locked.default.mesh"));
      assert.equal(denied.headers["grpc-status"], "7");
      assert.match(decodeURIComponent(String(denied.headers["grpc-message"])), /Access denied/);
      const unknown = await call(client, { ":path": "/", ":authority": "nope.default.mesh" });
      assert.equal(unknown.headers[":status"], 404);
      assert.match(unknown.body, /No mesh service answers to "nope.default.mesh"/);
      const wrongScheme = await call(client, { ":path": "/", ":authority": "plain.default.mesh" });
      assert.equal(wrongScheme.headers[":status"], 502);
      assert.match(wrongScheme.body, /scheme http/);
      const slow = await call(client, grpcHeaders("slow.default.mesh", "/slow"));
      assert.equal(slow.headers["grpc-status"], "4");
      assert.match(
        decodeURIComponent(String(slow.headers["grpc-message"])),
        /no response within 300 ms/,
      );
    }, { responseTimeoutMs: 300 });
  } finally {
    await a.close();
  }
});

Deno.test("h2c and HTTP/1.1 share the entrypoint port", async () => {
  const a = await h2Backend("a");
  try {
    const config = meshConfig([{ name: "empty", ports: [{ port: 80 }] }]);
    await withH2Proxy(config, async (client, port) => {
      const h2 = await call(client, { ":path": "/", ":authority": "empty.default.mesh" });
      assert.equal(h2.headers[":status"], 503);
      const h1 = await rawRequest(port, "empty.default.mesh");
      assert.equal(h1.status, 503);
    });
  } finally {
    await a.close();
  }
});

Deno.test("h2c: an HTTP/1.1 client reaches an h2c service, with chunked body and trailers", async () => {
  const a = await h2Backend("a");
  try {
    const config = greeter(a.port);
    await withH2Proxy(config, async (_, port) => {
      const client = await RawClient.connect(port);
      try {
        for (const word of ["first", "second"]) {
          const r = await client.request(
            `POST /echo HTTP/1.1\r\nHost: greeter.default.mesh\r\nContent-Length: ${word.length}\r\n` +
              `Connection: keep-alive\r\n\r\n${word}`,
          );
          assert.equal(r.status, 200);
          assert.equal(r.headers.get("transfer-encoding"), "chunked");
          assert.equal(r.headers.get("x-backend"), "a");
          assert.equal(r.body, `a:${word};`);
          assert.match(r.head, /^HTTP\/1\.1 200 OK$/m);
        }
        assert.equal(a.sessions, 1, "both requests went over one HTTP/2 connection");
        assert.equal(a.seen[0]![":method"], "POST");
        assert.equal(a.seen[0]![":authority"], "greeter.default.mesh");
        assert.equal(a.seen[0]!["connection"], undefined);
        assert.equal(a.seen[0]!["x-forwarded-for"], "127.0.0.1");
      } finally {
        client.close();
      }
      // The trailers arrive after the last chunk.
      const c2 = await RawClient.connect(port);
      try {
        await c2.send(
          "POST /echo HTTP/1.1\r\nHost: greeter.default.mesh\r\nTransfer-Encoding: chunked\r\n" +
            "Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        const raw = await c2.readBytes(1 << 20);
        assert.match(raw, /\r\n0\r\ngrpc-status: 0\r\ngrpc-message: served-by-a\r\n\r\n$/);
      } finally {
        c2.close();
      }
    });
  } finally {
    await a.close();
  }
});

Deno.test("h2c: an HTTP/1.1 client that expects 100 Continue gets it from meshd, then sends its body", async () => {
  // An h2c backend's interim responses are not passed on: without meshd's own 100 the client
  // waited out its own timer before its body went.
  const a = await h2Backend("a");
  try {
    await withH2Proxy(greeter(a.port), async (_, port) => {
      const client = await RawClient.connect(port);
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        await client.send(
          "POST /echo HTTP/1.1\r\nHost: greeter.default.mesh\r\nContent-Length: 5\r\n" +
            "Expect: 100-continue\r\n\r\n",
        );
        const interim = await Promise.race([
          client.readBytes(25),
          new Promise<string>((r) => timer = setTimeout(() => r("nothing within 2 s"), 2000)),
        ]);
        assert.equal(interim, "HTTP/1.1 100 Continue\r\n\r\n");
        await client.send("hello");
        const r = await client.read();
        assert.equal(r.status, 200);
        assert.equal(r.body, "a:hello;");
        assert.equal(a.seen[0]!["expect"], undefined, "the backend is not asked for another");
      } finally {
        clearTimeout(timer);
        client.close();
      }
    });
  } finally {
    await a.close();
  }
});

Deno.test("h2c: clients that vanish mid-response do not hurt the proxy or other clients", async () => {
  const a = await h2Backend("a");
  try {
    const config = greeter(a.port);
    await withH2Proxy(config, async (client, port) => {
      for (let round = 0; round < 5; round++) {
        const rude = http2.connect(`http://127.0.0.1:${port}`);
        rude.on("error", () => {});
        const streams = Array.from({ length: 20 }, () => {
          const s = rude.request(grpcHeaders("greeter.default.mesh"));
          s.on("error", () => {});
          s.write("x".repeat(32 * 1024));
          return s;
        });
        await new Promise((r) => setTimeout(r, 10));
        rude.destroy();
        void streams;
      }
      const r = await call(client, grpcHeaders("greeter.default.mesh"), ["still"]);
      assert.equal(r.trailers?.["grpc-status"], "0");
      assert.equal(r.body, "a:still;");
    });
  } finally {
    await a.close();
  }
});

Deno.test("h2c: a 2 MiB body streams both ways through both flow-control windows", async () => {
  const a = await h2Backend("a");
  try {
    const config = greeter(a.port);
    await withH2Proxy(config, async (client) => {
      const sent = new Uint8Array(2 * 1024 * 1024).map((_, i) => (i * 7) & 255);
      const got = await new Promise<Uint8Array>((resolve, reject) => {
        const req = client.request({
          ":method": "POST",
          ":path": "/mirror",
          ":authority": "greeter.default.mesh",
        });
        const parts: Uint8Array[] = [];
        req.on("data", (d: Uint8Array) => parts.push(d));
        req.on("end", () => {
          const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
          let at = 0;
          for (const p of parts) all.set(p, (at += p.length) - p.length);
          resolve(all);
        });
        req.on("error", reject);
        for (let at = 0; at < sent.length; at += 64 * 1024) {
          req.write(sent.subarray(at, at + 64 * 1024));
        }
        req.end();
      });
      assert.equal(got.length, sent.length);
      assert.ok(got.every((v, i) => v === sent[i]), "the body came back changed");
    });
  } finally {
    await a.close();
  }
});

Deno.test("h2c: an endpoint that refuses connections is retried on another within the retry attempts", async () => {
  const a = await h2Backend("a");
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = closed.addr.port;
  closed.close();
  try {
    const config = meshConfig([{
      name: "greeter",
      scheme: "h2c",
      retryAttempts: 2,
      ports: [{
        port: 80,
        endpoints: [endpoint("127.0.0.1", deadPort), endpoint("127.0.0.1", a.port)],
      }],
    }]);
    await withH2Proxy(config, async (client) => {
      for (let i = 0; i < 6; i++) {
        const r = await call(client, grpcHeaders("greeter.default.mesh"), ["x"]);
        assert.equal(r.trailers?.["grpc-status"], "0", JSON.stringify(r));
      }
    });
  } finally {
    await a.close();
  }
});

Deno.test("h2c: rapid reset cuts the client off and cancels every backend stream it opened", async () => {
  const a = await h2Backend("a");
  try {
    const config = greeter(a.port);
    await withH2Proxy(config, async (client, port) => {
      const rude = http2.connect(`http://127.0.0.1:${port}`);
      rude.on("error", () => {});
      const goaway = new Promise<number>((resolve) => rude.on("goaway", (code) => resolve(code)));
      for (let i = 0; i < 600 && !rude.destroyed && !rude.closed; i++) {
        const s = rude.request(grpcHeaders("greeter.default.mesh", "/slow"));
        s.on("error", () => {});
        s.close(http2.constants.NGHTTP2_CANCEL);
      }
      assert.equal(await goaway, http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      rude.destroy();
      await waitFor("the backend streams cancelled", () => a.open === 0 ? true : undefined, 5000);
      // Others are served as before.
      const r = await call(client, grpcHeaders("greeter.default.mesh"), ["ok"]);
      assert.equal(r.trailers?.["grpc-status"], "0");
    });
  } finally {
    await a.close();
  }
});

Deno.test("h2c: an endpoint dropped from the config is drained: GOAWAY, and the call in flight finishes", async () => {
  const a = await h2Backend("a");
  const b = await h2Backend("b");
  try {
    await withH2Proxy(greeter(a.port), async (client, _port, proxy) => {
      const late = call(client, { ...grpcHeaders("greeter.default.mesh", "/late") }, ["x"]);
      await waitFor("the call at the backend", () => a.open === 1 ? true : undefined, 5000);
      await proxy.apply({ ...greeter(b.port), version: 2 });
      await waitFor(
        "a GOAWAY at the dropped endpoint",
        () => a.goaways > 0 ? true : undefined,
        5000,
      );
      const r = await late;
      assert.equal(r.headers[":status"], 200);
      assert.equal(r.body, "x");
      await waitFor("the drained connection closed", () => a.open === 0 ? true : undefined, 5000);
      const next = await call(client, grpcHeaders("greeter.default.mesh"), ["y"]);
      assert.equal(next.headers["x-backend"], "b");
    });
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("h2c: a draining proxy sends its clients GOAWAY at once; the call in flight finishes, then the connection ends", async () => {
  const a = await h2Backend("a");
  try {
    const config = greeter(a.port);
    await withH2Proxy(config, async (client, _port, proxy) => {
      let goaway = false;
      let closed = false;
      client.on("goaway", () => goaway = true);
      client.on("close", () => closed = true);
      const late = call(client, { ...grpcHeaders("greeter.default.mesh", "/late") }, ["x"]);
      await waitFor("the call at the backend", () => a.open === 1 ? true : undefined, 5000);
      await proxy.drain();
      const r = await late;
      // Before the call ended (the backend answers 300 ms after it came): the client opens its
      // next calls elsewhere (a successor on the same port) rather than on a leaving proxy.
      assert.ok(goaway, "no GOAWAY came before the answer");
      assert.equal(r.headers[":status"], 200);
      assert.equal(r.body, "x");
      await waitFor("the connection ended", () => closed ? true : undefined, 5000);
      await waitFor("no connection in flight", () => proxy.inFlight === 0 ? true : undefined, 5000);
    });
  } finally {
    await a.close();
  }
});

Deno.test("h2c: a client accepted before a drain whose preface comes after it gets GOAWAY, and its connection ends", async () => {
  const proxy = new NodeProxy({ hostname: "127.0.0.1", httpPort: 0, logger: quiet });
  await proxy.start();
  try {
    await proxy.apply(meshConfig([{
      name: "greeter",
      scheme: "h2c",
      ports: [{ port: 80, endpoints: [endpoint("127.0.0.1", 9)] }],
    }]));
    const port = Number(proxy.httpAddress.split(":")[1]);
    const socket = net.connect(port, "127.0.0.1");
    socket.on("error", () => {});
    await waitFor("the connection accepted", () => proxy.inFlight === 1 ? true : undefined, 5000);
    await proxy.drain();
    // The preface is written once the session starts on the socket: after the drain.
    const client = http2.connect(`http://127.0.0.1:${port}`, { createConnection: () => socket });
    client.on("error", () => {});
    let goaway = false;
    let closed = false;
    client.on("goaway", () => goaway = true);
    client.on("close", () => closed = true);
    try {
      await waitFor("a GOAWAY at the client", () => goaway ? true : undefined, 5000);
      await waitFor("the connection ended", () => closed ? true : undefined, 5000);
    } finally {
      client.destroy();
    }
  } finally {
    await proxy.stop();
  }
});

/** A NodeProxy on 127.0.61.1 (this file's newer tests keep to that address) and an h2 client. */
async function onOwnAddress(
  options: { connect?: (address: string, port: number) => Promise<Deno.TcpConn> },
  fn: (client: http2.ClientHttp2Session, port: number, proxy: NodeProxy) => Promise<void>,
): Promise<void> {
  const proxy = new NodeProxy({ hostname: "127.0.61.1", httpPort: 0, logger: quiet, ...options });
  await proxy.start();
  const port = Number(proxy.httpAddress.split(":")[1]);
  const client = http2.connect(`http://127.0.61.1:${port}`);
  client.on("error", () => {});
  try {
    await fn(client, port, proxy);
  } finally {
    client.close();
    await proxy.stop();
  }
}

Deno.test("H2Proxy opens backend connections through the node's connect seam", async () => {
  const a = await h2Backend("a");
  const dialled: string[] = [];
  try {
    // Nothing listens at 127.0.61.9: only the seam, which dials the backend instead, reaches it.
    const connect = (address: string, port: number): Promise<Deno.TcpConn> => {
      dialled.push(`${address}:${port}`);
      return Deno.connect({ hostname: "127.0.0.1", port: a.port });
    };
    await onOwnAddress({ connect }, async (client, _port, proxy) => {
      await proxy.apply(meshConfig([{
        name: "greeter",
        scheme: "h2c",
        ports: [{ port: 80, endpoints: [endpoint("127.0.61.9", a.port)] }],
      }]));
      const r = await call(client, grpcHeaders("greeter.default.mesh"), ["x"]);
      assert.equal(r.trailers?.["grpc-status"], "0", JSON.stringify(r));
      assert.deepEqual(dialled, [`127.0.61.9:${a.port}`]);
    });
  } finally {
    await a.close();
  }
});

Deno.test("H2Proxy refuses an h2c endpoint that is its own listener with a loop status", async () => {
  await onOwnAddress({}, async (client, port, proxy) => {
    await proxy.apply(meshConfig([{
      name: "greeter",
      scheme: "h2c",
      ports: [{ port: 80, endpoints: [endpoint("127.0.61.1", port)] }],
    }]));
    const r = await call(client, grpcHeaders("greeter.default.mesh"), ["x"]);
    assert.equal(r.headers["x-meshd-error"], "loop", JSON.stringify(r));
    assert.match(
      decodeURIComponent(String(r.headers["grpc-message"])),
      /Forwarding loop: endpoint 127\.0\.61\.1:\d+ of service "default\/greeter:80"/,
    );
  });
});

Deno.test("H2Proxy makes no retry once the client's stream is gone, and counts it as no answer", async () => {
  const dialled: string[] = [];
  let refuse!: (e: Error) => void;
  const connect = (address: string, port: number): Promise<Deno.TcpConn> => {
    dialled.push(`${address}:${port}`);
    return new Promise((_, reject) => refuse = reject);
  };
  await onOwnAddress({ connect }, async (client, _port, proxy) => {
    await proxy.apply(meshConfig([{
      name: "greeter",
      scheme: "h2c",
      retryAttempts: 2,
      ports: [{
        port: 80,
        endpoints: [endpoint("127.0.61.9", 50051), endpoint("127.0.61.10", 50051)],
      }],
    }]));
    const req = client.request(grpcHeaders("greeter.default.mesh"));
    req.on("error", () => {});
    req.end();
    await waitFor("the first connect", () => dialled.length === 1 ? true : undefined, 5000);
    // The client cancels while meshd connects; a PING sent after the RST_STREAM left comes
    // back after meshd has read it.
    const closed = new Promise((resolve) => req.on("close", resolve));
    req.close(http2.constants.NGHTTP2_CANCEL);
    await closed;
    await new Promise((resolve, reject) => client.ping((e) => e ? reject(e) : resolve(null)));
    refuse(new Error("connection refused"));
    const series = (code: string) =>
      new RegExp(
        `^meshd_http_responses_total\\{[^}]*service="default/greeter"[^}]*code="${code}"[^}]*\\} (\\d+)$`,
        "m",
      );
    const counted = await waitFor("the request counted", () => {
      const text = proxy.registry.render();
      return /^meshd_open_connections\{[^}]*service="default\/greeter"[^}]*\} 0$/m.test(text) &&
          series("4xx").test(text)
        ? text
        : undefined;
    }, 5000);
    assert.equal(dialled.length, 1, `a retry was made for nobody: ${dialled.join(", ")}`);
    assert.equal(counted.match(series("4xx"))?.[1], "1");
    assert.equal(counted.match(series("5xx"))?.[1] ?? "0", "0", counted);
  });
});

Deno.test("h2c: the circuit breaker records no connect that failed for want of a descriptor in meshd", async () => {
  const a = await h2Backend("a");
  let fail = true;
  // Nothing listens at 127.0.69.11: the seam fails as Deno does when meshd is out of
  // descriptors, then dials the backend.
  const connect = (_address: string, _port: number): Promise<Deno.TcpConn> =>
    fail
      ? Promise.reject(new Error("Too many open files (os error 24)"))
      : Deno.connect({ hostname: "127.0.0.1", port: a.port });
  const proxy = new NodeProxy({
    hostname: "127.0.69.10",
    httpPort: 0,
    logger: quiet,
    connect,
    breaker: { checkMs: 0 },
  });
  await proxy.start();
  const client = http2.connect(`http://127.0.69.10:${proxy.httpAddress.split(":")[1]}`);
  client.on("error", () => {});
  try {
    const expression = "NetworkErrorRatio() > 0.5 || ResponseCodeRatio(500, 600, 0, 600) > 0.5";
    await proxy.apply(meshConfig([{
      name: "greeter",
      scheme: "h2c",
      ports: [{ port: 80, endpoints: [endpoint("127.0.69.11", a.port)] }],
      circuitBreaker: { expression, expr: parseBreakerExpression(expression) },
    }]));
    for (let i = 0; i < 10; i++) {
      const r = await call(client, grpcHeaders("greeter.default.mesh"), ["x"]);
      assert.equal(r.headers["grpc-status"], "14", JSON.stringify(r));
      assert.match(decodeURIComponent(String(r.headers["grpc-message"])), /Too many open files/);
    }
    fail = false;
    const r = await call(client, grpcHeaders("greeter.default.mesh"), ["x"]);
    assert.equal(
      r.trailers?.["grpc-status"],
      "0",
      `the breaker stayed closed: ${JSON.stringify(r)}`,
    );
  } finally {
    client.close();
    await proxy.stop();
    await a.close();
  }
});
