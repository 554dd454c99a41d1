import assert from "node:assert/strict";
import { freePort } from "../_testing.ts";
import { connectUpstream } from "./connect_upstream.ts";
import { UpstreamError } from "./upstream_error.ts";

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
