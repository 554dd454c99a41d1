/**
 * Small socket programs for the eBPF tests, run inside the test's network namespace (and, for
 * clients, inside its scratch cgroup, where meshd's hooks are attached):
 *
 * - `serve NAME HOST PORT`: TCP: writes `NAME\n` to each connection and closes it; UDP on the
 *   same port: answers each datagram with `NAME`.
 * - `tcp HOST PORT N`: N connections one after another; prints `{"by": {name: count},
 *   "peers": [...distinct getpeername results], "failed", "errors"}`.
 * - `udp HOST PORT N`: N datagrams from one unconnected socket; prints `by` and the distinct
 *   `from` addresses of the answers.
 * - `udps HOST PORT SOCKETS N`: SOCKETS unconnected sockets, one after another, N datagrams
 *   each; prints `{"sockets": [{name: count}, ...], "failed"}`, one `by` per socket.
 * - `udpconn HOST PORT N`: one IPv4 UDP socket that calls connect(2) (through libc: Deno has no
 *   connected UDP socket) and then send(2)s N datagrams; prints `by`, the `peer` getpeername
 *   shows, and `failed`. Needs `--allow-ffi`.
 * - `http HOST PORT HOSTHEADER [PATH]`: one `GET PATH` (default `/`) with that Host; prints status and body.
 * - `echo HOST PORT`: TCP: sends back every byte of each connection until it half-closes.
 * - `bulk HOST PORT BYTES`: sends BYTES of a counting pattern to an echo server while reading
 *   the echo; prints `{"sent", "received", "same"}` (`same`: every byte came back in order).
 * - `loop HOST PORT MAXMS`: connects and reads the name, again and again with 4 workers,
 *   until stdin closes or MAXMS pass; prints a progress line `{"ok", "failed"}` every 100 ms,
 *   and the totals at the end with the errors seen.
 *
 * The UDP modes give up on an answer after 2 s times `$MESHD_TEST_TIME_SCALE` (the VMs of the
 * real-kernel tier run everything several times slower), so they need
 * `--allow-env=MESHD_TEST_TIME_SCALE` (`EbpfEnv.deno` passes it).
 *
 * @module
 */
import { timeScale } from "../testenv/process.ts";

const [mode, ...args] = Deno.args;
const dec = new TextDecoder();
const enc = new TextEncoder();

const fmt = (a: Deno.Addr) => {
  const n = a as Deno.NetAddr;
  return n.hostname.includes(":") ? `[${n.hostname}]:${n.port}` : `${n.hostname}:${n.port}`;
};

async function readName(c: Deno.Conn): Promise<string> {
  let got = "";
  const buf = new Uint8Array(256);
  while (!got.includes("\n")) {
    const n = await c.read(buf);
    if (n === null) break;
    got += dec.decode(buf.subarray(0, n));
  }
  return got.trim();
}

async function once(hostname: string, port: number): Promise<{ name: string; peer: string }> {
  const c = await Deno.connect({ hostname, port });
  try {
    return { name: await readName(c), peer: fmt(c.remoteAddr) };
  } finally {
    c.close();
  }
}

/** How long a UDP mode waits for each answer before it counts the datagram as failed. */
function answerWaitMs(): number {
  return 2_000 * timeScale();
}

function count(m: Record<string, number>, k: string): void {
  m[k] = (m[k] ?? 0) + 1;
}

if (mode === "serve") {
  const [name, hostname, port] = [args[0]!, args[1]!, Number(args[2])];
  const tcp = Deno.listen({ hostname, port });
  const udp = Deno.listenDatagram({ hostname, port, transport: "udp" });
  (async () => {
    for (;;) {
      const [, from] = await udp.receive();
      await udp.send(enc.encode(name), from);
    }
  })();
  console.log("ready");
  for await (const c of tcp) {
    c.write(enc.encode(`${name}\n`)).catch(() => {}).finally(() => c.close());
  }
} else if (mode === "tcp") {
  const [hostname, port, n] = [args[0]!, Number(args[1]), Number(args[2])];
  const by: Record<string, number> = {};
  const errors: Record<string, number> = {};
  const peers = new Set<string>();
  let failed = 0;
  for (let i = 0; i < n; i++) {
    try {
      const r = await once(hostname, port);
      count(by, r.name);
      peers.add(r.peer);
    } catch (e) {
      failed++;
      count(errors, (e as Error).message);
    }
  }
  console.log(JSON.stringify({ by, peers: [...peers], failed, errors }));
} else if (mode === "udp") {
  const [hostname, port, n] = [args[0]!, Number(args[1]), Number(args[2])];
  const v6 = hostname.includes(":");
  const s = Deno.listenDatagram({ hostname: v6 ? "::" : "0.0.0.0", port: 0, transport: "udp" });
  const by: Record<string, number> = {};
  const from = new Set<string>();
  const waitMs = answerWaitMs();
  let failed = 0;
  for (let i = 0; i < n; i++) {
    await s.send(enc.encode("hi"), { transport: "udp", hostname, port });
    const timer = setTimeout(() => s.close(), waitMs);
    try {
      const [data, addr] = await s.receive();
      count(by, dec.decode(data));
      from.add(fmt(addr));
    } catch {
      failed++;
      break;
    } finally {
      clearTimeout(timer);
    }
  }
  console.log(JSON.stringify({ by, from: [...from], failed }));
} else if (mode === "udps") {
  const [hostname, port, sockets, n] = [
    args[0]!,
    Number(args[1]),
    Number(args[2]),
    Number(args[3]),
  ];
  const v6 = hostname.includes(":");
  const out: Record<string, number>[] = [];
  const waitMs = answerWaitMs();
  let failed = 0;
  for (let k = 0; k < sockets; k++) {
    const s = Deno.listenDatagram({ hostname: v6 ? "::" : "0.0.0.0", port: 0, transport: "udp" });
    const by: Record<string, number> = {};
    for (let i = 0; i < n; i++) {
      await s.send(enc.encode("hi"), { transport: "udp", hostname, port });
      const timer = setTimeout(() => s.close(), waitMs);
      try {
        const [data] = await s.receive();
        count(by, dec.decode(data));
      } catch {
        failed++;
        break;
      } finally {
        clearTimeout(timer);
      }
    }
    try {
      s.close();
    } catch { /* closed by the timer */ }
    out.push(by);
  }
  console.log(JSON.stringify({ sockets: out, failed }));
} else if (mode === "udpconn") {
  const [hostname, port, n] = [args[0]!, Number(args[1]), Number(args[2])];
  const libc = Deno.dlopen("libc.so.6", {
    socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
    connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
    send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
    recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize", nonblocking: true },
    getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
    setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
  });
  const sockaddr = (host: string, p: number) => {
    const a = new Uint8Array(16);
    const v = new DataView(a.buffer);
    v.setUint16(0, 2, true); // AF_INET, host order
    v.setUint16(2, p); // network order
    host.split(".").forEach((o, i) => a[4 + i] = Number(o));
    return a;
  };
  const fd = libc.symbols.socket(2, 2, 0); // AF_INET, SOCK_DGRAM
  // SO_RCVTIMEO (struct timeval: seconds, microseconds), so a lost answer ends the run
  // instead of hanging it.
  const waitMs = answerWaitMs();
  const tv = new BigInt64Array([
    BigInt(Math.floor(waitMs / 1000)),
    BigInt(Math.round((waitMs % 1000) * 1000)),
  ]);
  libc.symbols.setsockopt(fd, 1, 20, new Uint8Array(tv.buffer), 16);
  const by: Record<string, number> = {};
  let failed = 0;
  let peer = "";
  if (libc.symbols.connect(fd, sockaddr(hostname, port), 16) !== 0) failed = n;
  else {
    const peerBuf = new Uint8Array(16);
    const len = new Uint32Array([16]);
    libc.symbols.getpeername(fd, peerBuf, new Uint8Array(len.buffer));
    peer = `${peerBuf.slice(4, 8).join(".")}:${new DataView(peerBuf.buffer).getUint16(2)}`;
    const buf = new Uint8Array(256);
    for (let i = 0; i < n; i++) {
      libc.symbols.send(fd, enc.encode("hi"), 2n, 0);
      const got = Number(await libc.symbols.recv(fd, buf, BigInt(buf.length), 0));
      if (got <= 0) {
        failed++;
        break;
      }
      count(by, dec.decode(buf.subarray(0, got)));
    }
  }
  libc.symbols.close(fd);
  libc.close();
  console.log(JSON.stringify({ by, peer, failed }));
} else if (mode === "http") {
  const [hostname, port, host, path] = [args[0]!, Number(args[1]), args[2]!, args[3] ?? "/"];
  const c = await Deno.connect({ hostname, port });
  await c.write(enc.encode(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`));
  let got = "";
  const buf = new Uint8Array(16 * 1024);
  for (;;) {
    const n = await c.read(buf);
    if (n === null) break;
    got += dec.decode(buf.subarray(0, n));
  }
  c.close();
  const status = Number(got.split(" ")[1]);
  console.log(JSON.stringify({ status, body: got.slice(got.indexOf("\r\n\r\n") + 4) }));
} else if (mode === "echo") {
  const tcp = Deno.listen({ hostname: args[0]!, port: Number(args[1]) });
  console.log("ready");
  for await (const c of tcp) {
    (async () => {
      const buf = new Uint8Array(64 * 1024);
      for (;;) {
        const n = await c.read(buf);
        if (n === null) break;
        for (let off = 0; off < n;) off += await c.write(buf.subarray(off, n));
      }
      await c.closeWrite();
    })().catch(() => {}).finally(() => c.close());
  }
} else if (mode === "bulk") {
  const [hostname, port, bytes] = [args[0]!, Number(args[1]), Number(args[2])];
  const pattern = (i: number) => (i * 7 + (i >> 12)) & 255;
  const c = await Deno.connect({ hostname, port });
  const sending = (async () => {
    const chunk = new Uint8Array(48 * 1024);
    for (let sent = 0; sent < bytes;) {
      const n = Math.min(chunk.length, bytes - sent);
      for (let i = 0; i < n; i++) chunk[i] = pattern(sent + i);
      for (let off = 0; off < n;) off += await c.write(chunk.subarray(off, n));
      sent += n;
    }
    await c.closeWrite();
  })();
  let received = 0, same = true;
  const buf = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await c.read(buf);
    if (n === null) break;
    for (let i = 0; i < n && same; i++) same = buf[i] === pattern(received + i);
    received += n;
  }
  await sending;
  c.close();
  console.log(JSON.stringify({ sent: bytes, received, same: same && received === bytes }));
} else if (mode === "loop") {
  const [hostname, port, maxMs] = [args[0]!, Number(args[1]), Number(args[2])];
  const end = performance.now() + maxMs;
  let ok = 0, failed = 0, stop = false;
  const errors: Record<string, number> = {};
  (async () => {
    for await (const _ of Deno.stdin.readable) { /* runs until stdin closes */ }
    stop = true;
  })();
  const progress = setInterval(() => console.log(JSON.stringify({ ok, failed })), 100);
  const worker = async () => {
    while (!stop && performance.now() < end) {
      try {
        const r = await once(hostname, port);
        if (r.name) ok++;
        else {
          failed++;
          count(errors, "no name read");
        }
      } catch (e) {
        failed++;
        count(errors, (e as Error).message);
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  clearInterval(progress);
  console.log(JSON.stringify({ ok, failed, errors, done: true }));
  Deno.exit(0);
} else {
  console.error("usage: sock_tool.ts serve|tcp|udp|udps|udpconn|http|echo|bulk|loop ...");
  Deno.exit(2);
}
