/**
 * The connection caps of a meshd whose proxy runs in several isolates (`--l4-worker`,
 * `--workers 2`) hold for the process as the flags say: a client with a per-source cap of N
 * holds N connections, over HTTP and TCP together, not half of it on each side (the HTTP side
 * and the L4 worker held half of each cap; each of N workers `ceil(cap / N)`).
 */
import assert from "node:assert/strict";
import net from "node:net";
import { waitFor } from "../testenv/process.ts";
import {
  CountingBackend,
  drops,
  httpStatus,
  idleConnections,
  type Meshd,
  service,
  slice,
  startMeshd,
  stopMeshd,
  TcpEcho,
} from "./_load_env.ts";

const MESHD = "127.0.70.20";
const WEB = "127.0.70.21";
const ECHO = "127.0.70.22";
const CLIENT = "127.0.70.23";
const OTHER = "127.0.70.24";
const WEB_HOST = "web.hl.mesh";

/**
 * Opens `n` connections from `source` to meshd's HTTP entrypoint, then asks for `/` on each,
 * keeping them open: resolves with the sockets and how many were answered 200 (a connection
 * over a cap is closed at once).
 */
async function httpConnections(
  m: Meshd,
  n: number,
  source: string,
): Promise<{ answered: number; close: () => void }> {
  const sockets = await Promise.all(
    Array.from({ length: n }, () =>
      new Promise<net.Socket>((resolve) => {
        const s = net.connect({ host: m.address, port: m.http, localAddress: source });
        s.on("connect", () => resolve(s));
        s.on("error", () => resolve(s));
      })),
  );
  const answers = await Promise.all(sockets.map((s) =>
    new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 10_000);
      const done = (ok: boolean) => (clearTimeout(timer), resolve(ok));
      s.setEncoding("latin1");
      s.on("data", (c: string) => done(c.startsWith("HTTP/1.1 200 ")));
      s.on("close", () => done(false));
      s.on("error", () => done(false));
      s.write(`GET / HTTP/1.1\r\nHost: ${WEB_HOST}\r\n\r\n`);
    })
  ));
  return {
    answered: answers.filter((a) => a).length,
    close: () => sockets.forEach((s) => s.destroy()),
  };
}

for (
  const [name, opts] of [
    ["--l4-worker", { flags: ["--l4-worker"], ffi: true }],
    ["--workers 2", { flags: ["--workers", "2"] }],
  ] as const
) {
  Deno.test(`meshd ${name} holds --max-connections-per-source for the process, over HTTP and TCP together`, async () => {
    const web = new CountingBackend(WEB);
    const tcp = new TcpEcho(ECHO);
    let m: Meshd | undefined;
    let held: { close: () => void } | undefined;
    let tcpTries: { close: () => void } | undefined;
    try {
      m = await startMeshd({
        address: MESHD,
        nofile: 1024,
        // An odd cap: with the caps divided, two workers each held 21 of 41.
        env: { MESHD_MAX_CONNECTIONS: "200", MESHD_MAX_CONNECTIONS_PER_SOURCE: "41" },
        flags: [...opts.flags],
        ffi: "ffi" in opts,
        services: 2,
        config: () => [
          service("web", 80),
          slice("web", WEB, web.port),
          service("echo", 7, { annotations: { "meshd.io/traffic-type": "tcp" } }),
          slice("echo", ECHO, tcp.port),
        ],
      });
      const mesh = m;
      const http = await httpConnections(mesh, 60, CLIENT);
      held = http;
      assert.equal(http.answered, 41, "HTTP connections answered from one source, of 60");
      // The source is at its cap on the TCP side too.
      tcpTries = await idleConnections(MESHD, mesh.tcp, 5, CLIENT);
      const d = await waitFor(
        "the refused connections to be counted",
        async () => {
          const d = await drops(mesh);
          return (d["source_limit"] ?? 0) >= 24 ? d : undefined;
        },
        10_000,
      );
      assert.equal(d["source_limit"], 24, `drops ${JSON.stringify(d)}`);
      assert.equal(d["connection_limit"] ?? 0, 0);
      // Another source is served all along.
      assert.equal(await httpStatus(mesh, WEB_HOST, { source: OTHER }), 200);
    } finally {
      held?.close();
      tcpTries?.close();
      if (m) await stopMeshd(m);
      await Promise.all([web.close(), tcp.close()]);
    }
  });
}
