import assert from "node:assert/strict";
import { Reactor } from "./reactor.ts";
import { bindSocket, closeFd, localAddress } from "./sockets.ts";
import { EPOLLIN, libcNet } from "../../ffi/libc_net.ts";
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
