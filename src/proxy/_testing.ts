/**
 * Test helpers for the data plane: backends on loopback that say who answered, and a raw
 * HTTP/1.1 client (Deno's fetch rewrites Host and adds headers, so tests that check what a proxy
 * forwards write the bytes themselves). For tests only: the MeshConfig builders are in
 * `src/topology/_testing.ts`.
 *
 * @module
 */

/** An HTTP backend on loopback that answers `name` and records what it saw. */
export interface HttpBackend {
  name: string;
  port: number;
  /** Requests seen, in order. */
  requests: { method: string; url: string; headers: Headers; body: Uint8Array }[];
  /** Distinct client connections seen (by the client's port). */
  connections: Set<number>;
  close(): Promise<void>;
}

/**
 * Starts an HTTP backend on `hostname` (default 127.0.0.1). It replies
 * `name=<name>\n` followed by `<header>: <value>` lines for each request header, so the test
 * sees what was forwarded; a body is read whole and its length and SHA-256 are returned.
 */
export function httpBackend(name: string, hostname = "127.0.0.1"): Promise<HttpBackend> {
  const requests: HttpBackend["requests"] = [];
  const connections = new Set<number>();
  return new Promise((resolve) => {
    const server = Deno.serve(
      {
        hostname,
        port: 0,
        onListen: ({ port }) =>
          resolve({
            name,
            port,
            requests,
            connections,
            close: () => server.shutdown(),
          }),
      },
      async (req, info) => {
        connections.add(info.remoteAddr.port);
        const body = new Uint8Array(await req.arrayBuffer());
        requests.push({ method: req.method, url: req.url, headers: req.headers, body });
        const lines = [`name=${name}`, `method=${req.method}`, `bytes=${body.length}`];
        if (body.length > 0) lines.push(`sha256=${await sha256(body)}`);
        for (const [k, v] of req.headers) lines.push(`${k}: ${v}`);
        const status = Number(new URL(req.url).searchParams.get("status") ?? 200);
        return new Response(lines.join("\n") + "\n", { status });
      },
    );
  });
}

/** Hex SHA-256 of `data`. */
export async function sha256(data: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A parsed HTTP/1.x response. */
export interface RawResponse {
  status: number;
  /** The status line and headers as received. */
  head: string;
  headers: Map<string, string>;
  body: string;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * One client connection that sends raw requests and reads responses framed by
 * Content-Length, chunked encoding or close. Independent of the proxy's own parser.
 */
export class RawClient {
  #buf = new Uint8Array(0);
  #eof = false;

  private constructor(readonly conn: Deno.TcpConn) {}

  /** Connects to `hostname`:`port` (default 127.0.0.1). */
  static async connect(port: number, hostname = "127.0.0.1"): Promise<RawClient> {
    return new RawClient(await Deno.connect({ hostname, port }));
  }

  /** Writes bytes as they are. */
  async send(data: string | Uint8Array): Promise<void> {
    let bytes = typeof data === "string" ? enc.encode(data) : data;
    while (bytes.length > 0) bytes = bytes.subarray(await this.conn.write(bytes));
  }

  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    const chunk = new Uint8Array(64 * 1024);
    const n = await this.conn.read(chunk);
    if (n === null) {
      this.#eof = true;
      return false;
    }
    const next = new Uint8Array(this.#buf.length + n);
    next.set(this.#buf);
    next.set(chunk.subarray(0, n), this.#buf.length);
    this.#buf = next;
    return true;
  }

  async #readLine(): Promise<string> {
    for (;;) {
      const i = this.#buf.indexOf(10);
      if (i >= 0) {
        const line = dec.decode(this.#buf.subarray(0, i)).replace(/\r$/, "");
        this.#buf = this.#buf.subarray(i + 1);
        return line;
      }
      if (!await this.#fill()) throw new Error("connection closed in the middle of a line");
    }
  }

  async #readN(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n) {
      if (!await this.#fill()) throw new Error(`connection closed with ${n} body bytes expected`);
    }
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /** Reads until at least `n` bytes past the last response are here; returns them all. */
  async readBytes(n: number): Promise<string> {
    while (this.#buf.length < n) {
      if (!await this.#fill()) break;
    }
    const out = dec.decode(this.#buf);
    this.#buf = new Uint8Array(0);
    return out;
  }

  /** Whether the server has closed its side (reads EOF with nothing buffered). */
  async closedByPeer(): Promise<boolean> {
    if (this.#buf.length > 0) return false;
    return !await this.#fill();
  }

  /** Reads one response; `head` is true for a response to HEAD (no body). */
  async read(opts: { headRequest?: boolean } = {}): Promise<RawResponse> {
    let status = 0;
    let headText = "";
    const headers = new Map<string, string>();
    // 1xx responses come before the final one.
    for (;;) {
      const statusLine = await this.#readLine();
      headText = statusLine + "\n";
      status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? NaN);
      if (Number.isNaN(status)) throw new Error(`bad status line "${statusLine}"`);
      headers.clear();
      for (;;) {
        const line = await this.#readLine();
        if (line === "") break;
        headText += line + "\n";
        const c = line.indexOf(":");
        const k = line.slice(0, c).trim().toLowerCase();
        const v = line.slice(c + 1).trim();
        headers.set(k, headers.has(k) ? `${headers.get(k)}, ${v}` : v);
      }
      if (status >= 200 || status === 101) break;
    }
    let body = "";
    if (opts.headRequest || status === 101 || status === 204 || status === 304) {
      body = "";
    } else if (headers.get("transfer-encoding")?.toLowerCase().includes("chunked")) {
      const parts: Uint8Array[] = [];
      for (;;) {
        const size = parseInt(await this.#readLine(), 16);
        if (size === 0) {
          while ((await this.#readLine()) !== "") { /* trailers */ }
          break;
        }
        parts.push(await this.#readN(size));
        await this.#readLine();
      }
      body = parts.map((p) => dec.decode(p)).join("");
    } else if (headers.has("content-length")) {
      body = dec.decode(await this.#readN(Number(headers.get("content-length"))));
    } else {
      while (await this.#fill()) { /* read to close */ }
      body = dec.decode(this.#buf);
      this.#buf = new Uint8Array(0);
    }
    return { status, head: headText, headers, body };
  }

  /** Sends a request and reads its response. */
  async request(raw: string, opts: { headRequest?: boolean } = {}): Promise<RawResponse> {
    await this.send(raw);
    return await this.read(opts);
  }

  /** Closes the connection (idempotent). */
  close(): void {
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }
}

/** One request on a fresh connection, with `Connection: close`. */
export async function rawRequest(
  port: number,
  host: string,
  opts: { path?: string; method?: string; headers?: string[]; body?: string } = {},
): Promise<RawResponse> {
  const client = await RawClient.connect(port);
  try {
    const headers = [`Host: ${host}`, "Connection: close", ...(opts.headers ?? [])];
    if (opts.body !== undefined) headers.push(`Content-Length: ${enc.encode(opts.body).length}`);
    return await client.request(
      `${opts.method ?? "GET"} ${opts.path ?? "/"} HTTP/1.1\r\n${headers.join("\r\n")}\r\n\r\n${
        opts.body ?? ""
      }`,
      { headRequest: opts.method === "HEAD" },
    );
  } finally {
    client.close();
  }
}

/** The value of `key=` in a backend's reply. */
export function field(body: string, key: string): string | undefined {
  return new RegExp(`^${key}=(.*)$`, "m").exec(body)?.[1];
}

/** Sends `text` on `conn` and reads until as many bytes came back (from an echo backend). */
export async function echoOver(conn: Deno.Conn, text: string): Promise<string> {
  const sent = new TextEncoder().encode(text);
  await conn.write(sent);
  const got = new Uint8Array(sent.length);
  for (let off = 0; off < got.length;) {
    const n = await conn.read(got.subarray(off));
    if (n === null) throw new Error(`connection closed after ${off} of ${got.length} bytes`);
    off += n;
  }
  return new TextDecoder().decode(got);
}

/** Whether `conn` is served: what it sends comes back within `ms` (a refused one is closed). */
export async function tcpServed(conn: Deno.Conn, ms = 3000): Promise<boolean> {
  const timer = setTimeout(() => conn.close(), ms);
  try {
    return await echoOver(conn, "ping") === "ping";
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

/** Whether `conn` to an HTTP entrypoint is answered 200 within `ms`; it is kept open. */
export async function httpServed(conn: Deno.Conn, host: string, ms = 3000): Promise<boolean> {
  const timer = setTimeout(() => conn.close(), ms);
  try {
    await conn.write(new TextEncoder().encode(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`));
    const buf = new Uint8Array(1024);
    const n = await conn.read(buf);
    return n !== null && /^HTTP\/1\.1 200 /.test(new TextDecoder().decode(buf.subarray(0, n)));
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

/** A TCP backend that echoes what each connection sends, then ends it: see {@linkcode tcpEchoBackend}. */
export interface TcpEchoBackend {
  port: number;
  /** Connections accepted so far. */
  connections: () => number;
  close(): Promise<void>;
}

/** A TCP echo backend on `hostname`: each connection gets back what it sent, then the end. */
export function tcpEchoBackend(hostname: string): TcpEchoBackend {
  const listener = Deno.listen({ hostname, port: 0 });
  let connections = 0;
  const serving = (async () => {
    for await (const conn of listener) {
      connections++;
      (async () => {
        const buf = new Uint8Array(4096);
        for (let n; (n = await conn.read(buf)) !== null;) await conn.write(buf.subarray(0, n));
        await conn.closeWrite();
      })().catch(() => {}).finally(() => conn.close());
    }
  })().catch(() => {});
  return {
    port: listener.addr.port,
    connections: () => connections,
    close: async () => (listener.close(), await serving),
  };
}
