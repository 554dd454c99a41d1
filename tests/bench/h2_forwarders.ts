/**
 * Minimal h2c forwarders for the HTTP/2 ceiling benchmark (`h2_ceiling_bench.ts`): measurement
 * tools, not product code. Each forwards every request on its listener to one h2c backend, with
 * no routing, no retries, no metrics and no timeouts, so what it costs is the floor of its
 * approach.
 *
 *   deno run --allow-net tests/bench/h2_forwarders.ts MODE --listen HOST:PORT --backend HOST:PORT
 *
 * MODE is one of:
 * - `node-http2`: a `node:http2` server; each stream becomes a request on one shared client
 *   session to the backend (opened once, reused by every stream), bodies piped, response
 *   headers and trailers copied. The approach of meshd's `src/proxy/h2_proxy.ts`, without its
 *   work.
 * - `deno-serve`: `Deno.serve` (which accepts cleartext HTTP/2 with prior knowledge) forwarding
 *   with `fetch` over `Deno.createHttpClient({ http1: false, http2: true })`, bodies streamed.
 *   Neither `Response` nor `Request` has trailers in Deno, so the backend's `grpc-status`
 *   trailer is dropped: this path cannot carry gRPC and is measured only for its cost.
 * - `frame-relay`: its own frame layer over `Deno.listen`/`Deno.connect`: one backend
 *   connection per client connection; every frame's 9-byte header is parsed, its stream ID
 *   looked up in a client-to-backend map (new client streams get the next backend ID, which is
 *   the same number since streams map 1:1) and rewritten, and the frames read in one go are
 *   written to the other side in one write. It omits HPACK (header blocks are passed through
 *   unchanged, so it cannot route on `:authority` nor share a backend connection between
 *   clients), its own SETTINGS, flow control and PING (the two ends negotiate them through
 *   it), and any GOAWAY or RST_STREAM handling beyond passing the frame on.
 *
 * @module
 */
import http2 from "node:http2";

function hostPort(s: string): { hostname: string; port: number } {
  const i = s.lastIndexOf(":");
  return { hostname: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

/** HTTP/2 headers that are per connection or per hop and must not be copied. */
const HOP = new Set([
  "connection",
  "keep-alive",
  "transfer-encoding",
  "upgrade",
  "proxy-connection",
]);

function nodeHttp2(listen: string, backend: string): void {
  const l = hostPort(listen);
  let session: http2.ClientHttp2Session | null = null;
  const upstream = (): http2.ClientHttp2Session => {
    if (session && !session.closed && !session.destroyed) return session;
    const s = http2.connect(`http://${backend}`);
    s.on("error", () => {});
    s.on("close", () => {
      if (session === s) session = null;
    });
    session = s;
    return s;
  };
  const server = http2.createServer({ settings: { maxConcurrentStreams: 1000 } });
  server.on("stream", (stream, headers) => {
    const out: http2.OutgoingHttpHeaders = {};
    for (const k in headers) {
      if (!HOP.has(k) && k !== ":scheme" && k !== ":authority") out[k] = headers[k];
    }
    out[":authority"] = headers[":authority"];
    const up = upstream().request(out);
    let trailers: http2.IncomingHttpHeaders | null = null;
    up.on("response", (h) => {
      const rh: http2.OutgoingHttpHeaders = {};
      for (const k in h) if (!HOP.has(k)) rh[k] = h[k];
      if (!stream.destroyed) stream.respond(rh, { waitForTrailers: true });
      up.pipe(stream);
    });
    up.on("trailers", (t) => trailers = t);
    stream.on("wantTrailers", () => {
      if (trailers) stream.sendTrailers(trailers);
      else stream.close();
    });
    up.on("error", () => stream.destroyed || stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR));
    stream.on("error", () => up.destroyed || up.close(http2.constants.NGHTTP2_CANCEL));
    stream.pipe(up);
  });
  server.listen(l.port, l.hostname);
}

function denoServe(listen: string, backend: string): void {
  const l = hostPort(listen);
  const client = Deno.createHttpClient({ http1: false, http2: true });
  const base = `http://${backend}`;
  Deno.serve({ hostname: l.hostname, port: l.port, onListen() {} }, async (req) => {
    const i = req.url.indexOf("/", req.url.indexOf("//") + 2);
    const r = await fetch(base + req.url.slice(i), {
      method: req.method,
      headers: req.headers,
      body: req.body,
      client,
    });
    return new Response(r.body, { status: r.status, headers: r.headers });
  });
}

const FRAME_HEADER = 9;

/**
 * Client stream N -> backend stream: the next odd ID, in order of opening, which with one
 * client per backend connection is N again; back through the inverse map.
 */
class StreamIds {
  readonly toBackend = new Map<number, number>();
  readonly toClient = new Map<number, number>();
  #next = 1;
  open(id: number): number {
    const m = this.#next;
    this.#next += 2;
    this.toBackend.set(id, m);
    this.toClient.set(m, id);
    return m;
  }
}

/**
 * Reads whole frames from `from` and writes them to `to`, each frame's stream ID rewritten
 * through `ids` (client to backend when `fromClient`, else back).
 */
async function relay(
  from: Deno.Conn,
  to: Deno.Conn,
  ids: StreamIds,
  fromClient: boolean,
): Promise<void> {
  const map = fromClient ? ids.toBackend : ids.toClient;
  let buf = new Uint8Array(64 * 1024);
  let view = new DataView(buf.buffer);
  let have = 0;
  // The client's 24-byte connection preface is passed through unparsed.
  let toSkip = fromClient ? 24 : 0;
  try {
    while (true) {
      if (have === buf.length) {
        const b = new Uint8Array(buf.length * 2);
        b.set(buf);
        buf = b;
        view = new DataView(buf.buffer);
      }
      const n = await from.read(buf.subarray(have));
      if (n === null) break;
      have += n;
      let off = 0;
      if (toSkip > 0) {
        if (have < toSkip) continue;
        off = toSkip;
        toSkip = 0;
      }
      while (have - off >= FRAME_HEADER) {
        const len = view.getUint32(off) >>> 8;
        if (have - off < FRAME_HEADER + len) break;
        const id = view.getUint32(off + 5) & 0x7fffffff;
        if (id !== 0) {
          const type = view.getUint8(off + 3);
          let mapped = map.get(id);
          if (mapped === undefined) {
            // A client's HEADERS on a new stream opens the backend stream; anything else on a
            // stream no longer mapped (a late WINDOW_UPDATE or RST_STREAM) keeps its ID.
            mapped = fromClient && type === 1 ? ids.open(id) : id;
          }
          view.setUint32(off + 5, mapped);
          // END_STREAM on DATA or HEADERS from the backend ends the stream both ways.
          if (!fromClient && (type === 0 || type === 1) && (view.getUint8(off + 4) & 1)) {
            ids.toClient.delete(id);
            ids.toBackend.delete(mapped);
          }
        }
        off += FRAME_HEADER + len;
      }
      if (off > 0) {
        let w = 0;
        while (w < off) w += await to.write(buf.subarray(w, off));
        buf.copyWithin(0, off, have);
        have -= off;
      }
    }
  } catch { /* either side closed */ }
  try {
    to.closeWrite();
  } catch { /* closed */ }
}

async function frameRelay(listen: string, backend: string): Promise<void> {
  const l = hostPort(listen);
  const b = hostPort(backend);
  for await (const client of Deno.listen({ hostname: l.hostname, port: l.port })) {
    (async () => {
      const up = await Deno.connect({ hostname: b.hostname, port: b.port });
      client.setNoDelay(true);
      up.setNoDelay(true);
      const ids = new StreamIds();
      await Promise.all([relay(client, up, ids, true), relay(up, client, ids, false)]);
      client.close();
      up.close();
    })().catch(() => {});
  }
}

if (import.meta.main) {
  const [mode, ...rest] = Deno.args;
  const opt = (k: string) => {
    const i = rest.indexOf(k);
    return i >= 0 ? rest[i + 1] : undefined;
  };
  const listen = opt("--listen"), backend = opt("--backend");
  if (!listen || !backend) {
    console.error(
      "usage: h2_forwarders.ts node-http2|deno-serve|frame-relay --listen HOST:PORT --backend HOST:PORT",
    );
    Deno.exit(2);
  }
  if (mode === "node-http2") nodeHttp2(listen, backend);
  else if (mode === "deno-serve") denoServe(listen, backend);
  else if (mode === "frame-relay") await frameRelay(listen, backend);
  else {
    console.error(`unknown mode ${mode}: node-http2, deno-serve or frame-relay`);
    Deno.exit(2);
  }
}
