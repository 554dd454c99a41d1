/**
 * An HTTP CONNECT proxy on a Unix socket, for a test cluster started with `egress: true`: the
 * API server sends its traffic to the cluster (pod, service and node proxy) there, as a
 * konnectivity server would take it, and `route` says where each `host:port` really is. In the
 * API tier that lets a Pod whose status the test wrote (an address from a documentation
 * range, which the API server agrees to proxy to) be served on loopback; the API server
 * refuses a loopback pod address outright.
 *
 * @module
 */

/**
 * Where a `host:port` the API server asked for is reached: a TCP address, or a Unix socket
 * (such as a netns agent's `forward`, into a node's namespace); null refuses it.
 */
export type EgressRoute = (
  host: string,
  port: number,
) =>
  | Deno.ConnectOptions
  | Deno.UnixConnectOptions
  | null
  | Promise<Deno.ConnectOptions | Deno.UnixConnectOptions | null>;

function where(to: Deno.ConnectOptions | Deno.UnixConnectOptions): string {
  return "path" in to ? `unix:${to.path}` : `${to.hostname}:${to.port}`;
}

/** A running egress proxy; {@linkcode EgressProxy.stop} in a `finally`. */
export interface EgressProxy {
  /** Every CONNECT seen, as `host:port -> hostname:port` or `host:port refused`. */
  readonly seen: string[];
  /**
   * HTTP/1.1 requests the API server sent through the tunnels, by the `host:port` it asked
   * for, as `METHOD path` (read from the bytes, so keep-alive requests count too).
   */
  readonly requests: Map<string, string[]>;
  stop(): Promise<void>;
}

const HEAD_END = new Uint8Array([13, 10, 13, 10]);

function indexOf(buf: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= buf.length; i++) {
    for (let j = 0; j < needle.length; j++) if (buf[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** Serves CONNECT on the Unix socket `path`, connecting where `route` says. */
export function serveEgress(path: string, route: EgressRoute): EgressProxy {
  const listener = Deno.listen({ transport: "unix", path });
  const seen: string[] = [];
  const requests = new Map<string, string[]>();
  const open = new Set<Deno.Conn>();
  /** Passes bytes on, noting each request line in them. */
  const tap = (target: string) => {
    let carry = "";
    const dec = new TextDecoder();
    const list = requests.get(target) ?? [];
    requests.set(target, list);
    return new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, ctl) {
        const text = carry + dec.decode(chunk, { stream: true });
        const lines = text.split("\r\n");
        carry = lines.pop()!.slice(-200);
        for (const l of lines) {
          const m = /^(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP\/1\.1$/.exec(l);
          if (m) list.push(`${m[1]} ${m[2]}`);
        }
        ctl.enqueue(chunk);
      },
    });
  };
  const enc = new TextEncoder();
  const handle = async (c: Deno.Conn) => {
    open.add(c);
    let upstream: Deno.Conn | null = null;
    try {
      // The request head: `CONNECT host:port HTTP/1.1`, headers, an empty line.
      let buf = new Uint8Array(0);
      let end = -1;
      while ((end = indexOf(buf, HEAD_END)) < 0) {
        if (buf.length > 16_384) throw new Error("head too long");
        const chunk = new Uint8Array(4096);
        const n = await c.read(chunk);
        if (n === null) return;
        const next = new Uint8Array(buf.length + n);
        next.set(buf);
        next.set(chunk.subarray(0, n), buf.length);
        buf = next;
      }
      const line = new TextDecoder().decode(buf.subarray(0, end)).split("\r\n")[0] ?? "";
      const m = /^CONNECT (\[[^\]]+\]|[^:\s]+):(\d+) HTTP\/1\.[01]$/.exec(line);
      const to = m ? await route(m[1]!.replace(/^\[|\]$/g, ""), Number(m[2])) : null;
      if (!m || !to) {
        seen.push(`${m ? `${m[1]}:${m[2]}` : line} refused`);
        await c.write(enc.encode("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"));
        return;
      }
      seen.push(`${m[1]}:${m[2]} -> ${where(to)}`);
      try {
        upstream = "path" in to ? await Deno.connect(to) : await Deno.connect(to);
      } catch (e) {
        await c.write(enc.encode(`HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n`));
        seen.push(`${where(to)} ${(e as Error).message}`);
        return;
      }
      open.add(upstream);
      await c.write(enc.encode("HTTP/1.1 200 Connection established\r\n\r\n"));
      const rest = buf.subarray(end + HEAD_END.length);
      if (rest.length) await upstream.write(rest);
      const u = upstream;
      await Promise.all([
        c.readable.pipeThrough(tap(`${m[1]}:${m[2]}`)).pipeTo(u.writable).catch(() => {}),
        u.readable.pipeTo(c.writable).catch(() => {}),
      ]);
    } catch {
      /* the API server hung up */
    } finally {
      for (const x of [c, upstream]) {
        if (!x) continue;
        open.delete(x);
        try {
          x.close();
        } catch { /* closed by the pipe */ }
      }
    }
  };
  const loop = (async () => {
    for await (const c of listener) handle(c);
  })().catch(() => {});
  return {
    seen,
    requests,
    stop: async () => {
      listener.close();
      for (const c of open) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await loop;
      await Deno.remove(path).catch(() => {});
    },
  };
}
