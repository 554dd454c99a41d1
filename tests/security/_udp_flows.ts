/**
 * What the UDP flow tests share: a question to the proxy with a deadline, and a backend that
 * says which flow socket each datagram came from.
 *
 * @module
 */
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Sends `text` from `c` to `hostname:port` and returns the reply, or throws after `ms`. */
export async function ask(
  c: Deno.DatagramConn,
  hostname: string,
  port: number,
  text: string,
  ms = 5000,
): Promise<string> {
  await c.send(enc.encode(text), { transport: "udp", hostname, port });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no reply to "${text}" within ${ms} ms`)), ms);
  });
  try {
    const [data] = await Promise.race([c.receive(), late]);
    return dec.decode(data);
  } finally {
    clearTimeout(timer);
  }
}

/** A backend on `hostname` that echoes each datagram as `text@port`, the flow socket's port. */
export function flowEchoBackend(hostname: string): { port: number; close: () => Promise<void> } {
  const backend = Deno.listenDatagram({ transport: "udp", hostname, port: 0 });
  const echoing = (async () => {
    for (;;) {
      const [data, from] = await backend.receive();
      await backend.send(enc.encode(`${dec.decode(data)}@${(from as Deno.NetAddr).port}`), from);
    }
  })().catch(() => {});
  return {
    port: (backend.addr as Deno.NetAddr).port,
    close: async () => {
      backend.close();
      await echoing;
    },
  };
}

/** The flow socket's port in a {@linkcode flowEchoBackend} reply. */
export const flowOf = (reply: string): string | undefined => reply.split("@")[1];
