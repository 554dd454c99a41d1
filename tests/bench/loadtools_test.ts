/**
 * The load modes of `tests/bench/loadtools` that the eBPF bench's `tcp-conn` and
 * `udp-unconnected` cases rest on, against small echo servers on loopback (127.0.69.x): a new
 * connection per exchange, and unconnected UDP sockets that take a reply only from the address
 * they sent to. Needs `go` in PATH (scripts/test puts it there).
 */
import assert from "node:assert/strict";
import { Child, freePort } from "../testenv/process.ts";
import { buildLoadtools } from "./local_servers.ts";

let built: Promise<string> | null = null;
/** The load tools, built once per test process into a temporary directory, gone at exit. */
function loadtools(): Promise<string> {
  return built ??= Deno.makeTempDir({ prefix: "meshd-loadtools-" }).then((dir) => {
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    return buildLoadtools(`${dir}/loadtools`);
  });
}

type Result = { requests?: number; errors: number; firstError?: string };

/** Runs one bounded load of the tools to its end and returns its JSON line. */
async function load(args: string[]): Promise<Result> {
  const bin = await loadtools();
  const p = new Child("loadtools", args, { command: bin });
  const st = await p.wait(30_000);
  assert.ok(st.success, `loadtools ${args.join(" ")}: ${p.stderr.join("\n")}`);
  return p.last<Result>();
}

/**
 * A UDP echo listening on `listen` that answers from `replyFrom` (the same socket when it is
 * the same address): a reply from elsewhere is what a backend's answer looks like when no
 * recvmsg hook rewrites its source back to the service address.
 */
function udpEcho(listen: Deno.NetAddr, replyFrom: Deno.NetAddr | null) {
  const rx = Deno.listenDatagram({ ...listen, transport: "udp" });
  const tx = replyFrom ? Deno.listenDatagram({ ...replyFrom, transport: "udp" }) : rx;
  const served = (async () => {
    try {
      for (;;) {
        const [data, from] = await rx.receive();
        await tx.send(data, from);
      }
    } catch {
      // closed
    }
  })();
  return {
    async close() {
      rx.close();
      if (tx !== rx) tx.close();
      await served;
    },
  };
}

const addr = (hostname: string): Deno.NetAddr => ({
  transport: "udp",
  hostname,
  port: freePort(hostname),
});

Deno.test("loadtools udp-rr -unconnected counts a reply from another address than the target as an error", async () => {
  const target = addr("127.0.69.1");
  const echo = udpEcho(target, addr("127.0.69.3"));
  try {
    const r = await load([
      "udp-rr",
      "-unconnected",
      "-target",
      `${target.hostname}:${target.port}`,
      "-clients",
      "2",
      "-duration",
      "300ms",
    ]);
    assert.equal(r.requests ?? 0, 0, `no reply from 127.0.69.3 may count: ${JSON.stringify(r)}`);
    assert.ok(r.errors > 0, JSON.stringify(r));
    // A connected socket would never see these datagrams (the kernel drops them), and would
    // time out instead: this error says the socket was unconnected and read the reply's source.
    assert.match(
      r.firstError ?? "",
      new RegExp(`^reply from 127\\.0\\.69\\.3:\\d+, sent to 127\\.0\\.69\\.1:${target.port}$`),
    );
  } finally {
    await echo.close();
  }
});

Deno.test("loadtools udp-rr takes the target's replies, unconnected and connected", async () => {
  const target = addr("127.0.69.1");
  const echo = udpEcho(target, null);
  try {
    for (const mode of [["-unconnected"], []]) {
      const r = await load([
        "udp-rr",
        ...mode,
        "-target",
        `${target.hostname}:${target.port}`,
        "-clients",
        "2",
        "-duration",
        "300ms",
      ]);
      assert.equal(r.errors, 0, `${mode.join("") || "connected"}: ${JSON.stringify(r)}`);
      assert.ok((r.requests ?? 0) > 0, JSON.stringify(r));
    }
  } finally {
    await echo.close();
  }
});

Deno.test("loadtools tcp-conn opens a new connection for every exchange", async () => {
  const hostname = "127.0.69.1";
  const listener = Deno.listen({ hostname, port: freePort(hostname) });
  let accepted = 0;
  const conns: Promise<void>[] = [];
  const served = (async () => {
    for await (const c of listener) {
      accepted++;
      // Echo until the client closes, as the bench's Go echo does.
      conns.push(c.readable.pipeTo(c.writable).catch(() => {}));
    }
  })();
  try {
    const r = await load([
      "tcp-conn",
      "-target",
      `${hostname}:${listener.addr.port}`,
      "-conns",
      "2",
      "-duration",
      "300ms",
    ]);
    assert.equal(r.errors, 0, JSON.stringify(r));
    assert.ok((r.requests ?? 0) > 1, JSON.stringify(r));
    // Each answered exchange was accepted (the echo came after the accept): one connection each.
    assert.equal(accepted, r.requests, `accepted ${accepted} connections for ${r.requests}`);
  } finally {
    listener.close();
    await served.catch(() => {});
    await Promise.all(conns);
  }
});
