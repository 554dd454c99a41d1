import assert from "node:assert/strict";
import { Reactor } from "./reactor.ts";
import { type RelayEnd, TcpRelay } from "./tcp_relay.ts";
import { acceptOne, bindSocket, closeFd, dialTcp, localAddress } from "./sockets.ts";
import {
  AF_INET,
  EPOLLIN,
  libcNet,
  SHUT_WR,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  sockaddr,
  SOL_SOCKET,
} from "../../ffi/libc_net.ts";
import { seededRandom } from "../_testing.ts";
import { RefusingReactor } from "./_testing.ts";
import { waitFor } from "../_testing.ts";

const HOST = "127.0.61.21";

/**
 * A reactor that relays each connection to its listening socket on to `backendPort`, run while
 * `test` runs with the listening port; the relays it made, and how each ended.
 */
async function withRelay(
  backendPort: number,
  test: (port: number, relays: TcpRelay[], ends: RelayEnd[]) => Promise<void>,
  bytes?: { up: number; down: number },
  reactor: Reactor = new Reactor(),
): Promise<void> {
  const lfd = bindSocket("tcp", HOST, 0);
  const relays: TcpRelay[] = [];
  const ends: RelayEnd[] = [];
  reactor.add(lfd, EPOLLIN, () => {
    for (let c = acceptOne(lfd); c; c = acceptOne(lfd)) {
      relays.push(
        new TcpRelay(reactor, c.fd, dialTcp(HOST, backendPort), {
          onBytes: (way, n) => bytes && (bytes[way] += n),
          onEnd: (reason) => ends.push(reason),
        }),
      );
    }
  });
  let guarded = false;
  // A relay that stalls fails the test instead of hanging it: its sockets close.
  reactor.after(20_000, () => {
    guarded = true;
    for (const r of relays) r.close("guard");
  });
  const running = reactor.run();
  try {
    await test(localAddress(lfd).port, relays, ends);
    assert.equal(guarded, false, "the test ran past its guard");
  } finally {
    for (const r of relays) r.close("test over");
    reactor.stop();
    await running;
    closeFd(lfd);
  }
}

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(64 * 1024);
  for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
    parts.push(buf.slice(0, n));
  }
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let off = 0;
  for (const p of parts) out.set(p, off), off += p.length;
  return out;
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
}

/** Whether `a` and `b` hold the same bytes (no diff of megabytes when they do not). */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function randomBytes(n: number, seed: number): Uint8Array {
  const rnd = seededRandom(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(rnd() * 256));
}

Deno.test("TcpRelay carries bytes both ways and passes each way's end on", async () => {
  // The backend reads to the client's end, then answers with what it read, reversed, and closes.
  const backend = Deno.listen({ hostname: HOST, port: 0 });
  const serving = (async () => {
    const c = await backend.accept();
    const got = await readAll(c);
    await writeAll(c, got.slice().reverse());
    c.close();
  })();
  const bytes = { up: 0, down: 0 };
  try {
    await withRelay(backend.addr.port, async (port, _relays, ends) => {
      const client = await Deno.connect({ hostname: HOST, port });
      const sent = randomBytes(300_000, 1);
      await writeAll(client, sent);
      await client.closeWrite(); // the backend sees the end only through the relay
      const answer = await readAll(client);
      client.close();
      assert.equal(answer.length, sent.length);
      assert.ok(sameBytes(answer, sent.slice().reverse()), "the answer is what was sent, reversed");
      await waitFor("the relay to end", () => ends.length > 0 || undefined);
      assert.deepEqual(ends, ["eof"]);
    }, bytes);
    assert.deepEqual(bytes, { up: 300_000, down: 300_000 });
  } finally {
    await serving;
    backend.close();
  }
});

Deno.test("TcpRelay holds one read at most a way while the far side does not read", async () => {
  const backend = Deno.listen({ hostname: HOST, port: 0 });
  let release!: () => void;
  const released = new Promise<void>((r) => release = r);
  const serving = (async () => {
    const c = await backend.accept();
    await released; // reads nothing until then
    const got = await readAll(c);
    c.close();
    return got;
  })();
  try {
    await withRelay(backend.addr.port, async (port, relays) => {
      const client = await Deno.connect({ hostname: HOST, port });
      const sent = randomBytes(8 * 1024 * 1024, 2);
      const writing = writeAll(client, sent).then(() => client.closeWrite());
      // Wait until the kernel's buffers are full and the relay holds what it could not write.
      let held = 0;
      for (let i = 0; i < 400 && held === 0; i++) {
        await new Promise((r) => setTimeout(r, 5));
        held = relays[0]?.held ?? 0;
      }
      assert.ok(held > 0, "the relay waits for the backend");
      for (let i = 0; i < 20; i++) {
        await new Promise((r) => setTimeout(r, 5));
        assert.ok(relays[0]!.held <= 64 * 1024, `held ${relays[0]!.held}`);
      }
      release();
      await writing;
      const got = await serving;
      client.close();
      assert.equal(got.length, sent.length);
      assert.ok(sameBytes(got, sent), "the backend got what was sent");
    });
  } finally {
    release();
    await serving.catch(() => {});
    backend.close();
  }
});

Deno.test("TcpRelay ends as an error when the backend refuses, and closes the client", async () => {
  // A port that was bound and closed: nothing listens there.
  const gone = Deno.listen({ hostname: HOST, port: 0 });
  const port = gone.addr.port;
  gone.close();
  await withRelay(port, async (listenPort, _relays, ends) => {
    const client = await Deno.connect({ hostname: HOST, port: listenPort });
    await client.write(new Uint8Array([1, 2, 3])).catch(() => 0);
    const got = await readAll(client).catch(() => new Uint8Array());
    client.close();
    assert.equal(got.length, 0);
    await waitFor("the relay to end", () => ends.length > 0 || undefined);
    assert.deepEqual(ends, ["error"]);
  });
});

Deno.test("TcpRelay.close closes both sockets and says why", async () => {
  const backend = Deno.listen({ hostname: HOST, port: 0 });
  const serving = (async () => {
    const c = await backend.accept();
    const got = await readAll(c).catch(() => new Uint8Array());
    c.close();
    return got.length;
  })();
  try {
    await withRelay(backend.addr.port, async (port, relays, ends) => {
      const client = await Deno.connect({ hostname: HOST, port });
      await writeAll(client, new Uint8Array(10));
      await waitFor("the relay to start", () => relays.length > 0 || undefined);
      relays[0]!.close("idle_timeout");
      assert.deepEqual(ends, ["idle_timeout"]);
      // Both ends see it closed.
      assert.equal((await readAll(client).catch(() => new Uint8Array())).length, 0);
      client.close();
      assert.ok((await serving) <= 10);
      relays[0]!.close("again"); // a second close does nothing
      assert.deepEqual(ends, ["idle_timeout"]);
    });
  } finally {
    backend.close();
  }
});

/** Resolves after `ms` on `reactor`'s own clock: Deno's timers wait while the loop is busy. */
function loopDelay(reactor: Reactor, ms: number): Promise<void> {
  return new Promise((r) => reactor.after(ms, r));
}

const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
/** Fits the buffers on the backend side with its FIN, not those towards the client. */
const ANSWER = 96 * 1024;

/** Sets the socket option `name` of `fd` to `value` (an int). */
function setIntOption(fd: number, name: number, value: number): void {
  const v = new Uint8Array(new Int32Array([value]).buffer);
  assert.equal(libcNet().call.setsockopt(fd, SOL_SOCKET, name, v, 4), 0, `setsockopt ${name}`);
}

Deno.test("TcpRelay does not spin on a socket closed both ways while its way waits for the other", async () => {
  // The client sends a request and half-closes (the relay half-closes the backend); the backend
  // answers with more than the client takes, and closes. The backend socket is then shut both
  // ways (EPOLLHUP, which epoll reports whatever the interest) while its way holds what the
  // client has not taken: level-triggered, that event came back every turn, a busy loop.
  const host = "127.0.64.1";
  const answer = ANSWER;
  const backend = Deno.listen({ hostname: host, port: 0 });
  let answered = false;
  const serving = (async () => {
    const c = await backend.accept();
    await readAll(c);
    await writeAll(c, new Uint8Array(answer));
    answered = true;
    c.close();
  })();
  const reactor = new Reactor();
  let calls = 0;
  const add = reactor.add.bind(reactor);
  reactor.add = (fd, interest, handler) =>
    add(fd, interest, (events) => (calls++, handler(events)));
  const { call } = libcNet();
  const lfd = bindSocket("tcp", host, 0);
  // Small buffers towards the client (an accepted socket takes its listener's), so the relay
  // holds bytes while the rest of the answer, and the backend's FIN, wait on its side.
  setIntOption(lfd, SO_SNDBUF, 8192);
  const relays: TcpRelay[] = [];
  reactor.add(lfd, EPOLLIN, () => {
    for (let c = acceptOne(lfd); c; c = acceptOne(lfd)) {
      relays.push(
        new TcpRelay(reactor, c.fd, dialTcp(host, backend.addr.port), { onEnd: () => {} }),
      );
    }
  });
  const running = reactor.run();
  const client = call.socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  try {
    setIntOption(client, SO_RCVBUF, 8192);
    const sa = sockaddr(host, localAddress(lfd).port);
    call.connect(client, sa, sa.length);
    for (let i = 0; relays.length === 0; i++) {
      assert.ok(i < 500, "the relay accepted the client");
      await loopDelay(reactor, 10);
    }
    const request = new TextEncoder().encode("GET");
    assert.equal(Number(call.write(client, request, BigInt(request.length))), request.length);
    assert.equal(call.shutdown(client, SHUT_WR), 0);
    // Polled on the loop's clock: with the defect, Deno's timers would not fire.
    for (let i = 0; !(answered && relays[0]!.held > 0); i++) {
      assert.ok(i < 1000, `the backend answered: ${answered}, the relay holds ${relays[0]!.held}`);
      await loopDelay(reactor, 10);
    }
    await loopDelay(reactor, 100); // the backend's FIN comes in
    const before = calls;
    await loopDelay(reactor, 300);
    const during = calls - before;
    assert.ok(during < 50, `${during} handler calls in 300 ms while nothing moved`);
    // What was held still reaches the client once it reads, and the relay ends.
    const buf = new Uint8Array(64 * 1024);
    let got = 0;
    for (let i = 0;; i++) {
      const n = Number(call.read(client, buf, BigInt(buf.length)));
      if (n === 0) break;
      if (n > 0) got += n;
      else await loopDelay(reactor, 5);
      assert.ok(i < 10_000, `the client read the answer to its end: ${got} bytes`);
    }
    assert.equal(got, answer);
    for (let i = 0; !relays[0]!.ended; i++) {
      assert.ok(i < 500, "the relay ended");
      await loopDelay(reactor, 10);
    }
  } finally {
    call.close(client);
    for (const r of relays) r.close("test over");
    reactor.stop();
    await running;
    closeFd(lfd);
    await serving.catch(() => {});
    backend.close();
  }
});

Deno.test("TcpRelay ends, with both sockets closed, when the loop will not take a change of what it waits for", async () => {
  // A backend that accepts and never reads: the relay's writes to it fill its buffers, and the
  // relay must then ask the loop to wait for room (EPOLLOUT), which this loop refuses.
  const backend = Deno.listen({ hostname: HOST, port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const c of backend) held.push(c);
  })().catch(() => {});
  const reactor = new RefusingReactor({ onError: () => {} });
  try {
    await withRelay(
      backend.addr.port,
      async (port, _relays, ends) => {
        reactor.refuseModify = true;
        const c = await Deno.connect({ hostname: HOST, port });
        const chunk = new Uint8Array(1 << 20);
        const writing = (async () => {
          for (let i = 0; i < 64; i++) await c.write(chunk);
        })().catch(() => {});
        await waitFor("the relay to end", () => ends.length > 0 || undefined, 10_000);
        assert.deepEqual(ends, ["error"]);
        // The client sees its connection end rather than wait on a relay that is gone.
        await waitFor("the client's writes to fail", async () => {
          try {
            await c.write(chunk);
            return undefined;
          } catch {
            return true;
          }
        }, 10_000);
        c.close();
        await writing;
      },
      undefined,
      reactor,
    );
  } finally {
    for (const c of held) c.close();
    backend.close();
    await accepting;
  }
});
