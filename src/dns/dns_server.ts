import type { Counter, Logger, Registry } from "../observability/mod.ts";
import {
  DnsFormatError,
  type DnsQuery,
  type DnsResponse,
  encodeResponse,
  nameToString,
  parseQuery,
  RCODE,
  rcodeName,
} from "./dns_message.ts";
import { EDNS_UDP_SIZE, type MeshZone } from "./mesh_zone.ts";

/** Options for {@linkcode DnsServer}. */
export interface DnsServerOptions {
  hostname: string;
  /** UDP and TCP port; 0 picks a free one for both. */
  port: number;
  /**
   * Binds UDP with SO_REUSEADDR and TCP with SO_REUSEPORT, so a successor meshd binds the port
   * before this one leaves (on Linux the UDP socket bound last receives the new queries).
   */
  reusePort?: boolean;
  zone: MeshZone;
  logger: Logger;
  /** Where `meshd_dns_queries_total` goes. */
  registry?: Registry;
  /** A TCP connection with no query for this long is closed; default 10 s. */
  tcpIdleTimeoutMs?: number;
}

/**
 * Serves a {@linkcode MeshZone} over UDP and TCP on one port. A UDP answer fits the client's
 * EDNS payload size (512 bytes without EDNS, at most 1232) or comes back truncated, and TCP
 * (two-byte length prefix, RFC 1035 4.2.2; several queries per connection, RFC 7766) gives the
 * whole answer. A message without a readable header is dropped; any other bad query gets
 * FORMERR.
 */
export class DnsServer {
  readonly #opts: DnsServerOptions;
  #udp: Deno.DatagramConn | null = null;
  #tcp: Deno.Listener | null = null;
  #tasks: Promise<void>[] = [];
  #conns = new Set<Deno.Conn>();
  #queries: Counter | null = null;
  #stopping = false;

  constructor(options: DnsServerOptions) {
    this.#opts = options;
    this.#queries = options.registry?.counter(
      "meshd_dns_queries_total",
      "DNS queries answered by the mesh DNS responder, by transport and response code",
      ["transport", "rcode"],
    ) ?? null;
  }

  /** The port both transports listen on. */
  get port(): number {
    return (this.#udp?.addr as Deno.NetAddr | undefined)?.port ?? 0;
  }

  /** Binds UDP, then TCP on the same port (trying again when port 0 picked one TCP has). */
  start(): void {
    const { hostname, port } = this.#opts;
    for (let attempt = 0;; attempt++) {
      const reuse = this.#opts.reusePort === true;
      const udp = Deno.listenDatagram({
        transport: "udp",
        hostname,
        port,
        ...(reuse ? { reuseAddress: true } : {}),
      });
      const bound = (udp.addr as Deno.NetAddr).port;
      try {
        this.#tcp = Deno.listen({
          transport: "tcp",
          hostname,
          port: bound,
          ...(reuse ? { reusePort: true } : {}),
        });
        this.#udp = udp;
        break;
      } catch (e) {
        udp.close();
        if (port !== 0 || !(e instanceof Deno.errors.AddrInUse) || attempt >= 10) throw e;
      }
    }
    this.#tasks.push(this.#serveUdp(this.#udp), this.#serveTcp(this.#tcp));
    this.#opts.logger.info("DNS responder listening", {
      address: `${hostname}:${this.port}`,
      domain: nameToString(this.#opts.zone.domain),
    });
  }

  /** Closes both listeners and every TCP connection. */
  async stop(): Promise<void> {
    this.#stopping = true;
    try {
      this.#udp?.close();
    } catch { /* closed already */ }
    try {
      this.#tcp?.close();
    } catch { /* closed already */ }
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* closed already */ }
    }
    await Promise.allSettled(this.#tasks);
  }

  #respond(msg: Uint8Array, transport: "udp" | "tcp"): Uint8Array | null {
    let query: DnsQuery;
    let response: DnsResponse;
    try {
      query = parseQuery(msg);
      response = this.#opts.zone.answer(query);
    } catch (e) {
      if (!(e instanceof DnsFormatError) || e.id === undefined) {
        this.#opts.logger.debug("DNS message dropped", { transport, reason: String(e) });
        this.#queries?.with(transport, "dropped").inc();
        return null;
      }
      this.#opts.logger.debug("bad DNS query", { transport, reason: e.message });
      query = { id: e.id, opcode: e.opcode, rd: false, cd: false, questions: [] };
      response = {
        id: e.id,
        opcode: e.opcode,
        rd: false,
        cd: false,
        aa: false,
        rcode: RCODE.FORMERR,
        answers: [],
        authority: [],
      };
    }
    this.#queries?.with(transport, rcodeName(response.rcode)).inc();
    const limit = transport === "tcp"
      ? 65535
      : query.edns
      ? Math.min(Math.max(query.edns.udpSize, 512), EDNS_UDP_SIZE)
      : 512;
    return encodeResponse(response, limit);
  }

  async #serveUdp(conn: Deno.DatagramConn): Promise<void> {
    while (!this.#stopping) {
      let msg: Uint8Array;
      let addr: Deno.Addr;
      try {
        [msg, addr] = await conn.receive();
      } catch (e) {
        if (this.#stopping || e instanceof Deno.errors.BadResource) return;
        // One bad receive must not silence the responder.
        this.#opts.logger.warn("DNS receive failed; listening on", { error: String(e) });
        await new Promise((r) => setTimeout(r, 10));
        continue;
      }
      const out = this.#respond(msg, "udp");
      if (out) await conn.send(out, addr).catch(() => {});
    }
  }

  async #serveTcp(listener: Deno.Listener): Promise<void> {
    try {
      for await (const conn of listener) {
        this.#conns.add(conn);
        void this.#serveConn(conn).finally(() => this.#conns.delete(conn));
      }
    } catch {
      // closed by stop()
    }
  }

  async #serveConn(conn: Deno.Conn): Promise<void> {
    const idle = this.#opts.tcpIdleTimeoutMs ?? 10_000;
    try {
      for (;;) {
        const head = await readExactly(conn, 2, idle);
        if (!head) return;
        const msg = await readExactly(conn, (head[0]! << 8) | head[1]!, idle);
        if (!msg) return;
        const out = this.#respond(msg, "tcp");
        if (!out) return;
        const framed = new Uint8Array(out.length + 2);
        framed[0] = out.length >> 8;
        framed[1] = out.length & 0xff;
        framed.set(out, 2);
        for (let off = 0; off < framed.length;) off += await conn.write(framed.subarray(off));
      }
    } catch {
      // reset by the client, or closed by stop()
    } finally {
      try {
        conn.close();
      } catch { /* closed already */ }
    }
  }
}

/** `n` bytes from `conn`, or null at a clean end, a short end, or `idleMs` without a byte. */
async function readExactly(conn: Deno.Conn, n: number, idleMs: number): Promise<Uint8Array | null> {
  const buf = new Uint8Array(n);
  let off = 0;
  while (off < n) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<null>((resolve) => timer = setTimeout(() => resolve(null), idleMs));
    const got = await Promise.race([conn.read(buf.subarray(off)), timeout]);
    clearTimeout(timer);
    if (got === null) return null;
    off += got;
  }
  return buf;
}
