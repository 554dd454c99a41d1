import type { MeshConfig } from "../topology/mod.ts";

/** Which of the proxy workers a share is for. */
export interface WorkerSlot {
  /** From 0 to `count - 1`. */
  index: number;
  /** Proxy workers in all. */
  count: number;
}

/**
 * The part of `config` one proxy worker of `count` serves. Every worker gets every HTTP and TCP
 * route (they all bind those ports with SO_REUSEPORT and the kernel spreads connections). A UDP
 * port is bound by one worker alone, the one whose index is its port modulo `count`: Deno binds
 * UDP with SO_REUSEADDR only, under which the socket bound last takes every datagram, so a
 * second worker on the port would serve nothing. A rate limit is split evenly, so the workers
 * together admit what the Service asks (burst at least 1 each). Pure; the config is not changed.
 *
 * @example
 * ```ts
 * worker.postMessage(workerShare(config, { index: 1, count: 2 }));
 * ```
 */
export function workerShare(config: MeshConfig, slot: WorkerSlot): MeshConfig {
  const { index, count } = slot;
  if (count <= 1) return config;
  return {
    ...config,
    services: config.services.map((s) => {
      const ports = s.ports.filter((p) =>
        p.protocol !== "udp" || p.listenPort === null || p.listenPort % count === index
      );
      const rateLimit = s.rateLimit && {
        average: s.rateLimit.average / count,
        burst: Math.max(1, Math.ceil(s.rateLimit.burst / count)),
      };
      return ports.length === s.ports.length && !rateLimit ? s : { ...s, ports, rateLimit };
    }),
  };
}
