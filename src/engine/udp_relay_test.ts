import assert from "node:assert/strict";
import { Reactor } from "./reactor.ts";
import { type UdpFlowEnd, UdpRelay, type UdpRelayOptions, type UdpTarget } from "./udp_relay.ts";
import { bindSocket, closeFd, localAddress } from "./sockets.ts";
import { waitFor } from "../_testing.ts";
import { AF_INET, libcNet, SOCK_DGRAM, SOCK_NONBLOCK, sockaddr } from "../../ffi/libc_net.ts";
import { openSockets, RefusingReactor } from "./_testing.ts";

const HOST = "127.0.61.22";

/** A UDP echo backend in this isolate: answers each datagram with it, prefixed by "re:". */
function echoBackend(): { port: number; close(): void } {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: HOST, port: 0 });
  (async () => {
    for (;;) {
      const [data, from] = await sock.receive().catch(() => [null, null] as const);
      if (!data) return;
      await sock.send(new Uint8Array([...new TextEncoder().encode("re:"), ...data]), from!);
    }
  })();
  return { port: (sock.addr as Deno.NetAddr).port, close: () => sock.close() };
}

/** Runs a relay on a fresh listening socket while `test` runs with its port. */
async function withUdpRelay(
  options: UdpRelayOptions,
  test: (port: number, relay: UdpRelay) => Promise<void>,
): Promise<void> {
  const reactor = new Reactor();
  const fd = bindSocket("udp", HOST, 0);
  const relay = new UdpRelay(reactor, fd, options);
  const running = reactor.run();
  try {
    await test(localAddress(fd).port, relay);
  } finally {
    relay.close();
    reactor.stop();
    await running;
    closeFd(fd);
  }
}

/** Sends `text` from `sock` to `port` and waits up to `ms` for one answer. */
async function ask(
  sock: Deno.DatagramConn,
  port: number,
  text: string,
  ms = 2000,
): Promise<{ text: string; from: number } | null> {
  await sock.send(new TextEncoder().encode(text), { transport: "udp", hostname: HOST, port });
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      sock.receive().then(([d, from]) => ({
        text: new TextDecoder().decode(d),
        from: (from as Deno.NetAddr).port,
      })),
      new Promise<null>((r) => timer = setTimeout(() => r(null), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const client = () => Deno.listenDatagram({ transport: "udp", hostname: HOST, port: 0 });

Deno.test("UdpRelay gives each client a flow, and the answers come from the listening port", async () => {
  const backend = echoBackend();
  const opened: UdpTarget[] = [];
  const bytes = { up: 0, down: 0 };
  const [a, b] = [client(), client()];
  try {
    await withUdpRelay({
      open: (c) => (opened.push(c), { address: HOST, port: backend.port }),
      onBytes: (_f, way, n) => bytes[way] += n,
    }, async (port, relay) => {
      assert.deepEqual(await ask(a, port, "one"), { text: "re:one", from: port });
      assert.deepEqual(await ask(b, port, "two"), { text: "re:two", from: port });
      assert.deepEqual(await ask(a, port, "three"), { text: "re:three", from: port });
      assert.equal(relay.flows, 2);
    });
    assert.deepEqual(opened.map((c) => c.port), [
      (a.addr as Deno.NetAddr).port,
      (b.addr as Deno.NetAddr).port,
    ]);
    assert.deepEqual(bytes, { up: 11, down: 20 });
  } finally {
    a.close();
    b.close();
    backend.close();
  }
});

Deno.test("UdpRelay drops a datagram its owner opens no flow for", async () => {
  const backend = echoBackend();
  const a = client();
  try {
    await withUdpRelay({ open: () => null }, async (port, relay) => {
      assert.equal(await ask(a, port, "dropped", 200), null);
      assert.equal(relay.flows, 0);
    });
  } finally {
    a.close();
    backend.close();
  }
});

Deno.test("UdpRelay ends a flow idle past idleMs, and the least recently active one at maxFlows", async () => {
  const backend = echoBackend();
  const ends: [number, UdpFlowEnd][] = [];
  const [a, b] = [client(), client()];
  try {
    await withUdpRelay({
      open: () => ({ address: HOST, port: backend.port }),
      onEnd: (f, reason) => ends.push([f.client.port, reason]),
      idleMs: 60,
      maxFlows: 1,
    }, async (port, relay) => {
      assert.ok(await ask(a, port, "a"));
      assert.ok(await ask(b, port, "b")); // evicts a's flow
      assert.deepEqual(ends, [[(a.addr as Deno.NetAddr).port, "evicted"]]);
      await waitFor("the idle flow to end", () => relay.flows === 0 || undefined);
      assert.equal(relay.flows, 0);
      assert.deepEqual(ends[1], [(b.addr as Deno.NetAddr).port, "idle_timeout"]);
    });
  } finally {
    a.close();
    b.close();
    backend.close();
  }
});

Deno.test("UdpRelay tells its owner of an endpoint that answers with ICMP port unreachable", async () => {
  // The flow's socket is connected: the kernel reports the ICMP error of one datagram on the
  // socket (ECONNREFUSED), and the relay's read of it, not the next send, is what sees it.
  const host = "127.0.64.30";
  const gone = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
  const dead = (gone.addr as Deno.NetAddr).port;
  gone.close();
  const reactor = new Reactor();
  const fd = bindSocket("udp", host, 0);
  let errors = 0;
  const relay = new UdpRelay(reactor, fd, {
    open: () => ({ address: host, port: dead }),
    onSendError: () => errors++,
  });
  const running = reactor.run();
  const c = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
  try {
    const to = { transport: "udp" as const, hostname: host, port: localAddress(fd).port };
    for (let i = 0; i < 5 && errors < 3; i++) {
      await c.send(new Uint8Array([i]), to);
      await waitFor(`the error of datagram ${i}`, () => errors > i || undefined, 2000)
        .catch(() => {});
    }
    assert.ok(errors >= 3, `${errors} errors told for 5 datagrams to a closed port`);
  } finally {
    c.close();
    relay.close();
    reactor.stop();
    await running;
    closeFd(fd);
  }
});

Deno.test("UdpRelay lets the loop's other work run while datagrams keep coming", async () => {
  // A client that sends its next datagram as soon as one went on: the listening socket never
  // runs dry. Reading it to EAGAIN in one event, the relay would hold the loop (every other
  // socket and timer of the worker) for as long as the flood lasts.
  const host = "127.0.64.31";
  const sink = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
  const reactor = new Reactor();
  const fd = bindSocket("udp", host, 0);
  const { call } = libcNet();
  const c = call.socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  const to = sockaddr(host, localAddress(fd).port);
  const one = new Uint8Array(1);
  const limit = 5000;
  let relayed = 0;
  let timerAt = -1;
  const relay = new UdpRelay(reactor, fd, {
    open: () => ({ address: host, port: (sink.addr as Deno.NetAddr).port }),
    onBytes: (_flow, way) => {
      if (way !== "up") return;
      if (++relayed < limit) call.sendto(c, one, 1n, 0, to, to.length);
    },
  });
  const running = reactor.run();
  try {
    let timer!: () => void;
    const fired = new Promise<void>((r) => timer = r);
    reactor.after(0, () => {
      timerAt = relayed;
      timer();
    });
    call.sendto(c, one, 1n, 0, to, to.length);
    await fired;
    assert.ok(timerAt >= 0 && timerAt < 1000, `the timer ran after ${timerAt} datagrams`);
  } finally {
    call.close(c);
    relay.close();
    reactor.stop();
    await running;
    closeFd(fd);
    sink.close();
  }
});

Deno.test("UdpRelay opens no flow when the loop will not take its socket, and tells its owner", async () => {
  // epoll_ctl can fail (ENOMEM, or fs.epoll.max_user_watches reached). The flow was kept with
  // its socket out of the loop: its answers were never read, and its end was reported for an
  // open that never was (the owner's open gauge and endpoint count went below zero).
  const host = "127.0.65.2";
  const handlerErrors: unknown[] = [];
  const reactor = new RefusingReactor({ onError: (e) => handlerErrors.push(e) });
  const fd = bindSocket("udp", host, 0);
  const backend = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
  const events: string[] = [];
  const relay = new UdpRelay(reactor, fd, {
    open: () => ({ address: host, port: (backend.addr as Deno.NetAddr).port }),
    onOpen: () => events.push("open"),
    onOpenError: (_c, _t, e) => events.push(`open error: ${e.message}`),
    onEnd: (_f, reason) => events.push(`end ${reason}`),
  });
  const running = reactor.run();
  const c = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
  try {
    const before = openSockets();
    reactor.refuse = true;
    await c.send(new TextEncoder().encode("x"), {
      transport: "udp",
      hostname: host,
      port: localAddress(fd).port,
    });
    await waitFor(
      "the datagram to be taken",
      () => events.length + handlerErrors.length + relay.flows > 0 || undefined,
    );
    assert.deepEqual(events, ["open error: epoll_ctl failed: No space left on device (errno 28)"]);
    assert.equal(relay.flows, 0, "no flow kept");
    assert.deepEqual(handlerErrors, []);
    assert.equal(openSockets(), before, "the flow's socket is closed");
  } finally {
    relay.close();
    reactor.stop();
    await running;
    closeFd(fd);
    c.close();
    backend.close();
  }
  assert.deepEqual(events.filter((e) => e.startsWith("end")), [], "no end for a flow never opened");
});
