import assert from "node:assert/strict";
import { freePort } from "../_testing.ts";
import { connectUpstream } from "./connect_upstream.ts";
import { isLocalSocketError, UpstreamError } from "./upstream_error.ts";
import { bindSocket, closeFd, dialTcp, localAddress } from "../engine/sockets.ts";

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

Deno.test("connectUpstream() gives back the socket of a connect cut at its deadline at once", async () => {
  const host = "127.0.62.7";
  // A backend whose accept queue is full (backlog 0, three connects nobody accepts): the
  // kernel drops further SYNs, as an address that never answers does, and a connect waits.
  const backlog = bindSocket("tcp", host, 0, { backlog: 0 });
  const { port } = localAddress(backlog);
  const fillers = [0, 1, 2].map(() => dialTcp(host, port));
  const fds = () => [...Deno.readDirSync("/proc/self/fd")].length;
  try {
    const before = fds();
    const tries = Array.from(
      { length: 20 },
      () =>
        connectUpstream({ address: host, port }, { timeoutMs: 100 }).then(
          () => "connected",
          (e) => (e as Error).message,
        ),
    );
    for (const r of await Promise.all(tries)) {
      assert.equal(r, "cannot connect: connect timed out after 100 ms");
    }
    // Without the abort, each socket stays open while the kernel sends its SYN again (about
    // 2 minutes); with it, each is closed when its connect is cut.
    const left = await new Promise<number>((resolve) => setTimeout(() => resolve(fds()), 50));
    assert.ok(left <= before, `${left - before} sockets still open after their connects timed out`);
  } finally {
    for (const fd of fillers) closeFd(fd);
    closeFd(backlog);
  }
});
