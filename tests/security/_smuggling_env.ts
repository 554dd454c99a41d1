/**
 * The environment of the request-smuggling tier: meshd with the file provider and access
 * control on, one Service (`web.default.mesh`) whose only endpoint is a raw TCP backend of the
 * test's own that records every byte it receives, and helpers that send raw bytes from a Pod's
 * address and read what meshd answers.
 *
 * The backend parses requests leniently, as many real servers do (a bare LF ends a line; any
 * Transfer-Encoding that mentions chunked is chunked), so a request meshd lets through in a
 * form a backend may read differently shows up as an extra request in its log.
 *
 * @module
 */
import http2 from "node:http2";
import net from "node:net";
import { type Child, freePort, waitFor } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";

/** ServiceAccount default/client: allowed `/public` and `/x`, nothing else. */
export const CLIENT_POD = "127.0.40.1";
/** A second client of the same ServiceAccount, for the victim-connection checks. */
export const VICTIM_POD = "127.0.40.2";
/** The backend Pod (ServiceAccount default/web). */
export const BACKEND_POD = "127.0.40.10";
/** The h2c backend Pod (ServiceAccount default/web too). */
export const H2_BACKEND_POD = "127.0.40.11";
/** The Host every case names. */
export const HOST = "web.default.mesh";
/** The authority of the service with scheme h2c. */
export const H2_HOST = "grpc.default.mesh";

const latin1 = new TextDecoder("latin1");

/** Encodes a string whose characters are all below U+0100 byte for byte. */
export function bytes(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
}

/** One request as the lenient backend read it. */
export interface SeenRequest {
  conn: number;
  line: string;
  headers: [string, string][];
  body: string;
}

/**
 * A raw TCP backend: records every byte per connection, reads requests leniently and answers
 * each with 200 and its request line as the body. `Upgrade: h2c`, and `Upgrade: websocket`
 * with a `Sec-WebSocket-Key`, get 101 and the rest of the connection is recorded as a tunnel;
 * a WebSocket upgrade without a key gets 426.
 */
export class RecordingBackend {
  readonly requests: SeenRequest[] = [];
  /** Every byte received, per connection, in arrival order. */
  readonly raw: string[] = [];
  readonly #listener: Deno.TcpListener;
  readonly #conns = new Set<Deno.Conn>();
  readonly #done: Promise<void>;

  constructor(hostname: string) {
    this.#listener = Deno.listen({ hostname, port: 0 });
    this.#done = this.#accept();
  }

  get port(): number {
    return (this.#listener.addr as Deno.NetAddr).port;
  }

  /** All bytes received on every connection, joined. */
  allRaw(): string {
    return this.raw.join("");
  }

  async close(): Promise<void> {
    this.#listener.close();
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await this.#done;
  }

  async #accept(): Promise<void> {
    const serving: Promise<void>[] = [];
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch {
        break;
      }
      this.#conns.add(conn);
      serving.push(
        this.#serve(conn).finally(() => {
          this.#conns.delete(conn);
          try {
            conn.close();
          } catch { /* closed */ }
        }),
      );
    }
    await Promise.allSettled(serving);
  }

  async #serve(conn: Deno.Conn): Promise<void> {
    const id = this.raw.length;
    this.raw.push("");
    let buf = "";
    let tunnel = false;
    const chunk = new Uint8Array(64 * 1024);
    for (;;) {
      let n: number | null;
      try {
        n = await conn.read(chunk);
      } catch {
        return;
      }
      if (n === null) return;
      const got = latin1.decode(chunk.subarray(0, n));
      this.raw[id] += got;
      if (tunnel) {
        // Raw bytes past a 101: recorded; the connection ends once a head-like block arrived.
        buf += got;
        if (/\n\r?\n/.test(buf)) return;
        continue;
      }
      buf += got;
      for (;;) {
        const parsed = parseLenient(buf);
        if (parsed === "incomplete") break;
        if (parsed === "bad") {
          this.requests.push({
            conn: id,
            line: `<unparsable ${JSON.stringify(buf.slice(0, 60))}>`,
            headers: [],
            body: "",
          });
          return;
        }
        const { req, rest } = parsed;
        buf = rest;
        this.requests.push({ conn: id, ...req });
        const upgrade = header(req.headers, "upgrade")?.toLowerCase() ?? "";
        const connection = header(req.headers, "connection")?.toLowerCase() ?? "";
        if (connection.includes("upgrade") && upgrade.includes("h2c")) {
          await write(
            conn,
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
          );
          tunnel = true;
        } else if (connection.includes("upgrade") && upgrade.includes("websocket")) {
          if (header(req.headers, "sec-websocket-key") !== null) {
            await write(
              conn,
              "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            );
            tunnel = true;
          } else {
            await respond(conn, 426, `${req.line} (no Sec-WebSocket-Key)`);
          }
        } else {
          await respond(conn, 200, req.line);
        }
        if (tunnel) {
          if (/\n\r?\n/.test(buf)) return;
          break;
        }
      }
    }
  }
}

function header(h: [string, string][], name: string): string | null {
  const v = h.filter(([k]) => k.toLowerCase() === name).map(([, v]) => v);
  return v.length === 0 ? null : v.join(", ");
}

async function write(conn: Deno.Conn, s: string): Promise<void> {
  let data = bytes(s);
  try {
    while (data.length > 0) data = data.subarray(await conn.write(data));
  } catch { /* the proxy went away */ }
}

function respond(conn: Deno.Conn, status: number, body: string): Promise<void> {
  return write(
    conn,
    `HTTP/1.1 ${status} X\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
  );
}

/** Reads one request the way a lenient server does, or says it needs more bytes. */
function parseLenient(
  buf: string,
): { req: Omit<SeenRequest, "conn">; rest: string } | "incomplete" | "bad" {
  // Empty lines before a request are skipped.
  let at = 0;
  while (buf.startsWith("\r\n", at) || buf.startsWith("\n", at)) at += buf[at] === "\r" ? 2 : 1;
  const lines: string[] = [];
  for (;;) {
    const lf = buf.indexOf("\n", at);
    if (lf < 0) return "incomplete";
    const line = buf.slice(at, lf).replace(/\r$/, "");
    at = lf + 1;
    if (line === "") break;
    lines.push(line);
  }
  const [line, ...fields] = lines;
  if (!line || !/^\S+ \S+ HTTP\/\d\.\d$/.test(line)) return "bad";
  const headers: [string, string][] = [];
  for (const f of fields) {
    const colon = f.indexOf(":");
    if (colon <= 0) continue;
    headers.push([f.slice(0, colon).trim(), f.slice(colon + 1).trim()]);
  }
  const te = header(headers, "transfer-encoding")?.toLowerCase() ?? "";
  const cl = header(headers, "content-length");
  let body = "";
  if (te.includes("chunked")) {
    for (;;) {
      const lf = buf.indexOf("\n", at);
      if (lf < 0) return "incomplete";
      const size = parseInt(buf.slice(at, lf), 16);
      if (Number.isNaN(size)) return "bad";
      at = lf + 1;
      if (size === 0) {
        // Trailers up to the empty line.
        for (;;) {
          const end = buf.indexOf("\n", at);
          if (end < 0) return "incomplete";
          const t = buf.slice(at, end).replace(/\r$/, "");
          at = end + 1;
          if (t === "") break;
        }
        break;
      }
      if (buf.length < at + size) return "incomplete";
      body += buf.slice(at, at + size);
      at += size;
      const lf2 = buf.indexOf("\n", at);
      if (lf2 < 0) return "incomplete";
      at = lf2 + 1;
    }
  } else if (cl !== null) {
    const n = parseInt(cl, 10);
    if (Number.isNaN(n)) return "bad";
    if (buf.length < at + n) return "incomplete";
    body = buf.slice(at, at + n);
    at += n;
  }
  return { req: { line, headers, body }, rest: buf.slice(at) };
}

/** One response as the client read it. */
export interface Answer {
  status: number;
  headers: [string, string][];
  body: string;
}

/** What a client connection saw. */
export interface Exchange {
  answers: Answer[];
  /** meshd closed the connection. */
  closed: boolean;
  /** The deadline passed first. */
  timedOut: boolean;
  raw: string;
}

/** Options for {@linkcode send}. */
export interface SendOptions {
  /** Stop once this many complete responses are read (default 1). */
  responses?: number;
  /** Give up waiting after this long (default 8 s). */
  deadlineMs?: number;
  /** Sent after the first response is read (for upgrade cases). */
  then?: string;
  /** Read until meshd closes, even after enough responses. */
  untilClose?: boolean;
}

/** Sends `data` in one write from `source` to meshd and reads the answers. */
export function send(
  source: string,
  port: number,
  data: string,
  opts: SendOptions = {},
): Promise<Exchange> {
  const want = opts.responses ?? 1;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress: source });
    let raw = "";
    let answers: Answer[] = [];
    let sentThen = false;
    let settled = false;
    const finish = (closed: boolean, timedOut: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ answers, closed, timedOut, raw });
    };
    const timer = setTimeout(() => finish(false, true), opts.deadlineMs ?? 8000);
    socket.on("error", (e) => {
      if (settled) return;
      if (raw.length > 0 || (e as { code?: string }).code === "ECONNRESET") finish(true, false);
      else {
        settled = true;
        clearTimeout(timer);
        reject(e);
      }
    });
    socket.on("data", (c: Uint8Array) => {
      raw += latin1.decode(c);
      answers = parseAnswers(raw);
      if (opts.then !== undefined && !sentThen && answers.length >= 1) {
        sentThen = true;
        socket.write(bytes(opts.then));
      }
      if (!opts.untilClose && answers.length >= want) finish(false, false);
    });
    socket.on("end", () => finish(true, false));
    socket.on("close", () => finish(true, false));
    socket.write(bytes(data));
  });
}

/** The complete responses in `raw` (Content-Length or no body). */
function parseAnswers(raw: string): Answer[] {
  const out: Answer[] = [];
  let at = 0;
  for (;;) {
    const end = raw.indexOf("\r\n\r\n", at);
    if (end < 0) return out;
    const [line, ...fields] = raw.slice(at, end).split("\r\n");
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(line ?? "")?.[1] ?? 0);
    const headers = fields.map((f): [string, string] => {
      const colon = f.indexOf(":");
      return [f.slice(0, colon).toLowerCase(), f.slice(colon + 1).trim()];
    });
    const cl = headers.find(([k]) => k === "content-length")?.[1];
    const length = status === 101 || status === 204 || cl === undefined ? 0 : Number(cl);
    if (raw.length < end + 4 + length) return out;
    out.push({ status, headers, body: raw.slice(end + 4, end + 4 + length) });
    at = end + 4 + length;
    if (status === 101) return out;
  }
}

const ACCESS = `apiVersion: specs.smi-spec.io/v1alpha3
kind: HTTPRouteGroup
metadata: { name: web-routes, namespace: default }
spec:
  matches:
    - { name: public, methods: ["*"], pathRegex: "/public(/.*)?" }
    - { name: x, methods: ["*"], pathRegex: "/x" }
---
apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata: { name: client-to-web, namespace: default }
spec:
  destination: { kind: ServiceAccount, name: web, namespace: default }
  rules: [{ kind: HTTPRouteGroup, name: web-routes, matches: [public, x] }]
  sources: [{ kind: ServiceAccount, name: client, namespace: default }]
`;

function mesh(backendPort: number, h2Port: number): string {
  const pod = (name: string, ip: string, sa: string) =>
    `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: default }
spec: { serviceAccountName: ${sa}, nodeName: local }
status: { phase: Running, podIP: ${ip} }
`;
  return [
    pod("client-0", CLIENT_POD, "client"),
    pod("victim-0", VICTIM_POD, "client"),
    pod("web-0", BACKEND_POD, "web"),
    pod("grpc-0", H2_BACKEND_POD, "web"),
    `apiVersion: v1
kind: Service
metadata: { name: grpc, namespace: default, annotations: { "meshd.io/scheme": h2c } }
spec: { ports: [{ name: http, port: 80, protocol: TCP }] }
`,
    `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: grpc-a, namespace: default, labels: { kubernetes.io/service-name: grpc } }
addressType: IPv4
ports: [{ name: http, port: ${h2Port}, protocol: TCP }]
endpoints:
  - addresses: ["${H2_BACKEND_POD}"]
    conditions: { ready: true }
    targetRef: { kind: Pod, name: grpc-0 }
`,
    `apiVersion: v1
kind: Service
metadata: { name: web, namespace: default }
spec: { ports: [{ name: http, port: 80, protocol: TCP }] }
`,
    `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-a, namespace: default, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ name: http, port: ${backendPort}, protocol: TCP }]
endpoints:
  - addresses: ["${BACKEND_POD}"]
    conditions: { ready: true }
    targetRef: { kind: Pod, name: web-0 }
`,
  ].join("---\n");
}

/** A running meshd with the recording backend behind `web.default.mesh`. */
export interface SmugglingEnv {
  http: number;
  backend: RecordingBackend;
  h2: H2Backend;
  meshd: Child;
  stop(): Promise<void>;
}

/** Starts the backend and meshd (ACL on), and waits until meshd routes to the backend. */
export async function startEnv(): Promise<SmugglingEnv> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-smuggling-" });
  const backend = new RecordingBackend(BACKEND_POD);
  let h2: H2Backend | undefined;
  let meshd: Child | undefined;
  const stop = async (): Promise<void> => {
    await meshd?.stop();
    await backend.close();
    await h2?.close();
    await Deno.remove(dir, { recursive: true });
  };
  try {
    h2 = await startH2Backend(H2_BACKEND_POD);
    await Deno.writeTextFile(`${dir}/mesh.yaml`, mesh(backend.port, h2.port));
    await Deno.writeTextFile(`${dir}/access.yaml`, ACCESS);
    const http = freePort();
    const api = freePort();
    const tcp = freePort();
    const udp = freePort();
    meshd = spawnMeshd([
      "--config-dir",
      dir,
      "--http-port",
      String(http),
      "--api-port",
      String(api),
      "--tcp-ports",
      `${tcp}-${tcp}`,
      "--udp-ports",
      `${udp}-${udp}`,
      "--acl=true",
      // Bounds today's hang on a request body that never ends (a 504 after this long).
      "--response-timeout",
      "5s",
      "--log-format",
      "json",
    ]);
    await waitFor(
      "meshd to route to the recording backend",
      async () => {
        const r = await send(
          CLIENT_POD,
          http,
          `GET /public/ready HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`,
          { deadlineMs: 2000 },
        );
        return r.answers[0]?.status === 200 ? true : undefined;
      },
      30_000,
      100,
    );
    const h2Ready = h2;
    await waitFor(
      "meshd to route to the h2c backend",
      async () => {
        const r = await h2Request(CLIENT_POD, http, [
          [":method", "GET"],
          [":scheme", "http"],
          [":path", "/public/ready"],
          [":authority", H2_HOST],
        ], 2000);
        return r.status === 200 && h2Ready.seen.length > 0 ? true : undefined;
      },
      30_000,
      100,
    );
    return { http, backend, h2: h2Ready, meshd, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** An h2c backend that records the headers of every stream and answers 200. */
export interface H2Backend {
  port: number;
  seen: http2.IncomingHttpHeaders[];
  close(): Promise<void>;
}

function startH2Backend(hostname: string): Promise<H2Backend> {
  const server = http2.createServer();
  const open = new Set<http2.ServerHttp2Session>();
  const b: H2Backend = {
    port: 0,
    seen: [],
    close: () =>
      new Promise((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      }),
  };
  server.on("session", (s) => {
    open.add(s);
    s.on("close", () => open.delete(s));
  });
  server.on("stream", (stream: http2.ServerHttp2Stream, headers) => {
    b.seen.push(headers);
    stream.on("error", () => {});
    stream.respond({ ":status": 200, "content-type": "text/plain" });
    stream.end(String(headers[":path"]));
  });
  return new Promise((resolve) => {
    server.listen(0, hostname, () => {
      b.port = (server.address() as { port: number }).port;
      resolve(b);
    });
  });
}

/** What a raw HTTP/2 request got back on stream 1. */
export interface H2Outcome {
  /** The response's :status, 0 if none came. */
  status: number;
  /** The RST_STREAM error code on stream 1, or the GOAWAY code, or -1. */
  reset: number;
  goaway: number;
}

/** An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1). */
function hpackInt(value: number, n: number, first: number): number[] {
  const max = (1 << n) - 1;
  if (value < max) return [first | value];
  const out = [first | max];
  value -= max;
  while (value >= 128) {
    out.push((value % 128) + 128);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return out;
}

/**
 * One header block of literal fields without indexing or Huffman coding (RFC 7541 §6.2.2), so
 * names and values go on the wire exactly as given: upper case, CR, LF and NUL included.
 */
export function hpackBlock(fields: [string, string][]): Uint8Array {
  const out: number[] = [];
  for (const [name, value] of fields) {
    out.push(0x00);
    out.push(...hpackInt(name.length, 7, 0), ...bytes(name));
    out.push(...hpackInt(value.length, 7, 0), ...bytes(value));
  }
  return new Uint8Array(out);
}

function frame(type: number, flags: number, stream: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(9 + payload.length);
  out[0] = (payload.length >> 16) & 0xff;
  out[1] = (payload.length >> 8) & 0xff;
  out[2] = payload.length & 0xff;
  out[3] = type;
  out[4] = flags;
  new DataView(out.buffer).setUint32(5, stream);
  out.set(payload, 9);
  return out;
}

/** The status in a response header block, read from its first field (static table or digits). */
function statusOf(block: Uint8Array): number {
  const b0 = block[0] ?? 0;
  // Indexed fields 8-14 of the static table are :status 200, 204, 206, 304, 400, 404, 500.
  const indexed: Record<number, number> = {
    8: 200,
    9: 204,
    10: 206,
    11: 304,
    12: 400,
    13: 404,
    14: 500,
  };
  if (b0 & 0x80) return indexed[b0 & 0x7f] ?? 0;
  // A literal with the name :status (index 8), its value plain or Huffman-coded digits.
  const nameIndex = b0 & 0x40 ? b0 & 0x3f : b0 & 0x0f;
  if (nameIndex < 8 || nameIndex > 14) return 0;
  const lenByte = block[1] ?? 0;
  const len = lenByte & 0x7f;
  const value = block.subarray(2, 2 + len);
  if (!(lenByte & 0x80)) return Number(latin1.decode(value));
  // Huffman codes of the digits (RFC 7541 Appendix B): 0-2 in 5 bits, 3-9 in 6 bits.
  let bits = "";
  for (const v of value) bits += v.toString(2).padStart(8, "0");
  let digits = "";
  for (let at = 0; at + 5 <= bits.length;) {
    const five = parseInt(bits.slice(at, at + 5), 2);
    if (five <= 2) {
      digits += String(five);
      at += 5;
      continue;
    }
    if (at + 6 > bits.length) break;
    const six = parseInt(bits.slice(at, at + 6), 2);
    if (six >= 0b011001 && six <= 0b011111) {
      digits += String(six - 0b011001 + 3);
      at += 6;
      continue;
    }
    break;
  }
  return Number(digits);
}

/**
 * Sends one HTTP/2 request with prior knowledge from `source`, its header block written byte
 * for byte, and reports how stream 1 ended.
 */
export function h2Request(
  source: string,
  port: number,
  fields: [string, string][],
  deadlineMs = 8000,
): Promise<H2Outcome> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress: source });
    let buf = new Uint8Array(0);
    const outcome: H2Outcome = { status: 0, reset: -1, goaway: -1 };
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(finish, deadlineMs);
    socket.on("error", (e) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(e);
    });
    socket.on("close", finish);
    socket.on("data", (c: Uint8Array) => {
      const next = new Uint8Array(buf.length + c.length);
      next.set(buf);
      next.set(c, buf.length);
      buf = next;
      while (buf.length >= 9) {
        const len = (buf[0]! << 16) | (buf[1]! << 8) | buf[2]!;
        if (buf.length < 9 + len) break;
        const type = buf[3]!;
        const flags = buf[4]!;
        const stream = new DataView(buf.buffer, buf.byteOffset).getUint32(5) & 0x7fffffff;
        const payload = buf.subarray(9, 9 + len);
        buf = buf.slice(9 + len);
        const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
        if (type === 4 && !(flags & 1)) socket.write(frame(4, 1, 0, new Uint8Array(0)));
        if (type === 1 && stream === 1) {
          const padLength = flags & 0x8 ? payload[0]! : 0;
          const start = (flags & 0x8 ? 1 : 0) + (flags & 0x20 ? 5 : 0);
          outcome.status = statusOf(payload.subarray(start, len - padLength));
          if (flags & 1) finish();
        }
        if (type === 0 && stream === 1 && flags & 1) finish();
        if (type === 3 && stream === 1) {
          outcome.reset = view.getUint32(0);
          finish();
        }
        if (type === 7) {
          outcome.goaway = view.getUint32(4);
          finish();
        }
      }
    });
    const block = hpackBlock(fields);
    const preface = bytes("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    const settings = frame(4, 0, 0, new Uint8Array(0));
    const headers = frame(1, 0x5, 1, block); // END_STREAM | END_HEADERS
    const all = new Uint8Array(preface.length + settings.length + headers.length);
    all.set(preface);
    all.set(settings, preface.length);
    all.set(headers, preface.length + settings.length);
    socket.write(all);
  });
}
