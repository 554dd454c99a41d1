/**
 * `meshd run --l4-worker` with the DaemonSet's flags under config churn: TCP and UDP ports and
 * their endpoints removed, added and swapped while connections and datagrams flow. No
 * exchange hangs or comes back wrong, no gauge goes below 0, a UDP client that never stops
 * sending follows its endpoint, a removed port is not served, and once idle meshd holds the
 * descriptors it held before.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { freePort, waitFor } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";
import { service, slice, TcpEcho } from "./_load_env.ts";

const MESHD = "127.0.67.210";
const BACKEND = "127.0.67.211";
const CLIENT = "127.0.67.212";

/** The first of `n` consecutive ports free for TCP and UDP on `host`. */
function freeRange(host: string, n: number): number {
  for (let tries = 0; tries < 100; tries++) {
    const first = 20000 + Math.floor(Math.random() * 12000);
    const held: { close(): void }[] = [];
    try {
      for (let i = 0; i < n; i++) {
        held.push(Deno.listen({ hostname: host, port: first + i }));
        held.push(Deno.listenDatagram({ transport: "udp", hostname: host, port: first + i }));
      }
      return first;
    } catch {
      continue;
    } finally {
      for (const h of held) h.close();
    }
  }
  throw new Error(`No ${n} consecutive free ports on ${host}`);
}

/** A UDP backend that answers every datagram with its name. */
class NamedUdp {
  readonly #socket = Deno.listenDatagram({ transport: "udp", hostname: BACKEND, port: 0 });
  readonly #done: Promise<void>;
  constructor(readonly name: string) {
    this.#done = (async () => {
      const answer = new TextEncoder().encode(name);
      for (;;) {
        const [, from] = await this.#socket.receive();
        await this.#socket.send(answer, from);
      }
    })().catch(() => {});
  }
  get port(): number {
    return (this.#socket.addr as Deno.NetAddr).port;
  }
  close(): Promise<void> {
    this.#socket.close();
    return this.#done;
  }
}

/** One TCP exchange through `port`: the echo, `refused`, or what went wrong. */
function exchange(port: number, text: string): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host: MESHD, port, localAddress: CLIENT });
    let got = "";
    const timer = setTimeout(() => done(`no end within 5 s after ${got.length} bytes`), 5000);
    const done = (r: string) => {
      clearTimeout(timer);
      s.destroy();
      resolve(r);
    };
    s.setEncoding("latin1");
    s.on("connect", () => s.end(text));
    s.on("data", (c: string) => got += c);
    s.on(
      "error",
      (e: Error & { code?: string }) => done(e.code === "ECONNREFUSED" ? "refused" : e.message),
    );
    s.on("close", () => done(got));
  });
}

Deno.test("meshd --l4-worker under config churn: no exchange hangs, no gauge below 0, UDP follows its endpoint, a removed port is refused, no descriptor kept", async () => {
  const tcp = [new TcpEcho(BACKEND), new TcpEcho(BACKEND)];
  const udp = [new NamedUdp("a"), new NamedUdp("b")];
  const dir = await Deno.makeTempDir({ prefix: "meshd-l4churn-" });
  /** TCP services `t<i>` and UDP services `u<i>`, each to backend `(i + ep) % 2`. */
  const write = (ts: number[], us: number[], ep: number) =>
    Deno.writeTextFile(
      `${dir}/mesh.yaml`,
      [
        ...ts.flatMap((i) => [
          service(`t${i}`, 7000 + i, { annotations: { "meshd.io/traffic-type": "tcp" } }),
          slice(`t${i}`, BACKEND, tcp[(i + ep) % 2]!.port),
        ]),
        ...us.flatMap((i) => [
          service(`u${i}`, 5300 + i, { protocol: "UDP" }),
          slice(`u${i}`, BACKEND, udp[(i + ep) % 2]!.port, "UDP"),
        ]),
      ].join("---\n"),
    );
  await write([0, 1], [0, 1], 0);
  const api = freePort(MESHD);
  const tcpFirst = freeRange(MESHD, 2);
  const udpFirst = freeRange(MESHD, 2);
  const child = spawnMeshd([
    "--config-dir",
    dir,
    "--proxy-address",
    MESHD,
    "--http-port",
    String(freePort(MESHD)),
    "--api-address",
    MESHD,
    "--api-port",
    String(api),
    "--tcp-ports",
    `${tcpFirst}-${tcpFirst + 1}`,
    "--udp-ports",
    `${udpFirst}-${udpFirst + 1}`,
    "--datapath",
    "userspace",
    "--reuse-port",
    "--drain-timeout",
    "5s",
    "--watchdog",
    "5s",
    "--udp-idle-timeout",
    "1s",
    "--l4-worker",
  ], { deno: ["--allow-net", "--allow-read", "--allow-env", "--allow-ffi"] });
  const metrics = async () => await (await fetch(`http://${MESHD}:${api}/metrics`)).text();
  const negative = (text: string) =>
    text.split("\n").filter((l) => !l.startsWith("#") && Number(l.split(" ").pop()) < 0);
  const open = (text: string) =>
    [...text.matchAll(/^meshd_open_connections\{[^}]*\} (\S+)$/gm)]
      .reduce((n, m) => n + Number(m[1]), 0);
  const fds = () => [...Deno.readDirSync(`/proc/${child.pid}/fd`)].length;
  /** How many times each TCP service was dropped from the config, and when `ports` was read. */
  const drops: Record<string, number> = {};
  let dropsSeen: Record<string, number> = {};
  /** Where each service is served now, by name. */
  let ports: Record<string, number> = {};
  const served = async (names: string[]) => {
    const seen = { ...drops };
    const r = await fetch(`http://${MESHD}:${api}/api/services`).catch(() => null);
    if (!r) return undefined;
    const list = await r.json() as { service: string; address: string; served: boolean }[];
    const listed = list.map((s) => s.service).sort().join();
    if (listed !== [...names].sort().join() || !list.every((s) => s.served)) return undefined;
    dropsSeen = seen;
    return ports = Object.fromEntries(
      list.map((s) => [s.service, Number(s.address.split(":")[1])]),
    );
  };
  const client = Deno.listenDatagram({ transport: "udp", hostname: CLIENT, port: 0 });
  const answers: string[] = [];
  const receiving = (async () => {
    for (;;) answers.push(new TextDecoder().decode((await client.receive())[0]));
  })().catch(() => {});
  let stop = false;
  const wrong: string[] = [];
  let exchanges = 0;
  try {
    await waitFor(
      "meshd to serve its 4 service ports",
      () => served(["t0", "t1", "u0", "u1"]),
      30_000,
      100,
    );
    assert.equal(await exchange(ports.t0!, "warm"), "warm");
    await client.send(new Uint8Array(1), { transport: "udp", hostname: MESHD, port: ports.u0! });
    await waitFor("the first UDP answer", () => answers.length > 0 || undefined);
    await waitFor("its flow to go idle", async () => open(await metrics()) === 0 || undefined);
    const base = fds();

    const tcpLoad = Array.from({ length: 4 }, async (_, i) => {
      while (!stop) {
        const port = ports[`t${i % 2}`];
        if (port === undefined) {
          await new Promise((r) => setTimeout(r, 10));
          continue;
        }
        const name = `t${i % 2}`;
        // A drop after `ports` was read from meshd makes the port this exchange uses stale.
        const dropsBefore = dropsSeen[name] ?? 0;
        const text = `${i}:${exchanges++}:` + "x".repeat(2000);
        const got = await exchange(port, text);
        // A port the config dropped meanwhile refuses, or resets the connections its queues
        // held when it closed (a read then fails with ECONNRESET, a write with EPIPE);
        // anything else is the echo.
        const dropped = (drops[name] ?? 0) > dropsBefore;
        if (got !== text && !(dropped && (got === "refused" || /ECONNRESET|EPIPE/.test(got)))) {
          wrong.push(got.slice(0, 80));
        }
      }
    });
    // One client that never stops sending (from one port: its flow never goes idle).
    const udpLoad = (async () => {
      while (!stop) {
        const port = ports.u0;
        if (port !== undefined) {
          await client.send(new Uint8Array(1), { transport: "udp", hostname: MESHD, port });
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    // Ports dropped and added again, endpoints swapped; u0 stays, its endpoint alternates.
    const steps: [number[], number[]][] = [
      [[0], [0]],
      [[0, 1], [0, 1]],
      [[1], [0, 1]],
      [[], [0]],
      [[0, 1], [0]],
      [[0], [0, 1]],
      [[0, 1], [0, 1]],
      [[1], [0]],
      [[0], [0]],
    ];
    for (const [step, [ts, us]] of steps.entries()) {
      for (const name of Object.keys(ports)) {
        if (name.startsWith("t") && !ts.includes(Number(name.slice(1)))) {
          drops[name] = (drops[name] ?? 0) + 1;
        }
      }
      await write(ts, us, step + 1);
      await waitFor(
        `step ${step}: meshd to serve ${ts.length + us.length} ports`,
        async () => {
          const want = [...ts.map((i) => `t${i}`), ...us.map((i) => `u${i}`)];
          return await served(want);
        },
        10_000,
        20,
      );
      // u0 goes to backend (step + 1) % 2 now: its client's next answers come from there.
      const want = udp[(step + 1) % 2]!.name;
      const from = answers.length;
      await waitFor(
        `step ${step}: UDP answers from ${want}`,
        () => answers.slice(from).slice(-3).join("") === want.repeat(3) || undefined,
        5_000,
        20,
      );
      assert.deepEqual(negative(await metrics()), [], `step ${step}: gauges below 0`);
    }
    stop = true;
    await Promise.all([...tcpLoad, udpLoad]);
    assert.deepEqual(wrong, [], "exchanges that hung or came back wrong");
    assert.ok(exchanges > 20, `${exchanges} TCP exchanges`);

    // Only t0 and u0 are left: t1's port is refused, and meshd is back where it started.
    const dropped = tcpFirst + tcpFirst + 1 - ports.t0!;
    assert.equal(await exchange(dropped, "gone"), "refused", `port ${dropped} of t1`);
    await waitFor("meshd back to its descriptors and no open connection", async () => {
      const [n, o, text] = [fds(), open(await metrics()), await metrics()];
      if (n <= base && o === 0 && negative(text).length === 0) return true;
      throw new Error(`${n} descriptors (${base} before), ${o} open, ${negative(text)}`);
    }, 10_000);
  } finally {
    stop = true;
    client.close();
    await receiving;
    await child.stop();
    for (const b of [...tcp, ...udp]) await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});
