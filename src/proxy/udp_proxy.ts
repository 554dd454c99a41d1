import type { Logger } from "../observability/mod.ts";
import type { EndpointPool, EndpointState } from "./endpoint_pool.ts";
import { candidatesFor, type Route } from "./route_table.ts";

/** Options for {@linkcode UdpListener}. */
export interface UdpListenerOptions {
  hostname: string;
  port: number;
  /** The route in force for this port, read per datagram so a reload applies at once. */
  route: () => Route | undefined;
  pool: EndpointPool;
  logger: Logger;
  /** A flow with no datagram either way for this long is forgotten. Default 60 s. */
  idleTimeoutMs?: number;
}

interface Flow {
  client: Deno.NetAddr;
  upstream: Deno.DatagramConn;
  endpoint: EndpointState;
  route: Route;
  lastActive: number;
  done: Promise<void>;
}

const MAX_DATAGRAM = 65_535;

/**
 * One UDP listener for one service port. Datagrams from each client address form a flow: the
 * first one picks an endpoint (through the port's split, after access control) and opens a
 * socket of its own towards it; replies on that socket go back to that client from the
 * service port, so the client sees them come from where it sent. A flow idle for
 * `idleTimeoutMs` is closed. A datagram access control refuses is dropped and counted.
 */
export class UdpListener {
  readonly #opts: UdpListenerOptions;
  readonly #socket: Deno.DatagramConn;
  readonly #flows = new Map<string, Flow>();
  readonly #sweeper: ReturnType<typeof setInterval>;
  readonly #done: Promise<void>;
  #closed = false;

  /** Binds the port; throws if it cannot. */
  constructor(options: UdpListenerOptions) {
    this.#opts = options;
    this.#socket = Deno.listenDatagram({
      transport: "udp",
      hostname: options.hostname,
      port: options.port,
    });
    const sweepMs = Math.min(1000, Math.max(10, (options.idleTimeoutMs ?? 60_000) / 4));
    this.#sweeper = setInterval(() => this.#sweep(), sweepMs);
    this.#sweeper.unref(); // never keeps the process alive on its own
    this.#done = this.#receive();
  }

  /** The bound address. */
  get addr(): Deno.NetAddr {
    return this.#socket.addr as Deno.NetAddr;
  }

  /** Flows open now. */
  get flows(): number {
    return this.#flows.size;
  }

  /** Stops receiving and closes every flow. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#sweeper);
    try {
      this.#socket.close();
    } catch { /* already closed */ }
    await this.#done;
    const flows = [...this.#flows.values()];
    for (const f of flows) this.#end(f);
    await Promise.all(flows.map((f) => f.done));
  }

  #sweep(): void {
    const limit = this.#opts.idleTimeoutMs ?? 60_000;
    const now = Date.now();
    for (const f of this.#flows.values()) if (now - f.lastActive >= limit) this.#end(f);
  }

  #end(f: Flow): void {
    const key = flowKey(f.client);
    if (this.#flows.get(key) !== f) return;
    this.#flows.delete(key);
    f.endpoint.inflight--;
    f.route.metrics.open.dec();
    try {
      f.upstream.close();
    } catch { /* already closed */ }
  }

  async #receive(): Promise<void> {
    // One buffer for the loop: each datagram is sent on before the next is received.
    const buf = new Uint8Array(MAX_DATAGRAM);
    for (;;) {
      let data: Uint8Array;
      let from: Deno.Addr;
      try {
        [data, from] = await this.#socket.receive(buf);
      } catch (e) {
        if (this.#closed || e instanceof Deno.errors.BadResource) return;
        this.#opts.logger.warn("udp receive failed", { port: this.#opts.port, error: String(e) });
        continue;
      }
      const client = from as Deno.NetAddr;
      let flow = this.#flows.get(flowKey(client));
      if (!flow) {
        const opened = this.#open(client);
        if (!opened) continue;
        flow = opened;
      }
      flow.lastActive = Date.now();
      flow.route.metrics.bytesIn.inc(data.length);
      try {
        await flow.upstream.send(data, {
          transport: "udp",
          hostname: flow.endpoint.address,
          port: flow.endpoint.port,
        });
      } catch (e) {
        this.#opts.logger.debug("udp send to endpoint failed", {
          endpoint: flow.endpoint.key,
          error: String(e),
        });
        if (this.#opts.pool.failure(flow.endpoint)) this.#end(flow);
      }
    }
  }

  #open(client: Deno.NetAddr): Flow | null {
    const root = this.#opts.route();
    const log = this.#opts.logger;
    if (!root) return null;
    const target = root.split?.backends.next() ?? root;
    const decision = target.access.checkL4(client.hostname);
    if (!decision.allowed) {
      root.metrics.denied("acl").inc();
      if (log.enabled("debug")) {
        log.debug("udp datagram dropped", { service: root.key, reason: decision.reason });
      }
      return null;
    }
    const endpoint = this.#opts.pool.pick(candidatesFor(target, decision.destinations));
    if (!endpoint) {
      root.metrics.denied("no_endpoint").inc();
      log.warn("udp datagram dropped: no ready endpoint", { service: target.key });
      return null;
    }
    const upstream = Deno.listenDatagram({
      transport: "udp",
      hostname: endpoint.address.includes(":") ? "::" : "0.0.0.0",
      port: 0,
    });
    const flow: Flow = {
      client,
      upstream,
      endpoint,
      route: root,
      lastActive: Date.now(),
      done: Promise.resolve(),
    };
    endpoint.inflight++;
    root.metrics.requests.inc();
    root.metrics.open.inc();
    this.#flows.set(flowKey(client), flow);
    flow.done = this.#replies(flow);
    if (log.enabled("debug")) {
      log.debug("udp flow", { service: root.key, client: flowKey(client), endpoint: endpoint.key });
    }
    return flow;
  }

  /** Replies from the endpoint go back to the flow's client, from the service port. */
  async #replies(flow: Flow): Promise<void> {
    const buf = new Uint8Array(MAX_DATAGRAM);
    for (;;) {
      let data: Uint8Array;
      let from: Deno.NetAddr;
      try {
        const [d, f] = await flow.upstream.receive(buf);
        data = d;
        from = f as Deno.NetAddr;
      } catch {
        return; // the flow was closed
      }
      // Only the endpoint may answer through this flow.
      if (from.port !== flow.endpoint.port || from.hostname !== flow.endpoint.address) continue;
      flow.lastActive = Date.now();
      this.#opts.pool.success(flow.endpoint);
      flow.route.metrics.bytesOut.inc(data.length);
      try {
        await this.#socket.send(data, flow.client);
      } catch {
        if (this.#closed) return;
      }
    }
  }
}

function flowKey(a: Deno.NetAddr): string {
  return `${a.hostname}|${a.port}`;
}
