/**
 * The caps that keep the proxy under the process's open-file limit: connections (HTTP
 * entrypoint and TCP listeners, in all and per source address) and UDP flows (in all and per
 * listener). Each connection costs a descriptor for the client and usually one for the
 * backend; each UDP flow costs one socket.
 */

/** The caps in force. */
export interface ProxyLimits {
  /** Client connections open at once over the HTTP entrypoint and every TCP listener. */
  maxConnections: number;
  /** Of those, from one source address. */
  maxConnectionsPerSource: number;
  /** UDP flows open at once over every UDP listener; the least recently active is evicted. */
  maxUdpFlows: number;
  /** UDP flows open at once on one UDP listener. */
  maxUdpFlowsPerListener: number;
  /** UDP flows open at once from one source address; over it, the source's own oldest goes. */
  maxUdpFlowsPerSource: number;
}

/**
 * The open-file limit assumed when `/proc/self/limits` cannot be read. Deno lets only
 * `--allow-all` read it (the compiled binary has that; `deno run` with narrower permissions, as
 * the quickstart's, does not). Deno raises the soft limit to the hard one at start, and hard
 * limits under 4096 are rare; with 1024 a load of 50 connections from one address was already
 * over its per-source cap. Should the real limit be lower, an accept that fails with EMFILE only
 * pauses the listener.
 */
export const FALLBACK_FD_LIMIT = 4096;
/** What "unlimited" is taken to mean. */
const UNLIMITED_FD_LIMIT = 1_048_576;

/**
 * The soft open-file limit (RLIMIT_NOFILE) of this process, from `/proc/self/limits`; `null`
 * when it cannot be read (not Linux, or no read permission).
 */
export function readFdLimit(
  read: () => string = () => Deno.readTextFileSync("/proc/self/limits"),
): number | null {
  let text: string;
  try {
    text = read();
  } catch {
    return null;
  }
  const m = /^Max open files\s+(\S+)/m.exec(text);
  if (!m) return null;
  if (m[1] === "unlimited") return UNLIMITED_FD_LIMIT;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) && n > 0 ? n : null;
}

/**
 * Caps for an open-file limit of `fdLimit`, leaving room for meshd's own files: connections
 * 35% of it (each takes up to two descriptors, so 70%), UDP flows 10%, so at most 80% goes to
 * traffic. One source gets a sixteenth of the connections, or 64 (a busy client's pool) if
 * more, but never over an eighth: filling the proxy takes 16 addresses wherever the open-file
 * limit is over about 3000, and 8 under that; a quarter let 4 addresses take every slot. One UDP listener gets half of the flows,
 * one source a sixteenth of the flows (at least 16, at most the per-listener cap: a client's
 * resolver may use a new source port per query, and evicting its own stale flows costs it
 * nothing). Values set in `given` are kept; the per-source and per-listener caps never exceed
 * the total.
 *
 * @example
 * ```ts
 * defaultLimits(20_000); // 7000 connections, 437 per source, 2000 UDP flows, 1000 per listener, 125 per source
 * ```
 */
export function defaultLimits(fdLimit: number, given: Partial<ProxyLimits> = {}): ProxyLimits {
  const maxConnections = given.maxConnections ?? Math.max(16, Math.floor(fdLimit * 0.35));
  const maxUdpFlows = given.maxUdpFlows ?? Math.max(16, Math.floor(fdLimit * 0.1));
  const maxUdpFlowsPerListener = Math.min(
    maxUdpFlows,
    given.maxUdpFlowsPerListener ?? Math.max(1, Math.floor(maxUdpFlows / 2)),
  );
  return {
    maxConnections,
    maxConnectionsPerSource: Math.min(
      maxConnections,
      given.maxConnectionsPerSource ??
        Math.max(1, Math.floor(maxConnections / 16), Math.min(64, Math.floor(maxConnections / 8))),
    ),
    maxUdpFlows,
    maxUdpFlowsPerListener,
    maxUdpFlowsPerSource: Math.min(
      maxUdpFlows,
      given.maxUdpFlowsPerSource ??
        Math.min(maxUdpFlowsPerListener, Math.max(16, Math.floor(maxUdpFlows / 16))),
    ),
  };
}
