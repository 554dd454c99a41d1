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
 *   headers and trailers copied. The approach `src/proxy/h2_proxy.ts` took before meshd had
 *   its own frame layer, without its work.
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
 * - `frame-hpack`: `frame-relay` plus HPACK (`src/proxy/h2/hpack.ts`): every header block, both ways, is
 *   decoded with the sender's dynamic table (Huffman included), the request's `:authority`
 *   looked up in a one-entry route table (`--authority`, default `grpc.default.mesh`; a miss
 *   resets the stream with REFUSED_STREAM), and the fields re-encoded as literals without
 *   indexing or Huffman into one HEADERS frame; other frames are copied with the mapped stream
 *   ID. What a frame-layer proxy must do per request on one connection pair. It still omits
 *   sharing a backend connection between client connections (which needs its own SETTINGS and
 *   flow control), choosing the backend by the route (the backend connection is opened at
 *   accept), header edits, and ordering its RST_STREAM after the backend's SETTINGS (a route
 *   miss on a connection's first read reaches the client before them, which it takes as a
 *   protocol error).
 *
 * @module
 */
import http2 from "node:http2";
import { encode, encodedSize, HpackDecoder } from "../../src/proxy/h2/hpack.ts";

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
  server.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
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
  /** Client streams the proxy reset (frame-hpack's route misses). */
  readonly refused = new Set<number>();
  #next = 1;
  open(id: number): number {
    const m = this.#next;
    this.#next += 2;
    this.toBackend.set(id, m);
    this.toClient.set(m, id);
    return m;
  }
  /** Forgets the stream `backend` on the backend, `client` on the client. */
  close(backend: number, client: number): void {
    this.toClient.delete(backend);
    this.toBackend.delete(client);
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
            ids.close(id, mapped);
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

/** The routes of `frame-hpack`: `:authority` to backend (one entry: the benchmark's). */
const ROUTES = new Map<string, string>();

/** Grows `b` to hold at least `n` bytes, keeping its first `keep`. */
function room(b: Uint8Array<ArrayBuffer>, n: number, keep: number): Uint8Array<ArrayBuffer> {
  if (b.length >= n) return b;
  const g = new Uint8Array(Math.max(n, b.length * 2));
  g.set(b.subarray(0, keep));
  return g;
}

/**
 * `relay` with HPACK: every header block (HEADERS and its CONTINUATIONs) is decoded with the
 * sender's table, the client's `:authority` looked up in `ROUTES` (a miss resets the stream
 * with REFUSED_STREAM), and the fields re-encoded as literals into one HEADERS frame (padding
 * and priority dropped); other frames are copied unchanged but for the stream ID. The frames of
 * one read go out in one write.
 */
async function relayHpack(
  from: Deno.Conn,
  to: Deno.Conn,
  back: Deno.Conn,
  ids: StreamIds,
  fromClient: boolean,
): Promise<void> {
  const map = fromClient ? ids.toBackend : ids.toClient;
  const decoder = new HpackDecoder();
  let buf = new Uint8Array(64 * 1024);
  let view = new DataView(buf.buffer);
  let out = new Uint8Array(64 * 1024);
  let have = 0;
  let toSkip = fromClient ? 24 : 0;
  // A header block waiting for its CONTINUATIONs.
  let block = new Uint8Array(16 * 1024);
  let blockLen = 0;
  let blockFlags = 0;
  const fields: [string, string][] = [];
  try {
    while (true) {
      if (have === buf.length) {
        buf = room(buf, buf.length * 2, have);
        view = new DataView(buf.buffer);
      }
      const n = await from.read(buf.subarray(have));
      if (n === null) break;
      have += n;
      let off = 0;
      let w = 0;
      let refused: number[] | null = null;
      if (toSkip > 0) {
        if (have < toSkip) continue;
        out = room(out, toSkip, 0);
        out.set(buf.subarray(0, toSkip));
        off = w = toSkip;
        toSkip = 0;
      }
      while (have - off >= FRAME_HEADER) {
        const len = view.getUint32(off) >>> 8;
        if (have - off < FRAME_HEADER + len) break;
        const type = view.getUint8(off + 3);
        const flags = view.getUint8(off + 4);
        const id = view.getUint32(off + 5) & 0x7fffffff;
        const payload = off + FRAME_HEADER;
        off += FRAME_HEADER + len;
        // Frames of a stream refused here go no further.
        if (fromClient && id !== 0 && ids.refused.has(id)) continue;
        let mapped = id === 0 ? 0 : map.get(id);
        if (mapped === undefined) mapped = fromClient && type === 1 ? ids.open(id) : id;
        if (type === 1 || type === 9) { // HEADERS, CONTINUATION
          let start = payload;
          let end = payload + len;
          if (type === 1) {
            if (flags & 0x8) end -= buf[start++]!; // PADDED
            if (flags & 0x20) start += 5; // PRIORITY
            blockLen = 0;
            blockFlags = flags & 0x1; // END_STREAM
          }
          block = room(block, blockLen + end - start, blockLen);
          block.set(buf.subarray(start, end), blockLen);
          blockLen += end - start;
          if (!(flags & 0x4)) continue; // END_HEADERS yet to come
          fields.length = 0;
          decoder.decode(block.subarray(0, blockLen), fields);
          if (fromClient) {
            let authority = "";
            for (const [k, v] of fields) if (k === ":authority") authority = v;
            if (!ROUTES.has(authority)) {
              ids.close(mapped, id);
              ids.refused.add(id);
              (refused ??= []).push(id);
              continue;
            }
          }
          out = room(out, w + FRAME_HEADER + encodedSize(fields), w);
          const end2 = encode(fields, out, w + FRAME_HEADER);
          const size = end2 - w - FRAME_HEADER;
          out[w] = size >>> 16;
          out[w + 1] = (size >>> 8) & 0xff;
          out[w + 2] = size & 0xff;
          out[w + 3] = 1;
          out[w + 4] = blockFlags | 0x4;
          new DataView(out.buffer).setUint32(w + 5, mapped);
          w = end2;
          if (!fromClient && blockFlags & 1) ids.close(id, mapped);
        } else {
          out = room(out, w + FRAME_HEADER + len, w);
          out.set(buf.subarray(payload - FRAME_HEADER, payload + len), w);
          if (id !== 0) new DataView(out.buffer).setUint32(w + 5, mapped);
          w += FRAME_HEADER + len;
          if (!fromClient && type === 0 && flags & 1) ids.close(id, mapped);
        }
      }
      buf.copyWithin(0, off, have);
      have -= off;
      for (let o = 0; o < w;) o += await to.write(out.subarray(o, w));
      if (refused) {
        const rst = new Uint8Array(13 * refused.length);
        const rv = new DataView(rst.buffer);
        refused.forEach((sid, i) => {
          rv.setUint32(i * 13, (4 << 8) | 3); // length 4, type RST_STREAM
          rv.setUint32(i * 13 + 5, sid);
          rv.setUint32(i * 13 + 9, 7); // REFUSED_STREAM
        });
        for (let o = 0; o < rst.length;) o += await back.write(rst.subarray(o));
      }
    }
  } catch { /* either side closed, or a block that does not decode */ }
  try {
    to.closeWrite();
  } catch { /* closed */ }
}

async function frameRelay(listen: string, backend: string, hpack: boolean): Promise<void> {
  const l = hostPort(listen);
  const b = hostPort(backend);
  for await (const client of Deno.listen({ hostname: l.hostname, port: l.port })) {
    (async () => {
      const up = await Deno.connect({ hostname: b.hostname, port: b.port });
      client.setNoDelay(true);
      up.setNoDelay(true);
      const ids = new StreamIds();
      await Promise.all(
        hpack
          ? [relayHpack(client, up, client, ids, true), relayHpack(up, client, up, ids, false)]
          : [relay(client, up, ids, true), relay(up, client, ids, false)],
      );
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
      "usage: h2_forwarders.ts node-http2|deno-serve|frame-relay|frame-hpack --listen HOST:PORT --backend HOST:PORT",
    );
    Deno.exit(2);
  }
  if (mode === "node-http2") nodeHttp2(listen, backend);
  else if (mode === "deno-serve") denoServe(listen, backend);
  else if (mode === "frame-relay") await frameRelay(listen, backend, false);
  else if (mode === "frame-hpack") {
    ROUTES.set(opt("--authority") ?? "grpc.default.mesh", backend);
    await frameRelay(listen, backend, true);
  } else {
    console.error(`unknown mode ${mode}: node-http2, deno-serve, frame-relay or frame-hpack`);
    Deno.exit(2);
  }
}
