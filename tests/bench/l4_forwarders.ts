/**
 * Minimal Deno forwarders for the TCP and UDP ceilings of the data plane benchmark
 * (`dataplane_bench.ts`, target `ceiling`): measurement tools, not product code. Each forwards
 * everything on its listener to one backend, with no routing, access control, metrics, logs,
 * retries or timeouts, so what it costs is the floor of a Deno proxy on this machine.
 *
 *   deno run --allow-net tests/bench/l4_forwarders.ts tcp|udp --listen HOST:PORT --backend HOST:PORT
 *
 * - `tcp`: one backend connection per client connection, a read/write loop each way with one
 *   64 KiB buffer per direction, Nagle off, half-close passed on.
 * - `udp`: one socket for the listener; a client's first datagram opens a socket of its own
 *   towards the backend (found again by a string key of the client's address), and a loop on
 *   that socket sends the backend's replies back from the listener.
 *
 * @module
 */

function hostPort(s: string): { hostname: string; port: number } {
  const i = s.lastIndexOf(":");
  return { hostname: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

async function copy(from: Deno.TcpConn, to: Deno.TcpConn): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      let off = 0;
      while (off < n) off += await to.write(buf.subarray(off, n));
    }
    await to.closeWrite();
  } catch {
    try {
      from.close();
    } catch { /* closed */ }
    try {
      to.close();
    } catch { /* closed */ }
  }
}

async function tcp(listen: string, backend: string): Promise<void> {
  const b = hostPort(backend);
  const l = Deno.listen({ ...hostPort(listen), transport: "tcp" });
  for await (const client of l) {
    (async () => {
      const up = await Deno.connect({ ...b, transport: "tcp" });
      client.setNoDelay(true);
      up.setNoDelay(true);
      await Promise.all([copy(client, up), copy(up, client)]);
      try {
        client.close();
      } catch { /* closed */ }
      try {
        up.close();
      } catch { /* closed */ }
    })().catch(() => client.close());
  }
}

async function udp(listen: string, backend: string): Promise<void> {
  const b = { transport: "udp" as const, ...hostPort(backend) };
  const sock = Deno.listenDatagram({ ...hostPort(listen), transport: "udp" });
  const flows = new Map<string, Deno.DatagramConn>();
  const buf = new Uint8Array(65_535);
  for (;;) {
    const [data, from] = await sock.receive(buf);
    const client = from as Deno.NetAddr;
    const key = `${client.hostname}|${client.port}`;
    let up = flows.get(key);
    if (!up) {
      const u = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
      flows.set(key, up = u);
      (async () => {
        const rbuf = new Uint8Array(65_535);
        for (;;) {
          const [d] = await u.receive(rbuf);
          await sock.send(d, client);
        }
      })();
    }
    await up.send(data, b);
  }
}

if (import.meta.main) {
  const [mode, ...rest] = Deno.args;
  const opt = (name: string) => rest[rest.indexOf(name) + 1] ?? "";
  const listen = opt("--listen");
  const backend = opt("--backend");
  if ((mode !== "tcp" && mode !== "udp") || !listen || !backend) {
    console.error("usage: l4_forwarders.ts tcp|udp --listen HOST:PORT --backend HOST:PORT");
    Deno.exit(2);
  }
  await (mode === "tcp" ? tcp(listen, backend) : udp(listen, backend));
}
