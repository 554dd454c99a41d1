import assert from "node:assert/strict";
import { Reactor } from "./reactor.ts";
import { ConnectError, connectTcp } from "./connect_tcp.ts";
import { closeFd } from "./sockets.ts";
import { openSockets, RefusingReactor } from "./_testing.ts";

const HOST = "127.0.61.23";

async function onReactor<T>(test: (r: Reactor) => Promise<T>): Promise<T> {
  const r = new Reactor();
  const running = r.run();
  try {
    return await test(r);
  } finally {
    r.stop();
    await running;
  }
}

Deno.test("connectTcp resolves with a connected socket", async () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  try {
    const fd = await onReactor((r) => connectTcp(r, HOST, listener.addr.port, 2000));
    const accepted = await listener.accept();
    assert.ok(fd > 2);
    closeFd(fd);
    accepted.close();
  } finally {
    listener.close();
  }
});

Deno.test("connectTcp rejects a refused connect with the reason", async () => {
  const gone = Deno.listen({ hostname: HOST, port: 0 });
  const port = gone.addr.port;
  gone.close();
  const e = await onReactor((r) => connectTcp(r, HOST, port, 2000).then(() => null, (e) => e));
  assert.ok(e instanceof ConnectError);
  assert.match(e.message, /refused/i);
});

Deno.test("connectTcp rejects at its deadline when nothing answers", async () => {
  // A listener whose backlog is full answers no more SYNs: the next connect hangs.
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const held: Deno.Conn[] = [];
  try {
    // Fill the accept queue without accepting, until a connect stops completing at once.
    const started = performance.now();
    const e = await onReactor(async (r) => {
      for (let i = 0; i < 5000; i++) {
        const c = await Promise.race([
          Deno.connect({ hostname: HOST, port: listener.addr.port }),
          new Promise<null>((res) => setTimeout(() => res(null), 200)),
        ]);
        if (!c) break;
        held.push(c);
      }
      return await connectTcp(r, HOST, listener.addr.port, 300).then(() => null, (e) => e);
    });
    assert.ok(e instanceof ConnectError, String(e));
    assert.match(e.message, /timed out after 300 ms/);
    assert.ok(performance.now() - started < 60_000);
  } finally {
    for (const c of held) c.close();
    listener.close();
  }
});

Deno.test("connectTcp closes its socket at once and rejects when the loop will not take it", async () => {
  // epoll_ctl can fail (ENOMEM, or fs.epoll.max_user_watches reached): the socket stayed open
  // until the connect deadline, and the promise rejected with the socket still open.
  const host = "127.0.65.3";
  const listener = Deno.listen({ hostname: host, port: 0 });
  const r = new RefusingReactor();
  const running = r.run();
  try {
    const before = openSockets();
    r.refuse = true;
    const e = await connectTcp(r, host, listener.addr.port, 60_000).then(() => null, (e) => e);
    assert.ok(e instanceof Error);
    assert.match(e.message, /epoll_ctl failed/);
    // Not the endpoint's failure: nothing counts it against the endpoint.
    assert.ok(!(e instanceof ConnectError), "not a ConnectError");
    assert.equal(openSockets(), before, "the socket is closed");
  } finally {
    r.stop();
    await running;
    // A handshake the kernel completed before the socket closed waits in the accept queue,
    // which closing the listener empties (no Deno resource is left).
    listener.close();
  }
});
