import assert from "node:assert/strict";
import { freePort } from "../_testing.ts";
import { connectUpstream } from "./connect_upstream.ts";
import { isLocalSocketError, UpstreamError } from "./upstream_error.ts";

Deno.test("connectUpstream() fails with an unsent UpstreamError and closes a connection made too late", async () => {
  let closed = false;
  let finish!: (c: Deno.TcpConn) => void;
  const late = new Promise<Deno.TcpConn>((r) => finish = r);
  await assert.rejects(
    connectUpstream({ address: "127.0.62.1", port: 9 }, { connect: () => late, timeoutMs: 20 }),
    (e) =>
      e instanceof UpstreamError && !e.requestSent &&
      e.message === "cannot connect: connect timed out after 20 ms",
  );
  finish({ close: () => closed = true } as unknown as Deno.TcpConn);
  await late;
  await Promise.resolve();
  assert.ok(closed, "the connection made after the deadline was left open");
});

Deno.test("connectUpstream() connects with Nagle off, and names a refused connect", async () => {
  const listener = Deno.listen({ hostname: "127.0.62.1", port: 0 });
  try {
    const conn = await connectUpstream({ address: "127.0.62.1", port: listener.addr.port });
    const server = await listener.accept();
    conn.close();
    server.close();
  } finally {
    listener.close();
  }
  const port = freePort();
  await assert.rejects(
    connectUpstream({ address: "127.0.62.1", port }),
    (e) => e instanceof UpstreamError && /^cannot connect: /.test(e.message) && !e.requestSent,
  );
});

Deno.test("connectUpstream() says when a connect failed for want of a descriptor here, not at the endpoint", async () => {
  // Deno's message when the process is out of descriptors (checked under prlimit).
  const emfile = () => Promise.reject(new Error("Too many open files (os error 24)"));
  await assert.rejects(
    connectUpstream({ address: "127.0.62.1", port: 9 }, { connect: emfile }),
    (e) => e instanceof UpstreamError && e.local && !e.requestSent,
  );
  const refused = () => Promise.reject(new Error("Connection refused (os error 111)"));
  await assert.rejects(
    connectUpstream({ address: "127.0.62.1", port: 9 }, { connect: refused }),
    (e) => e instanceof UpstreamError && !e.local,
  );
});

Deno.test("isLocalSocketError() reads Deno's and the engine's messages", () => {
  assert.ok(isLocalSocketError(new Error("Too many open files (os error 24)")));
  assert.ok(isLocalSocketError(new Error("socket failed: Too many open files (errno 24)")));
  assert.ok(isLocalSocketError(new Error("socket failed: No buffer space available (errno 105)")));
  assert.ok(!isLocalSocketError(new Error("Connection refused (os error 111)")));
  assert.ok(!isLocalSocketError(new Error("connect timed out after 20 ms")));
  assert.ok(!isLocalSocketError(undefined));
});
