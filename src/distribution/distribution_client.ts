import * as grpc from "@grpc/grpc-js";
import type { Logger } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { Buffer } from "node:buffer";
import { applyDelta, type MeshDelta } from "./config_delta.ts";
import type { StampedConfig } from "./config_history.ts";
import { LEADER_TLS_NAME } from "./leader_identity.ts";
import {
  type ConfigUpdateMessage,
  distributionPackage,
  type NodeReportMessage,
} from "./grpc_service.ts";

/** Options for {@linkcode DistributionClient}. */
export interface DistributionClientOptions {
  /** This node's name. */
  node: string;
  /**
   * Where the leader listens now (`host:port`) and the certificate it serves, the only one
   * trusted; null while no leader is known.
   */
  leader: () => Promise<LeaderAddress | null>;
  /** The token that proves this node is a meshd pod; default none. */
  token?: () => Promise<string>;
  /** The config this node has applied, the base of deltas; null before any. */
  current: () => StampedConfig | null;
  /** Applies a config whole, or throws why it cannot; the node keeps what it had. */
  apply: (config: StampedConfig) => Promise<void>;
  logger: Logger;
  /** Waits between attempts: first and largest, before jitter; default 200 ms and 10 s. */
  backoffMs?: { first: number; max: number };
}

/** The largest config update a node accepts: a snapshot of about 500,000 services. */
export const MAX_UPDATE_BYTES = 256 * 1024 * 1024;

/** How to reach the leader. */
export interface LeaderAddress {
  /** `host:port`. */
  address: string;
  /** The leader's self-signed certificate, in PEM. */
  certPem: string;
}

/** Counters a test or `/metrics` can read. */
export interface DistributionClientStats {
  connects: number;
  snapshots: number;
  deltas: number;
  /** Versions it could not apply. */
  failures: number;
  /** Leading parts of large updates received (an update in parts counts its last as above). */
  parts: number;
}

/**
 * The node's side of config distribution: subscribes to the leader with the version it has,
 * applies each update whole, and acknowledges it, or says why it could not. When the stream
 * ends (the leader went away or moved) it asks `leader()` again and reconnects, backing off
 * with jitter.
 */
export class DistributionClient {
  readonly stats: DistributionClientStats = {
    connects: 0,
    snapshots: 0,
    deltas: 0,
    failures: 0,
    parts: 0,
  };
  readonly #o: DistributionClientOptions;
  #stopped = false;
  #wake: (() => void) | null = null;
  #client: grpc.Client | null = null;
  #call: grpc.ClientDuplexStream<NodeReportMessage, ConfigUpdateMessage> | null = null;
  #done: Promise<void> = Promise.resolve();
  #session: LeaderAddress | null = null;
  #backoffReset = false;

  constructor(options: DistributionClientOptions) {
    this.#o = options;
  }

  /** Starts subscribing in the background. */
  start(): void {
    this.#done = this.#loop();
  }

  /** True while a stream to a leader is open. */
  get connected(): boolean {
    return this.#call !== null;
  }

  /**
   * Says that the leader may have moved (the Lease changed): a stream to another leader ends,
   * and a node waiting to reconnect tries again at once.
   */
  leaderChanged(now: LeaderAddress | null): void {
    const cur = this.#session;
    if (
      cur && this.#call &&
      (now === null || now.address !== cur.address || now.certPem !== cur.certPem)
    ) {
      this.#o.logger.info("the leader moved; leaving the old one", { leader: cur.address });
      this.#call.cancel();
    }
    this.#backoffReset = true;
    this.#wake?.();
  }

  /** Stops and waits for the loop to end. */
  async stop(): Promise<void> {
    this.#stopped = true;
    // closing the channel waits for calls in progress: cancel ours first
    this.#call?.cancel();
    this.#client?.close();
    this.#wake?.();
    await this.#done;
  }

  async #loop(): Promise<void> {
    const { first, max } = this.#o.backoffMs ?? { first: 200, max: 10_000 };
    let backoff = first;
    while (!this.#stopped) {
      this.#backoffReset = false;
      const leader = await this.#o.leader().catch(() => null);
      if (leader && !this.#stopped) {
        const gotUpdates = await this.#subscribe(leader);
        if (gotUpdates) backoff = first;
      }
      if (this.#stopped) break;
      if (this.#backoffReset) {
        backoff = first;
        this.#backoffReset = false;
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, backoff / 2 + Math.random() * backoff / 2);
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      backoff = Math.min(max, backoff * 2);
    }
  }

  /** One stream to `leader`; resolves when it ends, true if it carried updates. */
  async #subscribe(leader: LeaderAddress): Promise<boolean> {
    const log = this.#o.logger;
    const addr = leader.address;
    const pkg = distributionPackage();
    // Only the certificate the Lease names is trusted, under the name it was made for.
    const creds = grpc.credentials.createSsl(Buffer.from(leader.certPem));
    const client = new pkg.client(addr, creds, {
      "grpc.ssl_target_name_override": LEADER_TLS_NAME,
      "grpc.default_authority": LEADER_TLS_NAME,
      // gRPC refuses messages over 4 MiB by default; a snapshot of 10,000 services is larger.
      "grpc.max_receive_message_length": MAX_UPDATE_BYTES,
      // No retries inside grpc-js: this loop retries, with backoff. When a leader's SETTINGS
      // and GOAWAY arrive in one read (it stepped down as this node connected, and this node
      // read late), grpc-js 1.14 reports the GOAWAY before anyone listens for it, then marks the
      // dead connection ready; every call on it fails before it is sent, and its "transparent
      // retry" of such calls starts the next attempt at once, in a microtask, without end. No
      // timer or I/O ran again, and memory grew until the kubelet killed the pod. With retries
      // off, the call fails to us, this client closes, and the next attempt connects anew.
      "grpc.enable_retries": 0,
    });
    this.#client = client;
    this.#session = leader;
    const call = (client as unknown as {
      Subscribe(): grpc.ClientDuplexStream<NodeReportMessage, ConfigUpdateMessage>;
    }).Subscribe();
    this.#call = call;
    if (this.#stopped) call.cancel();
    this.stats.connects++;
    let updates = 0;
    let chain = Promise.resolve();
    const parts: Parts = { version: 0, epoch: "", pieces: [], bytes: 0 };
    const ended = new Promise<void>((resolve) => {
      call.on("data", (m: ConfigUpdateMessage) => {
        updates++;
        chain = chain.then(() => this.#update(m, call, parts));
      });
      call.on("error", (e: grpc.ServiceError) => {
        if (!this.#stopped) {
          log.warn("config stream from the leader failed", {
            leader: addr,
            error: e.details ?? String(e),
          });
        }
        resolve();
      });
      call.on("end", () => resolve());
    });
    const token = this.#o.token ? await this.#o.token().catch(() => "") : "";
    const current = this.#o.current();
    call.write({
      hello: {
        node: this.#o.node,
        applied_version: current?.config.version ?? 0,
        applied_epoch: current?.epoch ?? "",
        token,
        accepts_parts: true,
      },
    });
    await ended;
    await chain;
    client.close();
    this.#client = null;
    this.#call = null;
    this.#session = null;
    return updates > 0;
  }

  async #update(
    m: ConfigUpdateMessage,
    call: grpc.ClientDuplexStream<NodeReportMessage, ConfigUpdateMessage>,
    parts: Parts,
  ): Promise<void> {
    let error = "";
    this.#o.logger.debug("config received", { version: m.version, body: m.body ?? "" });
    if (m.body === "part") {
      // A leading part of a large update: keep it, and say so, for the leader to send more.
      if (parts.version !== m.version || parts.epoch !== m.epoch) {
        Object.assign(parts, { version: m.version, epoch: m.epoch, pieces: [], bytes: 0 });
      }
      this.stats.parts++;
      parts.pieces.push(m.part ?? new Uint8Array());
      parts.bytes += m.part?.length ?? 0;
      if (parts.bytes > MAX_UPDATE_BYTES) {
        this.#o.logger.warn("the leader's update is too large; leaving the stream", {
          version: m.version,
          bytes: parts.bytes,
          limit: MAX_UPDATE_BYTES,
        });
        call.cancel();
        return;
      }
      if (!this.#stopped) {
        call.write({
          ack: { version: m.version, applied: false, error: "", parts: parts.pieces.length },
        });
      }
      return;
    }
    try {
      let next: MeshConfig;
      const snapshot = m.body === "snapshot" || (!m.body && !!m.snapshot?.length);
      let body = (snapshot ? m.snapshot : m.delta) ?? new Uint8Array();
      if (parts.pieces.length > 0) {
        const mine = parts.version === m.version && parts.epoch === m.epoch;
        if (mine) body = join([...parts.pieces, body]);
        Object.assign(parts, { version: 0, epoch: "", pieces: [], bytes: 0 });
        if (!mine) throw new Error(`version ${m.version} came after parts of another version`);
      }
      if (snapshot) {
        this.stats.snapshots++;
        next = JSON.parse(new TextDecoder().decode(body));
      } else {
        this.stats.deltas++;
        const base = this.#o.current();
        const delta = JSON.parse(new TextDecoder().decode(body)) as MeshDelta;
        if (!base) throw new Error(`a delta from ${delta.from}, and no config to apply it to`);
        next = applyDelta(base.config, delta);
      }
      if (next.version !== m.version) {
        throw new Error(`the update says version ${m.version} but holds ${next.version}`);
      }
      await this.#o.apply({ epoch: m.epoch, config: next });
    } catch (e) {
      error = (e as Error).message;
      this.stats.failures++;
      this.#o.logger.warn("cannot apply the leader's config; keeping the one in force", {
        version: m.version,
        error,
      });
    }
    if (!this.#stopped) call.write({ ack: { version: m.version, applied: !error, error } });
  }
}

/** The leading parts of a large update received so far on one stream. */
interface Parts {
  version: number;
  epoch: string;
  pieces: Uint8Array[];
  bytes: number;
}

/** `pieces` end to end, in one array. */
function join(pieces: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of pieces) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
