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
