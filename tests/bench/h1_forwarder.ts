/**
 * The least a Deno process can do to forward HTTP/1.1 (a measurement tool for
 * `h1_ceiling_bench.ts`, not a proxy): one backend connection per client connection, each read
 * taken for one whole message and written on as it is, with no parsing, routing or timeout.
 * Right only for a load whose requests and responses each fit in one read, as wrk's do.
 *
 *   deno run --allow-net tests/bench/h1_forwarder.ts LISTEN_HOST LISTEN_PORT BACKEND_HOST BACKEND_PORT
 *
 * @module
 */
const [listenHost, listenPort, backendHost, backendPort] = Deno.args;

async function forward(client: Deno.TcpConn): Promise<void> {
  client.setNoDelay(true);
  let backend: Deno.TcpConn | null = null;
  const request = new Uint8Array(16 * 1024);
  const response = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const n = await client.read(request);
      if (n === null) break;
      backend ??= await Deno.connect({ hostname: backendHost!, port: Number(backendPort) });
      await backend.write(request.subarray(0, n));
      const m = await backend.read(response);
      if (m === null) break;
      await client.write(response.subarray(0, m));
    }
  } catch { /* either side went away */ }
  for (const c of [client, backend]) {
    try {
      c?.close();
    } catch { /* closed */ }
  }
}

for await (const client of Deno.listen({ hostname: listenHost!, port: Number(listenPort) })) {
  forward(client);
}
