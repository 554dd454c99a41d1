import assert from "node:assert/strict";
import { Reactor } from "./reactor.ts";
import { bindSocket, closeFd, localAddress } from "./sockets.ts";
import { AF_INET, EPOLLIN, libcNet, SOCK_DGRAM, SOCK_NONBLOCK } from "../../ffi/libc_net.ts";
import { waitFor } from "../_testing.ts";

const HOST = "127.0.61.20";

/** Runs `r` with a guard: if the test's own wait never ends, the reactor stops after 5 s. */
async function runGuarded(r: Reactor, test: () => Promise<void>): Promise<boolean> {
  let guarded = false;
  r.after(5000, () => (guarded = true, r.stop()));
  const running = r.run();
  try {
    await test();
  } finally {
    r.stop();
    await running;
  }
  return guarded;
}

Deno.test("Reactor runs timers in order of their deadlines, and not a cancelled one", async () => {
  const r = new Reactor();
  const order: string[] = [];
  r.after(30, () => order.push("30"));
  r.after(10, () => order.push("10"));
  r.after(20, () => order.push("20")).cancel();
  r.after(10, () => order.push("10 later"));
  r.after(40, () => r.stop());
  await r.run();
  assert.deepEqual(order, ["10", "10 later", "30"]);
});

Deno.test("Reactor lets the isolate's timers and promises run while it waits for sockets", async () => {
  const r = new Reactor();
  const guarded = await runGuarded(r, async () => {
    // Only runs if the loop gives the isolate its turns.
    for (let i = 0; i < 5; i++) await new Promise((res) => setTimeout(res, 5));
  });
  assert.equal(guarded, false);
});

Deno.test("Reactor calls a socket's handler for its events, and goes on past one that throws", async () => {
  const r = new Reactor({ onError: (e) => errors.push(String(e)) });
  const errors: string[] = [];
  const fd = bindSocket("udp", HOST, 0);
  const got: number[] = [];
  const buf = new Uint8Array(64);
  r.add(fd, EPOLLIN, () => {
    const n = Number(libcNet().call.read(fd, buf, BigInt(buf.length)));
    got.push(n);
    if (got.length === 1) throw new Error("first handler call throws");
  });
  const sender = Deno.listenDatagram({ transport: "udp", hostname: HOST, port: 0 });
  try {
    const to = { transport: "udp" as const, hostname: HOST, port: localAddress(fd).port };
    const guarded = await runGuarded(r, async () => {
      await sender.send(new Uint8Array(3), to);
      await waitFor("the first datagram handled", () => got.length >= 1 || undefined);
      await sender.send(new Uint8Array(7), to);
      await waitFor("the second datagram handled", () => got.length >= 2 || undefined);
    });
    assert.equal(guarded, false);
    assert.deepEqual(got, [3, 7]);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!, /first handler call throws/);
  } finally {
    sender.close();
    closeFd(fd);
  }
});

Deno.test("Reactor does not pass an event of a closed socket to a new one given the same number", async () => {
  // One batch of epoll_wait holds an event of `old` after one of `first`, whose handler closes
  // `old` and opens a socket the kernel numbers as `old` was (the lowest free number). The
  // event left in the batch was for the closed socket: the new one's handler must not get it.
  const host = "127.0.64.32";
  const { call } = libcNet();
  const r = new Reactor();
  const first = bindSocket("udp", host, 0);
  const old = bindSocket("udp", host, 0);
  const extra: number[] = [];
  let reused = -1;
  const stale: number[] = [];
  const buf = new Uint8Array(64);
  r.add(first, EPOLLIN, () => {
    call.read(first, buf, BigInt(buf.length));
    if (reused >= 0) return;
    r.remove(old);
    closeFd(old);
    // Lower free numbers go first; the socket after them gets `old`'s.
    for (let i = 0; i < 1000 && reused !== old; i++) {
      const fd = call.socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
      if (fd === old) reused = fd;
      else extra.push(fd);
    }
    assert.equal(reused, old, "the kernel gave the closed socket's number again");
    r.add(reused, EPOLLIN, (events) => stale.push(events));
  });
  r.add(old, EPOLLIN, () => stale.push(-1));
  const sender = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
  try {
    // Both readable before the loop's first wait: `first` first, so its event comes first.
    const to = (fd: number) => ({
      transport: "udp" as const,
      hostname: host,
      port: localAddress(fd).port,
    });
    await sender.send(new Uint8Array(1), to(first));
    await sender.send(new Uint8Array(1), to(old));
    let turns = 0;
    const guarded = await runGuarded(r, async () => {
      await waitFor("the socket to be opened again", () => reused >= 0 || undefined);
      // A few more turns of the loop, on its own clock.
      await new Promise<void>((res) => r.after(50, res)).then(() => turns++);
    });
    assert.equal(guarded, false);
    assert.equal(turns, 1);
    assert.deepEqual(stale, [], "an event of the closed socket reached a handler");
  } finally {
    sender.close();
    closeFd(first);
    if (reused >= 0) closeFd(reused);
    for (const fd of extra) closeFd(fd);
  }
});

Deno.test("Reactor drops cancelled timers before they make up most of its heap", async () => {
  // A connect's deadline is cancelled when it connects: at thousands of connections a second,
  // kept until their time came, they held each connect's closure (about 1 KiB) that long.
  const r = new Reactor();
  const order: string[] = [];
  r.after(60_000, () => order.push("late"));
  for (let i = 0; i < 10_000; i++) r.after(60_000, () => order.push("cancelled")).cancel();
  assert.ok(r.timers <= 200, `${r.timers} timers held for 1 live one`);
  // The live ones still run, in order, and none of those cancelled.
  r.after(20, () => order.push("20"));
  r.after(10, () => order.push("10"));
  r.after(30, () => r.stop()).cancel();
  r.after(40, () => r.stop());
  await r.run();
  assert.deepEqual(order, ["10", "20"]);
});

Deno.test("Reactor lets the isolate's own timers run while it is kept busy", async () => {
  // A socket that is always readable keeps the loop busy: it never waits away from its thread.
  const r = new Reactor({ timerYieldEveryMs: 50 });
  const fd = bindSocket("udp", HOST, 0);
  const to = localAddress(fd);
  const sender = Deno.listenDatagram({ transport: "udp", hostname: HOST, port: 0 });
  let handled = 0;
  r.add(fd, EPOLLIN, () => {
    handled++;
    // Reads nothing: the datagram stays, and the socket stays readable.
  });
  let ticks = 0;
  const interval = setInterval(() => ticks++, 10);
  try {
    await sender.send(new Uint8Array(1), { transport: "udp", hostname: HOST, port: to.port });
    const running = r.run();
    await waitFor("the loop to be busy", () => handled > 100 || undefined);
    const before = ticks;
    const until = performance.now() + 600;
    await waitFor("600 ms", () => performance.now() >= until || undefined, 5_000, 20);
    const during = ticks - before;
    r.stop();
    await running;
    // A timer every 10 ms, let run every 50 ms or so: some 12 turns in 600 ms.
    assert.ok(
      during >= 5,
      `the isolate's 10 ms timer ran ${during} times in 600 ms of a busy loop`,
    );
  } finally {
    clearInterval(interval);
    sender.close();
    closeFd(fd);
  }
});
