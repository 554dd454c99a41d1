/**
 * The quickstart's whoami backend as a test process, and a GET written by hand to meshd's HTTP
 * port (Deno's `fetch()` would replace the Host header with the URL's host).
 *
 * @module
 */
import { Child } from "./process.ts";

const WHOAMI = new URL("../../examples/quickstart/whoami.ts", import.meta.url).pathname;

/** Starts `examples/quickstart/whoami.ts` on `hostname:port`, answering with `name`. */
export function startWhoami(hostname: string, port: number, name = "whoami"): Child {
  return new Child(name, [
    "run",
    "--allow-net",
    WHOAMI,
    "--name",
    name,
    "--listen",
    `${hostname}:${port}`,
  ]);
}

/**
 * GET `path` from 127.0.0.1:`port` with Host `host`, on a connection of its own. Status 0 when
 * it failed or took over `timeoutMs`.
 */
export async function rawGet(
  port: number,
  host: string,
  { path = "/", timeoutMs = 5000 }: { path?: string; timeoutMs?: number } = {},
): Promise<{ status: number; body: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* closed */ }
  }, timeoutMs);
  try {
    await conn.write(
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`,
      ),
    );
    const text = await new Response(conn.readable).text();
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
    return { status, body: text.slice(text.indexOf("\r\n\r\n") + 4) };
  } catch {
    return { status: 0, body: "" };
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the readable */ }
  }
}
