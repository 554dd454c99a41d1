/**
 * The environment of the hostile-load cases: meshd as a process of its own with the file
 * provider, an open-file limit lowered with `prlimit` so that an attack is cheap, small caps
 * set by flags, and backends in the test process that count their connections. Helpers read
 * meshd's file descriptors and RSS from `/proc`, its `meshd_dropped_total` from `/metrics`,
 * and send the requests of clients that are not attacking.
 *
 * Addresses: meshd and backends in 127.0.50.0/24, attackers in 127.0.51.0/24.
 *
 * @module
 */
import net from "node:net";
import { type Child, freePort, waitFor, waitForPort } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";

/** The source address attackers bind. */
export const ATTACKER = "127.0.51.1";
/** The source address of the clients that are not attacking. */
export const BYSTANDER = "127.0.50.250";

/** A Service of namespace `hl`, with annotations, on one port. */
export function service(
  name: string,
  port: number,
  opts: { protocol?: "TCP" | "UDP"; annotations?: Record<string, string> } = {},
): string {
  const ann = Object.entries(opts.annotations ?? {}).map(([k, v]) => `"${k}": "${v}"`);
  return `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: hl${
    ann.length ? `, annotations: { ${ann.join(", ")} }` : ""
  } }
spec: { ports: [{ name: p, port: ${port}, protocol: ${opts.protocol ?? "TCP"} }] }
`;
}

/** An EndpointSlice of Service `svc` with one ready endpoint. */
export function slice(svc: string, ip: string, port: number, protocol = "TCP"): string {
  return `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: ${svc}-a, namespace: hl, labels: { kubernetes.io/service-name: ${svc} } }
addressType: IPv4
ports: [{ name: p, port: ${port}, protocol: ${protocol} }]
endpoints:
  - addresses: ["${ip}"]
    conditions: { ready: true }
`;
}

/** A meshd process and where to reach it. */
export interface Meshd {
  child: Child;
  dir: string;
  address: string;
  http: number;
  api: number;
  /** The TCP and UDP listener ports (one each: `--tcp-ports` and `--udp-ports` are one port). */
  tcp: number;
  udp: number;
}

/** Options for {@linkcode startMeshd}. */
export interface MeshdOptions {
  /** The address meshd listens on. */
  address: string;
  /** Open-file limit, soft and hard, set with prlimit. */
  nofile: number;
  /** Extra flags. */
  flags?: string[];
  /** Lets meshd use FFI (`--l4-worker`'s event loop). */
  ffi?: boolean;
  /**
   * Environment, such as `MESHD_MAX_CONNECTIONS`: flags set this way are ignored by a meshd
   * that does not know them, so a case run against one without the fix fails on what it
   * checks, not on an unknown flag.
   */
  env?: Record<string, string>;
  /** The config: YAML documents, given meshd's own ports (for loop cases). */
  config: (ports: { http: number; tcp: number; udp: number }) => string[];
  /** Wait until `/api/services` lists this many service ports. */
  services: number;
  /** The HTTP entrypoint port, when it must be known before (a free one by default). */
  http?: number;
}

/** Starts meshd under `prlimit --nofile`, and waits until it serves every service port. */
export async function startMeshd(o: MeshdOptions): Promise<Meshd> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-hostile-" });
  const http = o.http ?? freePort(o.address);
  const api = freePort(o.address);
  const tcp = freePort(o.address);
  const udp = freePort(o.address);
  await Deno.writeTextFile(`${dir}/mesh.yaml`, o.config({ http, tcp, udp }).join("---\n"));
  const child = spawnMeshd([
    "--config-dir",
    dir,
    "--proxy-address",
    o.address,
    "--http-port",
    String(http),
    "--api-address",
    o.address,
    "--api-port",
    String(api),
    "--tcp-ports",
    `${tcp}-${tcp}`,
    "--udp-ports",
    `${udp}-${udp}`,
    "--datapath",
    "userspace",
    ...(o.flags ?? []),
  ], {
    deno: ["--allow-net", "--allow-read", "--allow-env", ...(o.ffi ? ["--allow-ffi"] : [])],
    wrap: ["prlimit", `--nofile=${o.nofile}:${o.nofile}`],
    env: o.env,
  });
  const m: Meshd = { child, dir, address: o.address, http, api, tcp, udp };
  try {
    await waitFor(
      `meshd to serve ${o.services} service ports`,
      async () => {
        const r = await fetch(`http://${o.address}:${api}/api/services`);
        const list = await r.json() as unknown[];
        return r.status === 200 && list.length >= o.services ? true : undefined;
      },
      30_000,
      50,
    );
    await waitForPort(o.address, http);
  } catch (e) {
    await stopMeshd(m);
    throw new Error(`${(e as Error).message}\nmeshd said:\n${child.lines.slice(-20).join("\n")}`);
  }
  return m;
}

/** Stops meshd (by PID) and removes its config directory. */
export async function stopMeshd(m: Meshd): Promise<void> {
  await m.child.stop();
  await Deno.remove(m.dir, { recursive: true }).catch(() => {});
}

/** Whether meshd's process still runs. */
export function alive(m: Meshd): boolean {
  try {
    Deno.statSync(`/proc/${m.child.pid}/status`);
    return true;
  } catch {
    return false;
  }
}

/** meshd's open file descriptors and RSS in MiB, from /proc. */
export function procStats(m: Meshd): { fds: number; rssMiB: number } {
  try {
    let fds = 0;
    for (const _ of Deno.readDirSync(`/proc/${m.child.pid}/fd`)) fds++;
    const status = Deno.readTextFileSync(`/proc/${m.child.pid}/status`);
    const kb = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
    return { fds, rssMiB: Math.round(kb / 102.4) / 10 };
  } catch {
    return { fds: -1, rssMiB: -1 };
  }
}

/** `meshd_dropped_total` by reason, from meshd's /metrics. */
export async function drops(m: Meshd): Promise<Record<string, number>> {
  const r = await fetch(`http://${m.address}:${m.api}/metrics`);
  const text = await r.text();
  const out: Record<string, number> = {};
  for (const [, reason, n] of text.matchAll(/^meshd_dropped_total\{reason="([^"]+)"\} (\S+)$/gm)) {
    out[reason!] = Number(n);
  }
  return out;
}

/** A metric's value summed over its series whose labels contain `labels`, from /metrics. */
export async function metric(m: Meshd, name: string, labels = ""): Promise<number> {
  const text = await (await fetch(`http://${m.address}:${m.api}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + "{") && !line.startsWith(name + " ")) continue;
    if (labels && !line.includes(labels)) continue;
    sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

/**
 * One HTTP/1.1 request with `Connection: close` from `source`; the status, or 0 when the
 * connection failed or no answer came within `timeoutMs`.
 */
export function httpStatus(
  m: Meshd,
  host: string,
  opts: { source?: string; path?: string; timeoutMs?: number; port?: number } = {},
): Promise<number> {
  return new Promise((resolve) => {
    const socket = net.connect({
      host: m.address,
      port: opts.port ?? m.http,
      localAddress: opts.source ?? BYSTANDER,
    });
    let data = "";
    const timer = setTimeout(() => finish(), opts.timeoutMs ?? 5000);
    const finish = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(Number(/^HTTP\/1\.[01] (\d{3})/.exec(data)?.[1] ?? 0));
    };
    socket.setEncoding("latin1");
    socket.on("data", (c: string) => {
      data += c;
      if (data.length > 64) finish();
    });
    socket.on("error", finish);
    socket.on("close", finish);
    socket.write(`GET ${opts.path ?? "/"} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  });
}

/** Opens `n` TCP connections from `source` to `port` that send nothing; closes them all. */
export async function idleConnections(
  address: string,
  port: number,
  n: number,
  source = ATTACKER,
): Promise<{ opened: number; ended: () => number; close: () => void }> {
  const sockets: net.Socket[] = [];
  let opened = 0;
  let ended = 0;
  await Promise.all(Array.from({ length: n }, () =>
    new Promise<void>((resolve) => {
      const s = net.connect({ host: address, port, localAddress: source });
      sockets.push(s);
      s.on("end", () => ended++); // the server closed it
      const timer = setTimeout(resolve, 5000);
      s.on("connect", () => {
        opened++;
        clearTimeout(timer);
        resolve();
      });
      s.on("error", () => {
        clearTimeout(timer);
        resolve();
      });
    })));
  return { opened, ended: () => ended, close: () => sockets.forEach((s) => s.destroy()) };
}

/**
 * An HTTP backend in the test process that counts its open connections and answers every
 * request: `/big` with `bigBytes` of body, written as fast as the reader takes it; anything
 * else with 200 "ok".
 */
export class CountingBackend {
  /** Connections open now. */
  open = 0;
  /** Connections accepted so far. */
  accepted = 0;
  /** Connections open now that were asked for `/big` (pooled others may stay open). */
  bigOpen = 0;
  /** Downloads of `/big` started so far. */
  bigStarted = 0;
  readonly #listener: Deno.TcpListener;
  readonly #conns = new Set<Deno.Conn>();
  readonly #done: Promise<void>;
  readonly #bigBytes: number;

  constructor(hostname: string, bigBytes = 32 << 20) {
    this.#bigBytes = bigBytes;
    this.#listener = Deno.listen({ hostname, port: 0 });
    this.#done = this.#accept();
  }

  get port(): number {
    return (this.#listener.addr as Deno.NetAddr).port;
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
    for (;;) {
      let c: Deno.Conn;
      try {
        c = await this.#listener.accept();
      } catch {
        return;
      }
      this.accepted++;
      this.open++;
      this.#conns.add(c);
      const big = { asked: false };
      this.#serve(c, big).catch(() => {}).finally(() => {
        this.open--;
        if (big.asked) this.bigOpen--;
        this.#conns.delete(c);
        try {
          c.close();
        } catch { /* closed */ }
      });
    }
  }

  async #serve(c: Deno.Conn, big: { asked: boolean }): Promise<void> {
    const buf = new Uint8Array(16 * 1024);
    const enc = new TextEncoder();
    let head = "";
    for (;;) {
      const n = await c.read(buf);
      if (n === null) return;
      head += new TextDecoder("latin1").decode(buf.subarray(0, n));
      while (head.includes("\r\n\r\n")) {
        const end = head.indexOf("\r\n\r\n");
        const line = head.slice(0, head.indexOf("\r\n"));
        head = head.slice(end + 4);
        if (line.includes(" /big ")) {
          if (!big.asked) this.bigOpen++;
          big.asked = true;
          this.bigStarted++;
          await writeAll(
            c,
            enc.encode(`HTTP/1.1 200 OK\r\ncontent-length: ${this.#bigBytes}\r\n\r\n`),
          );
          const chunk = new Uint8Array(64 * 1024).fill(120);
          for (let left = this.#bigBytes; left > 0; left -= chunk.length) {
            await writeAll(c, chunk.subarray(0, Math.min(left, chunk.length)));
          }
        } else {
          await writeAll(c, enc.encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
        }
      }
    }
  }
}

async function writeAll(c: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await c.write(data.subarray(off));
}

/** A UDP echo backend in the test process. */
export class UdpEcho {
  readonly #socket: Deno.DatagramConn;
  readonly #done: Promise<void>;

  constructor(hostname: string) {
    this.#socket = Deno.listenDatagram({ transport: "udp", hostname, port: 0 });
    this.#done = this.#run();
  }

  async #run(): Promise<void> {
    for (;;) {
      try {
        const [data, from] = await this.#socket.receive();
        await this.#socket.send(data, from);
      } catch {
        return;
      }
    }
  }

  get port(): number {
    return (this.#socket.addr as Deno.NetAddr).port;
  }

  async close(): Promise<void> {
    this.#socket.close();
    await this.#done;
  }
}

/** A TCP echo backend in the test process. */
export class TcpEcho {
  readonly #listener: Deno.TcpListener;
  readonly #conns = new Set<Deno.Conn>();
  readonly #done: Promise<void>;

  constructor(hostname: string) {
    this.#listener = Deno.listen({ hostname, port: 0 });
    this.#done = this.#run();
  }

  async #run(): Promise<void> {
    for (;;) {
      let c: Deno.Conn;
      try {
        c = await this.#listener.accept();
      } catch {
        return;
      }
      this.#conns.add(c);
      (async () => {
        const buf = new Uint8Array(4096);
        for (;;) {
          const n = await c.read(buf);
          if (n === null) break;
          await writeAll(c, buf.subarray(0, n));
        }
      })().catch(() => {}).finally(() => {
        this.#conns.delete(c);
        try {
          c.close();
        } catch { /* closed */ }
      });
    }
  }

  get port(): number {
    return (this.#listener.addr as Deno.NetAddr).port;
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
}

/** One TCP round trip through `port` from a bystander: true when the echo came back. */
export function tcpEchoes(address: string, port: number, timeoutMs = 5000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: address, port, localAddress: BYSTANDER });
    const timer = setTimeout(() => done(false), timeoutMs);
    let got = "";
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    s.setEncoding("latin1");
    s.on("connect", () => s.write("ping"));
    s.on("data", (c: string) => {
      got += c;
      if (got === "ping") done(true);
    });
    s.on("error", () => done(false));
    s.on("close", () => done(got === "ping"));
  });
}

/** A UDP client socket with one receive loop, for round trips through meshd. */
export class UdpClient {
  readonly socket: Deno.DatagramConn;
  readonly #seen = new Set<string>();
  readonly #done: Promise<void>;

  constructor(hostname: string) {
    this.socket = Deno.listenDatagram({ transport: "udp", hostname, port: 0 });
    this.#done = this.#run();
  }

  async #run(): Promise<void> {
    for (;;) {
      try {
        const [d] = await this.socket.receive();
        this.#seen.add(new TextDecoder().decode(d));
      } catch {
        return;
      }
    }
  }

  /** Sends a token through `port`: true when it came back within `timeoutMs`. */
  async echoes(address: string, port: number, timeoutMs = 2000): Promise<boolean> {
    const token = crypto.randomUUID();
    await this.socket.send(new TextEncoder().encode(token), {
      transport: "udp",
      hostname: address,
      port,
    });
    const deadline = performance.now() + timeoutMs;
    while (performance.now() < deadline) {
      if (this.#seen.delete(token)) return true;
      await new Promise((r) => setTimeout(r, 10));
    }
    return false;
  }

  async close(): Promise<void> {
    this.socket.close();
    await this.#done;
  }
}

/** Lines meshd logged that match `re`. */
export function logLines(m: Meshd, re: RegExp): number {
  return m.child.lines.filter((l) => re.test(l)).length;
}

/**
 * Sends `text` on a TCP connection from `from` to `port` of `m`; resolves with what came back
 * before the close (or after 10 s).
 */
export function tcpExchange(m: Meshd, port: number, from: string, text: string): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host: m.address, port, localAddress: from });
    let got = "";
    const timer = setTimeout(() => done(), 10_000);
    const done = () => {
      clearTimeout(timer);
      s.destroy();
      resolve(got);
    };
    s.setEncoding("latin1");
    s.on("connect", () => s.write(text));
    s.on("data", (c: string) => got += c);
    s.on("error", done);
    s.on("close", done);
  });
}
