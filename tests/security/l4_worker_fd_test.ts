/**
 * File descriptors of `meshd run --l4-worker`, whose engine opens and closes its sockets by
 * hand (libc through FFI): connects refused, connects that never answer while their clients
 * reset, transfers reset by either side, and UDP flows from many ports that go idle. After
 * each, meshd holds what it held before, and its open-connection gauges are back at 0.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { freePort, waitFor } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";
import { service, slice, TcpEcho, UdpEcho } from "./_load_env.ts";
import { bindSocket, closeFd, dialTcp, localAddress } from "../../src/engine/sockets.ts";

const MESHD = "127.0.64.100";
const BACKEND = "127.0.64.101";
const HOLE = "127.0.64.102";
const CLIENT = "127.0.64.103";

/** The first of `n` consecutive ports free for TCP on `host` (below the ephemeral range). */
function freeRange(host: string, n: number): number {
  for (let tries = 0; tries < 100; tries++) {
    const first = 20000 + Math.floor(Math.random() * 12000);
    const held: Deno.Listener[] = [];
    try {
      for (let i = 0; i < n; i++) held.push(Deno.listen({ hostname: host, port: first + i }));
      return first;
    } catch {
      continue;
    } finally {
      for (const l of held) l.close();
    }
  }
  throw new Error(`No ${n} consecutive free ports on ${host}`);
}

/** Connects from CLIENT to `port` and runs `fn` on the socket; resolves when it closed. */
function client(port: number, fn: (s: net.Socket) => void): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect({ host: MESHD, port, localAddress: CLIENT });
    s.on("error", () => {});
    s.on("close", () => resolve());
    fn(s);
  });
}

Deno.test("meshd --l4-worker holds no descriptor more after refused, unanswered and reset connections and idle UDP flows", async () => {
  const tcpEcho = new TcpEcho(BACKEND);
  const udpEcho = new UdpEcho(BACKEND);
  const refused = freePort(BACKEND);
  // A backend whose accept queue is full: the kernel drops further SYNs, connects wait.
  const hole = bindSocket("tcp", HOLE, 0, { backlog: 0 });
  const fillers = [0, 1, 2].map(() => dialTcp(HOLE, localAddress(hole).port));
  const dir = await Deno.makeTempDir({ prefix: "meshd-l4fd-" });
  const api = freePort(MESHD);
  const tcp = freeRange(MESHD, 3);
  await Deno.writeTextFile(
    `${dir}/mesh.yaml`,
    [
      service("echo", 7, { annotations: { "meshd.io/traffic-type": "tcp" } }),
      slice("echo", BACKEND, tcpEcho.port),
      service("dead", 8, { annotations: { "meshd.io/traffic-type": "tcp" } }),
      slice("dead", BACKEND, refused),
      service("hole", 9, { annotations: { "meshd.io/traffic-type": "tcp" } }),
      slice("hole", HOLE, localAddress(hole).port),
      service("dns", 53, { protocol: "UDP" }),
      slice("dns", BACKEND, udpEcho.port, "UDP"),
    ].join("---\n"),
  );
  const udpPort = freePort(MESHD);
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
    `${tcp}-${tcp + 2}`,
    "--udp-ports",
    `${udpPort}-${udpPort}`,
    "--datapath",
    "userspace",
    "--connect-timeout",
    "1s",
    "--udp-idle-timeout",
    "1s",
    "--l4-worker",
  ], { deno: ["--allow-net", "--allow-read", "--allow-env", "--allow-ffi"] });
  const fds = () => [...Deno.readDirSync(`/proc/${child.pid}/fd`)].length;
  const metrics = async () => await (await fetch(`http://${MESHD}:${api}/metrics`)).text();
  const open = async () =>
    [...(await metrics()).matchAll(/^meshd_open_connections\{[^}]*\} (\d+)$/gm)]
      .reduce((n, m) => n + Number(m[1]), 0);
  const udpSockets: Deno.DatagramConn[] = [];
  try {
    const ports = await waitFor(
      "meshd to serve its 4 service ports",
      async () => {
        const r = await fetch(`http://${MESHD}:${api}/api/services`).catch(() => null);
        if (!r) return undefined;
        const list = await r.json() as { service: string; address: string; served: boolean }[];
        if (list.length < 4 || !list.every((s) => s.served)) return undefined;
        return Object.fromEntries(list.map((s) => [s.service, Number(s.address.split(":")[1])]));
      },
      30_000,
      100,
    );
    // One echo each way first: what meshd opens once (its API client, say) is in the base.
    await client(ports.echo!, (s) => {
      s.on("connect", () => s.end("x"));
      s.resume();
    });
    const warm = Deno.listenDatagram({ transport: "udp", hostname: CLIENT, port: 0 });
    udpSockets.push(warm);
    await warm.send(new Uint8Array([1]), { transport: "udp", hostname: MESHD, port: ports.dns! });
    await warm.receive();
    await waitFor("the first UDP flow to go idle", async () => (await open()) === 0 || undefined);
    // Every connection and flow of a phase is gone: back to what meshd held before it.
    const base = fds();
    const settled = (what: string) =>
      waitFor(`meshd back to ${base} descriptors after ${what}`, async () => {
        const [n, o] = [fds(), await open()];
        if (n <= base && o === 0) return true;
        throw new Error(`${n} descriptors (${base} before), ${o} connections open`);
      }, 10_000).then((v) => assert.equal(v, true));

    await Promise.all(Array.from({ length: 50 }, () => client(ports.dead!, (s) => s.resume())));
    await settled("50 refused connects");

    await Promise.all(
      Array.from(
        { length: 30 },
        () => client(ports.hole!, (s) => s.on("connect", () => s.resetAndDestroy())),
      ),
    );
    await settled("30 clients that reset while their connect waited");

    await Promise.all(Array.from({ length: 20 }, (_, i) =>
      client(ports.echo!, (s) => {
        let got = 0;
        s.on("connect", () => s.write(new Uint8Array(1 << 20)));
        s.on("data", (d: Uint8Array) => {
          got += d.length;
          if (i % 2 === 1 && got > 64 * 1024) s.resetAndDestroy();
          else if (got >= 1 << 20) s.end();
        });
      })));
    await settled("20 echoes of 1 MiB, half reset by the client mid-transfer");

    for (let i = 0; i < 100; i++) {
      const u = Deno.listenDatagram({ transport: "udp", hostname: CLIENT, port: 0 });
      udpSockets.push(u);
      await u.send(new Uint8Array([i]), { transport: "udp", hostname: MESHD, port: ports.dns! });
    }
    await settled("100 UDP flows that went idle");
  } finally {
    for (const u of udpSockets) u.close();
    await child.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    for (const fd of fillers) closeFd(fd);
    closeFd(hole);
    await Promise.all([tcpEcho.close(), udpEcho.close()]);
  }
});
