import * as grpc from "@grpc/grpc-js";
import type { Logger } from "../observability/mod.ts";
import { compareNames, type MeshConfig } from "../topology/mod.ts";
import { Buffer } from "node:buffer";
import { ConfigHistory, type ConfigRef, type ConfigUpdate } from "./config_history.ts";
import type { LeaderIdentity } from "./leader_identity.ts";
import {
  type ConfigUpdateMessage,
  distributionPackage,
  type NodeReportMessage,
} from "./grpc_service.ts";

/** What the leader knows of one node, for `/api/status/nodes` and metrics. */
export interface NodeStatus {
  node: string;
  connected: boolean;
  /** The version the node last said it applied; null before its first. */
  applied: number | null;
  /** True when what it applied is the leader's current config. */
  inSync: boolean;
  /** The version last sent to it. */
  sent: number | null;
  /** Why the node could not apply the last version it was sent; null when it could. */
  error: string | null;
  /** Milliseconds since the epoch of its last acknowledgement. */
  lastAckAt: number | null;
}

/** Options for {@linkcode DistributionServer}. */
export interface DistributionServerOptions {
  logger: Logger;
  /** The key and certificate the stream is served with (TLS, always). */
  identity: LeaderIdentity;
  /**
   * Whether this process leads now; a node that subscribes to one that does not is told to
   * look again. Default: always.
   */
  isLeader?: () => boolean;
  /** Versions kept for deltas; default a new history of 32. */
  history?: ConfigHistory;
  /**
   * Checks a node before it gets any config: resolves to null to let it in, or to the reason
   * it is refused. Default: every node is let in.
   */
  authenticate?: (hello: { node: string; token: string }) => Promise<string | null>;
  /** The clock, for `lastAckAt`. */
  now?: () => number;
  /**
   * Whole configs in flight at once, across nodes; default 8. Nodes that need one while that
   * many are on their way wait their turn (deltas never wait): when hundreds of nodes connect
   * at once to a leader of a large mesh, its memory holds a few copies of the config in
   * transit, not one per node.
   */
  maxSnapshotsInFlight?: number;
  /**
   * How long a node may take to acknowledge a whole config before its stream is ended (it
   * reconnects and asks again), so a node that hangs cannot keep a slot; default 60 s.
   */
  snapshotAckTimeoutMs?: number;
  /**
   * The largest piece of an update written at once to a node that accepts parts; default
   * {@linkcode PART_BYTES}. A larger snapshot or delta goes in parts.
   */
  partBytes?: number;
  /**
   * Parts written to a node ahead of its acknowledgements; default {@linkcode PARTS_AHEAD}.
   * With `partBytes`, it bounds what waits in a node's stream at once.
   */
  partsAhead?: number;
  /**
   * How often the leader checks that its listener still accepts connections, in ms; default
   * {@linkcode LISTENER_CHECK_MS}. Deno's `node:net` stops accepting for good, and says
   * nothing, after an accept fails (EMFILE once the process is out of file descriptors, as a
   * client that opens thousands of connections makes it): a listener found stuck is bound anew.
   */
  listenerCheckMs?: number;
  /**
   * Tokens checked from one client address: at most `burst` at once, then one per
   * `everyMs`; default {@linkcode TOKEN_CHECKS}. Each check is a TokenReview on the API
   * server, so a pod that sends Hello after Hello with made-up tokens (many streams on one
   * connection cost it nothing) would make the leader flood the API server; over the limit it
   * is refused without a check, and retries later as a node does. A token found valid gives
   * its check back: nodes that share an address are held to `burst` checks at once only.
   */
  tokenChecks?: { burst: number; everyMs: number };
  /** Time a stream has to send its Hello before it is ended; default {@linkcode HELLO_TIMEOUT_MS}. */
  helloTimeoutMs?: number;
}

/** A node sends its Hello as it opens its stream: a stream without one by then is ended. */
export const HELLO_TIMEOUT_MS = 10_000;

/**
 * Streams one client connection may have open at once. A node opens one; without a limit a
 * client that never sends Hello could open thousands on one connection (5,000 cost the leader
 * 70 MB) before any token is checked.
 */
export const MAX_STREAMS_PER_CONNECTION = 4;

/** Tokens checked from one address: see {@linkcode DistributionServerOptions.tokenChecks}. */
export const TOKEN_CHECKS = { burst: 5, everyMs: 1000 };

/** How often the listener is checked; see {@linkcode DistributionServerOptions.listenerCheckMs}. */
export const LISTENER_CHECK_MS = 10_000;

/**
 * The largest piece of an update written at once to a node that accepts parts. Each stream
 * keeps a send buffer as large as the most it was given at once, for as long as the stream
 * lives (Deno's HTTP/2 stream copies every write into one growable buffer, and keeps it), so
 * a whole config written to each node would keep a copy of the config per node. 16 KiB is
 * HTTP/2's default frame: with 100 nodes at 3,000 services, 16 KiB parts left the leader about
 * 35 MB smaller than 64 KiB parts (less freed memory it could not give back), and the nodes
 * were in sync as fast.
 */
export const PART_BYTES = 16 * 1024;

/** Parts written to a node ahead of its acknowledgements. */
export const PARTS_AHEAD = 4;

type Call = grpc.ServerDuplexStream<NodeReportMessage, ConfigUpdateMessage>;

interface Stream {
  call: Call;
  node: string | null;
  applied: ConfigRef | null;
  /** The version sent and not acknowledged yet; one at a time per node. */
  inflight: ConfigRef | null;
  /** A version the node could not apply: not sent again; a newer one goes whole. */
  failed: number | null;
  /** Whether what is in flight is a whole config. */
  snapshot: boolean;
  /** Ends the stream if the whole config in flight is not acknowledged in time. */
  snapshotTimer?: ReturnType<typeof setTimeout>;
  /** Whether the node takes large updates in parts. */
  parts: boolean;
  /** The update being written in parts, until its last part is written. */
  outgoing: Outgoing | null;
}

/** An update on its way to one node in parts. */
interface Outgoing {
  version: number;
  epoch: string;
  kind: "snapshot" | "delta";
  /** The whole update, shared with every other node it goes to. */
  bytes: Uint8Array;
  /** Parts in all, the last one included. */
  count: number;
  /** Parts written. */
  written: number;
  /** Leading parts the node said it received. */
  acked: number;
}

/**
 * The leader's side of config distribution: each node's stream gets the whole config or a
 * delta from the version it reported, then one update at a time, each after the node
 * acknowledged the one before. A node that falls behind gets one delta over all it missed,
 * not one per version; a node that could not apply a version gets the whole config next.
 * A large update goes to a node that accepts parts a few parts at a time, each batch after
 * the node said it received the ones before, so what waits in each node's stream stays small
 * whatever the size of the config: the leader's memory does not grow with the node count.
 */
export class DistributionServer {
  history: ConfigHistory;
  readonly #o: DistributionServerOptions;
  #server: grpc.Server;
  /** Whether {@linkcode listen} has bound a port. */
  #listening = false;
  /** Where it listens, once bound: what the listener check connects to. */
  #bound: { host: string; port: number } | null = null;
  #listenerCheck: ReturnType<typeof setInterval> | null = null;
  /** Checks in a row that found the listener not accepting. */
  #stuckChecks = 0;
  /** Token checks each client address may start now, and when that was counted. */
  readonly #checkBudgets = new Map<string, { left: number; at: number }>();
  readonly #streams = new Set<Stream>();
  readonly #nodes = new Map<string, NodeStatus>();
  readonly #appliedRefs = new Map<string, ConfigRef>();
  #bytesSent = 0;
  /** The JSON of each delta, made once for all the nodes it goes to. */
  readonly #encodedDeltas = new WeakMap<object, Uint8Array>();
  /** The JSON of the newest config sent whole; older ones are not kept. */
  #encodedSnapshot: { config: MeshConfig; bytes: Uint8Array } | null = null;
  /** Streams waiting for a whole config, in the order they asked. */
  readonly #waiting = new Set<Stream>();
  #snapshotsInFlight = 0;

  constructor(options: DistributionServerOptions) {
    this.#o = options;
    this.history = options.history ?? new ConfigHistory();
    this.#server = this.#newServer();
  }

  #newServer(): grpc.Server {
    const server = new grpc.Server({ "grpc.max_concurrent_streams": MAX_STREAMS_PER_CONNECTION });
    server.addService(distributionPackage().service, {
      Subscribe: (call: Call) => this.#subscribe(call),
    });
    return server;
  }

  /** Listens with TLS on `hostname:port`; resolves with the port bound. */
  listen(hostname: string, port: number): Promise<number> {
    const { certPem, keyPem } = this.#o.identity;
    // The root list is never used (no client certificates are asked for), but without one
    // grpc-js passes every public root, and Deno's TLS server then fails its handshakes.
    const creds = grpc.ServerCredentials.createSsl(Buffer.from(certPem), [
      { cert_chain: Buffer.from(certPem), private_key: Buffer.from(keyPem) },
    ], false);
    const host = hostname.includes(":") ? `[${hostname}]` : hostname;
    return new Promise((resolve, reject) => {
      this.#server.bindAsync(`${host}:${port}`, creds, (err, bound) => {
        if (!err) {
          this.#listening = true;
          this.#watchListener(host, bound);
          return resolve(bound);
        }
        // grpc-js keeps a failed bind and answers every later bind of the same address with
        // the same failure, so a port that frees up later could never be taken: a server that
        // has not listened yet is replaced by a fresh one, and the next try binds anew.
        if (!this.#listening) {
          this.#server.forceShutdown();
          this.#server = this.#newServer();
        }
        reject(err);
      });
    });
  }

  /**
   * Makes `config` the current version, in `epoch`, and sends it to every node that is not
   * busy. A new leader first publishes the config its own node has, in that config's epoch.
   */
  publish(config: MeshConfig, epoch: string): void {
    this.history.push(config, epoch);
    for (const s of this.#streams) this.#pump(s);
  }

  /** Ends every node's stream, telling it why (this process stopped leading). */
  disconnectAll(reason: string): void {
    for (const s of [...this.#streams]) {
      s.call.emit("error", { code: grpc.status.UNAVAILABLE, details: reason });
    }
  }

  /** Forgets every node and the history: a new leadership term starts from nothing. */
  reset(): void {
    this.disconnectAll("the leader changed");
    this.#nodes.clear();
    this.history = new ConfigHistory(this.history.limit);
    this.#encodedSnapshot = null;
  }

  /** Bytes of config (snapshots and deltas) written to nodes so far. */
  get bytesSent(): number {
    return this.#bytesSent;
  }

  /** Every node seen, connected or not, by name. */
  nodes(): NodeStatus[] {
    const cur = this.history.current;
    for (const st of this.#nodes.values()) {
      const ref = this.#appliedRefs.get(st.node);
      st.inSync = !!cur && ref?.epoch === cur.epoch && ref.version === cur.config.version;
    }
    return [...this.#nodes.values()].sort((a, b) => compareNames(a.node, b.node));
  }

  /** Checks the listener now and then once bound (see `listenerCheckMs`). */
  #watchListener(host: string, port: number): void {
    this.#bound = { host, port };
    if (this.#listenerCheck) return;
    const every = this.#o.listenerCheckMs ?? LISTENER_CHECK_MS;
    let checking = false;
    this.#listenerCheck = setInterval(() => {
      if (checking) return;
      checking = true;
      void this.#checkListener(Math.min(3000, every)).finally(() => checking = false);
    }, every);
    Deno.unrefTimer(this.#listenerCheck);
  }

  /**
   * Connects to the listener and sends a line no TLS server takes: one that accepts answers
   * or closes at once; one that no longer accepts leaves the connection in its backlog. Two
   * such checks in a row, and the port is bound anew (the nodes' streams stay open).
   */
  async #checkListener(timeoutMs: number): Promise<void> {
    const b = this.#bound!;
    const hostname = b.host === "0.0.0.0" ? "127.0.0.1" : b.host === "[::]" ? "::1" : b.host;
    let conn: Deno.TcpConn;
    try {
      conn = await Deno.connect({ hostname: hostname.replace(/^\[|\]$/g, ""), port: b.port });
    } catch {
      return; // out of descriptors here too, or the port is gone: nothing to learn
    }
    let answered = true;
    const timer = setTimeout(() => {
      answered = false;
      conn.close();
    }, timeoutMs);
    try {
      await conn.write(new TextEncoder().encode("meshd listener check\r\n\r\n"));
      await conn.read(new Uint8Array(512)); // an alert, the end, or a reset: all answers
    } catch {
      // a reset, or closed by the timer
    } finally {
      clearTimeout(timer);
      try {
        conn.close();
      } catch { /* closed by the timer */ }
    }
    this.#stuckChecks = answered ? 0 : this.#stuckChecks + 1;
    if (this.#stuckChecks >= 2) await this.#rebind(b);
  }

  async #rebind(b: { host: string; port: number }): Promise<void> {
    this.#stuckChecks = 0;
    this.#o.logger.warn("the config stream stopped accepting connections; listening anew", {
      address: `${b.host}:${b.port}`,
    });
    this.#server.unbind(`${b.host}:${b.port}`);
    await this.listen(b.host.replace(/^\[|\]$/g, ""), b.port).catch((e) =>
      this.#o.logger.error("cannot listen anew for the config stream", { error: String(e) })
    );
  }

  /** Closes every stream and the listener. */
  async stop(): Promise<void> {
    if (this.#listenerCheck) clearInterval(this.#listenerCheck);
    this.#listenerCheck = null;
    for (const s of this.#streams) s.call.end();
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.#server.forceShutdown();
        resolve();
      }, 2000);
      this.#server.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  #subscribe(call: Call): void {
    const s: Stream = {
      call,
      node: null,
      applied: null,
      inflight: null,
      failed: null,
      snapshot: false,
      parts: false,
      outgoing: null,
    };
    this.#streams.add(s);
    const log = this.#o.logger;
    const gone = () => {
      clearTimeout(helloTimer);
      if (!this.#streams.delete(s)) return;
      this.#waiting.delete(s);
      this.#snapshotDone(s);
      const st = s.node ? this.#nodes.get(s.node) : undefined;
      // a reconnect may have opened a new stream before this one ended
      if (st && !this.#current(s.node!)) st.connected = false;
      if (s.node) log.info("node disconnected", { node: s.node });
    };
    const helloTimer = setTimeout(() => {
      call.emit("error", { code: grpc.status.DEADLINE_EXCEEDED, details: "no Hello in time" });
    }, this.#o.helloTimeoutMs ?? HELLO_TIMEOUT_MS);
    call.on("data", (m: NodeReportMessage) => {
      clearTimeout(helloTimer);
      if (m.hello) void this.#hello(s, m.hello);
      else if (m.ack) this.#ack(s, m.ack);
    });
    call.on("end", () => {
      gone();
      call.end();
    });
    call.on("error", gone);
    call.on("cancelled", gone);
  }

  /** The newest stream of `node` (a reconnect can overlap the old stream's end). */
  #current(node: string): Stream | undefined {
    let found: Stream | undefined;
    for (const s of this.#streams) if (s.node === node) found = s;
    return found;
  }

  async #hello(s: Stream, hello: NonNullable<NodeReportMessage["hello"]>): Promise<void> {
    const log = this.#o.logger;
    if (s.node !== null || !hello.node) {
      s.call.emit("error", {
        code: grpc.status.INVALID_ARGUMENT,
        details: s.node ? "Hello was sent twice" : "Hello names no node",
      });
      return;
    }
    if (this.#o.isLeader && !this.#o.isLeader()) {
      s.call.emit("error", {
        code: grpc.status.UNAVAILABLE,
        details: "this meshd does not lead now: read the Lease again",
      });
      return;
    }
    if (this.#o.authenticate && !this.#mayCheckToken(s.call)) {
      s.call.emit("error", {
        code: grpc.status.RESOURCE_EXHAUSTED,
        details: "too many tokens checked from this address; retry later",
      });
      return;
    }
    const refused = this.#o.authenticate
      ? await this.#o.authenticate({ node: hello.node, token: hello.token }).catch((e) =>
        `cannot check its token: ${(e as Error).message}`
      )
      : null;
    if (refused) {
      log.warn("node refused", { node: hello.node, reason: refused });
      s.call.emit("error", { code: grpc.status.UNAUTHENTICATED, details: refused });
      return;
    }
    // A valid token costs its address nothing: nodes that share one (behind NAT, or many
    // agents of one host) are held to a few checks at once, never to one a second.
    if (this.#o.authenticate) this.#refundTokenCheck(s.call);
    s.node = hello.node;
    s.parts = hello.accepts_parts === true;
    s.applied = hello.applied_version > 0
      ? { epoch: hello.applied_epoch, version: hello.applied_version }
      : null;
    if (s.applied) this.#appliedRefs.set(hello.node, s.applied);
    const prev = this.#nodes.get(hello.node);
    this.#nodes.set(hello.node, {
      node: hello.node,
      connected: true,
      inSync: false,
      applied: s.applied?.version ?? prev?.applied ?? null,
      sent: prev?.sent ?? null,
      error: null,
      lastAckAt: prev?.lastAckAt ?? null,
    });
    log.info("node connected", { node: hello.node, applied: s.applied?.version ?? 0 });
    this.#pump(s);
  }

  /** The client address of `call`, without its port. */
  #addressOf(call: Call): string {
    const peer = call.getPeer();
    return peer.slice(0, peer.lastIndexOf(":"));
  }

  /** Gives back the check `call`'s address took, for a token found valid. */
  #refundTokenCheck(call: Call): void {
    const b = this.#checkBudgets.get(this.#addressOf(call));
    const { burst } = this.#o.tokenChecks ?? TOKEN_CHECKS;
    if (b) b.left = Math.min(burst, b.left + 1);
  }

  /** Takes one token check from the budget of `call`'s address; false when none is left. */
  #mayCheckToken(call: Call): boolean {
    const { burst, everyMs } = this.#o.tokenChecks ?? TOKEN_CHECKS;
    const address = this.#addressOf(call);
    const now = performance.now();
    const b = this.#checkBudgets.get(address) ?? { left: burst, at: now };
    b.left = Math.min(burst, b.left + (now - b.at) / everyMs);
    b.at = now;
    if (b.left < 1) return false;
    b.left--;
    this.#checkBudgets.set(address, b);
    // A full budget needs no entry: addresses that stopped asking are forgotten.
    if (this.#checkBudgets.size > 1024) {
      for (const [a, o] of this.#checkBudgets) {
        if (o.left + (now - o.at) / everyMs >= burst) this.#checkBudgets.delete(a);
      }
    }
    return true;
  }

  #ack(s: Stream, ack: NonNullable<NodeReportMessage["ack"]>): void {
    if (!s.node) {
      s.call.emit("error", { code: grpc.status.FAILED_PRECONDITION, details: "Ack before Hello" });
      return;
    }
    const st = this.#nodes.get(s.node)!;
    st.lastAckAt = (this.#o.now ?? Date.now)();
    if (ack.parts) {
      // Parts received, not the update applied: write the next ones.
      const o = s.outgoing;
      if (o && o.version === ack.version) {
        // never past what was written: a node cannot open the window wider by overstating
        o.acked = Math.min(o.written, Math.max(o.acked, ack.parts));
        this.#writeParts(s);
      }
      return;
    }
    const sent = s.inflight;
    if (s.inflight?.version === ack.version) {
      s.inflight = null;
      this.#snapshotDone(s);
    }
    if (ack.applied) {
      if (sent?.version === ack.version) {
        s.applied = sent;
        this.#appliedRefs.set(s.node, sent);
      }
      st.applied = ack.version;
      st.error = null;
    } else {
      // It keeps routing on what it had; the next version goes whole.
      s.applied = null;
      s.failed = ack.version;
      st.error = ack.error || "no reason given";
      this.#o.logger.warn("node could not apply a version", {
        node: s.node,
        version: ack.version,
        error: st.error,
      });
    }
    this.#pump(s);
  }

  #pump(s: Stream): void {
    if (s.node === null || s.inflight !== null) return;
    if (s.failed !== null && s.failed === this.history.current?.config.version) return;
    const u = this.history.updateFor(s.applied);
    if (u.kind === "none") return;
    if (u.kind === "snapshot") {
      if (this.#snapshotsInFlight >= (this.#o.maxSnapshotsInFlight ?? 8)) {
        this.#waiting.add(s);
        return;
      }
      this.#waiting.delete(s);
      this.#snapshotsInFlight++;
      s.snapshot = true;
      const limit = this.#o.snapshotAckTimeoutMs ?? 60_000;
      s.snapshotTimer = setTimeout(() => {
        this.#o.logger.warn("node did not acknowledge the whole config; ending its stream", {
          node: s.node,
          version: u.config.version,
          waitedMs: limit,
        });
        s.call.emit("error", {
          code: grpc.status.DEADLINE_EXCEEDED,
          details: `the whole config was not acknowledged within ${limit} ms`,
        });
      }, limit);
    }
    const version = u.kind === "delta" ? u.delta.to : u.config.version;
    const bytes = this.#encode(u);
    s.inflight = { epoch: u.epoch, version };
    this.#bytesSent += bytes.length;
    this.#nodes.get(s.node)!.sent = version;
    this.#o.logger.debug("config sent", { node: s.node, version, kind: u.kind });
    const size = this.#o.partBytes ?? PART_BYTES;
    if (s.parts && bytes.length > size) {
      s.outgoing = {
        version,
        epoch: u.epoch,
        kind: u.kind,
        bytes,
        count: Math.ceil(bytes.length / size),
        written: 0,
        acked: 0,
      };
      this.#writeParts(s);
    } else {
      s.call.write({ version, epoch: u.epoch, [u.kind]: bytes });
    }
  }

  /**
   * Writes the parts of `s`'s outgoing update that its acknowledgements allow: at most
   * `partsAhead` past the last it received. The last part goes as a snapshot or delta.
   */
  #writeParts(s: Stream): void {
    const o = s.outgoing;
    if (!o) return;
    const size = this.#o.partBytes ?? PART_BYTES;
    const ahead = this.#o.partsAhead ?? PARTS_AHEAD;
    while (o.written < o.count && o.written - o.acked < ahead) {
      const piece = o.bytes.subarray(o.written * size, (o.written + 1) * size);
      o.written++;
      const last = o.written === o.count;
      if (last) s.outgoing = null;
      s.call.write({ version: o.version, epoch: o.epoch, [last ? o.kind : "part"]: piece });
    }
  }

  /** Frees `s`'s whole-config slot, if it held one, and gives it to the next that waits. */
  #snapshotDone(s: Stream): void {
    if (!s.snapshot) return;
    s.snapshot = false;
    clearTimeout(s.snapshotTimer);
    this.#snapshotsInFlight--;
    for (const w of this.#waiting) {
      if (this.#snapshotsInFlight >= (this.#o.maxSnapshotsInFlight ?? 8)) break;
      this.#waiting.delete(w);
      this.#pump(w);
    }
  }

  /** The JSON of an update, encoded once however many nodes it goes to. */
  #encode(u: Exclude<ConfigUpdate, { kind: "none" }>): Uint8Array {
    if (u.kind === "snapshot") {
      if (this.#encodedSnapshot?.config !== u.config) {
        const bytes = new TextEncoder().encode(JSON.stringify(u.config));
        this.#encodedSnapshot = { config: u.config, bytes };
      }
      return this.#encodedSnapshot.bytes;
    }
    let bytes = this.#encodedDeltas.get(u.delta);
    if (!bytes) {
      bytes = new TextEncoder().encode(JSON.stringify(u.delta));
      this.#encodedDeltas.set(u.delta, bytes);
    }
    return bytes;
  }
}
