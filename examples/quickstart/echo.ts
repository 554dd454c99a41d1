/**
 * A TCP echo backend for the quickstart and the tests: sends back every byte it gets, after a
 * first line naming itself, and half-closes when the client does. It logs each connection's
 * source to stderr. With `--udp` it also answers datagrams on the same address, each reply
 * being `<name>: ` and the datagram.
 *
 * Usage: deno run --allow-net echo.ts --name NAME --listen 127.0.2.1:7000 [--udp]
 *
 * @module
 */

const udp = Deno.args.includes("--udp");

function arg(name: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  const v = i >= 0 ? Deno.args[i + 1] : undefined;
  if (v === undefined) {
    console.error(`echo: --${name} is required`);
    Deno.exit(2);
  }
  return v;
}

const name = arg("name");
const [hostname, port] = arg("listen").split(/:(?=\d+$)/);
const listener = Deno.listen({ hostname, port: Number(port) });
console.error(`echo ${name} listening on ${hostname}:${port}`);
const hello = new TextEncoder().encode(`echo ${name}\n`);

async function serve(conn: Deno.TcpConn): Promise<void> {
  console.error(`echo ${name} connection from ${(conn.remoteAddr as Deno.NetAddr).hostname}`);
  try {
    await conn.write(hello);
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      let off = 0;
      while (off < n) off += await conn.write(buf.subarray(off, n));
    }
    await conn.closeWrite();
  } catch {
    // the client went away
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

async function serveUdp(): Promise<void> {
  const socket = Deno.listenDatagram({ transport: "udp", hostname, port: Number(port) });
  const prefix = new TextEncoder().encode(`${name}: `);
  for (;;) {
    const [data, from] = await socket.receive();
    const reply = new Uint8Array(prefix.length + data.length);
    reply.set(prefix);
    reply.set(data, prefix.length);
    await socket.send(reply, from);
  }
}

if (udp) serveUdp();
for await (const conn of listener) serve(conn);
