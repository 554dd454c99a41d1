import type { MeshConfig, MeshPort } from "../topology/mod.ts";

/** Which of the proxy workers a share is for. */
export interface WorkerSlot {
  /** From 0 to `count - 1`. */
  index: number;
  /** Proxy workers in all (HTTP workers alone when there is an L4 worker). */
  count: number;
  /**
   * What the worker serves: every port (default), HTTP ports alone (an HTTP worker beside an L4
   * worker), or TCP and UDP ports alone (the L4 worker, `--l4-worker`: one, so it binds every
   * UDP port).
   */
  role?: "all" | "http" | "l4";
}

/** Ports of this meshd by protocol: see {@linkcode siblingPorts}. */
export interface OwnPorts {
  tcp: ReadonlySet<number>;
  udp: ReadonlySet<number>;
}

/**
 * The ports of `config` that a proxy of `role` does not serve and another proxy of the same
 * meshd does: the HTTP entrypoint (`httpPort`) for the L4 worker, the TCP and UDP ports for an
 * HTTP proxy beside it. An endpoint at one of them is this meshd as much as one at a listener
 * of its own: a forwarding loop. Empty for a proxy that serves every port. Pure.
 *
 * @example
 * ```ts
 * const own = siblingPorts(config, "http", 5000); // the L4 worker's TCP and UDP ports
 * ```
 */
export function siblingPorts(
  config: MeshConfig,
  role: "all" | "http" | "l4",
  httpPort: number,
): OwnPorts {
  const tcp = new Set<number>();
  const udp = new Set<number>();
  if (role === "l4") tcp.add(httpPort);
  if (role === "http") {
    for (const s of config.services) {
      for (const p of s.ports) {
        if (p.listenPort === null || p.protocol === "http") continue;
        (p.protocol === "udp" ? udp : tcp).add(p.listenPort);
      }
    }
  }
  return { tcp, udp };
}

/**
 * The part of `config` one proxy worker of `count` serves. Every worker gets every HTTP and TCP
 * route (they all bind those ports with SO_REUSEPORT and the kernel spreads connections). A UDP
 * port is bound by one worker alone, the one whose index is its port modulo `count`: Deno binds
 * UDP with SO_REUSEADDR only, under which the socket bound last takes every datagram, so a
 * second worker on the port would serve nothing. A rate limit is split evenly, so the workers
 * together admit what the Service asks (burst at least 1 each). Beside an L4 worker
 * (`--l4-worker`), HTTP workers get the HTTP ports alone and the L4 worker every TCP and UDP
 * port. Pure; the config is not changed.
 *
 * @example
 * ```ts
 * worker.postMessage(workerShare(config, { index: 1, count: 2 }));
 * ```
 */
export function workerShare(config: MeshConfig, slot: WorkerSlot): MeshConfig {
  const { index, count } = slot;
  const role = slot.role ?? "all";
  if (count <= 1 && role === "all") return config;
  const serves = (p: MeshPort) =>
    role === "http"
      ? p.protocol === "http"
      : role === "l4"
      ? p.protocol !== "http"
      : p.protocol !== "udp" || p.listenPort === null || p.listenPort % count === index;
  return {
    ...config,
    services: config.services.map((s) => {
      const ports = s.ports.filter(serves);
      const split = count > 1 && role !== "l4" && s.rateLimit !== null;
      const rateLimit = split
        ? {
          average: s.rateLimit!.average / count,
          burst: Math.max(1, Math.ceil(s.rateLimit!.burst / count)),
        }
        : s.rateLimit;
      return ports.length === s.ports.length && !split ? s : { ...s, ports, rateLimit };
    }),
  };
}
