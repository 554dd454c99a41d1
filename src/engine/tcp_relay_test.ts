import assert from "node:assert/strict";
import { Reactor } from "./reactor.ts";
import { type RelayEnd, TcpRelay } from "./tcp_relay.ts";
import { acceptOne, bindSocket, closeFd, dialTcp, localAddress } from "./sockets.ts";
import { EPOLLIN } from "../../ffi/libc_net.ts";
import { seededRandom } from "../_testing.ts";
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
): Promise<void> {
  const reactor = new Reactor();
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
