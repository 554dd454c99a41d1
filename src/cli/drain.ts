import { successorBound } from "../node/mod.ts";
import type { Logger } from "../observability/mod.ts";
import type { DataPlane } from "../proxy/mod.ts";
import type { ApiServers } from "./node_services.ts";
import { UDP_ANSWER_WAIT_MS } from "./node_services.ts";

/** What a drain lets go of, and waits for. */
export interface DrainParts {
  agent: { flush(): Promise<void> };
  proxy: DataPlane;
  servers: ApiServers;
  /** The mesh DNS responder's port while it listens (kube), else null. */
  dnsPort: () => number | null;
  /** `--drain-timeout`; 0: no drain. */
  drainMs: number;
  logger: Logger;
}

/**
 * What meshd does on a signal before it stops. The config applied last is saved. On SIGTERM
 * with --drain-timeout: the probes' port is let go at once (the kubelet probes the successor
 * there), every other port is served until the successor holds it too, then connections in
 * flight finish. All of it within the timeout.
 */
export async function drain(sig: string, parts: DrainParts): Promise<void> {
  const { proxy, drainMs } = parts;
  await parts.agent.flush(); // the config applied last is saved in the background
  if (sig !== "SIGTERM" || drainMs <= 0) return;
  const started = Date.now();
  const deadline = started + drainMs;
  await parts.servers.stopHealth();
  const held = proxy.listening();
  const dns = parts.dnsPort();
  const ports = {
    tcp: [...held.tcp, ...(dns !== null ? [dns] : [])],
    udp: [...held.udp, ...(dns !== null ? [dns] : [])],
    own: held.own,
  };
  const log = parts.logger.with({ room: "node" });
  log.info("draining: serving until a successor holds every port", {
    tcp: ports.tcp.join(","),
    udp: ports.udp.join(","),
    timeoutMs: drainMs,
  });
  // Deno lets only --allow-all read /proc/net (the compiled binary has it).
  await Deno.readTextFile("/proc/net/tcp").catch((e) =>
    log.warn("cannot see a successor's sockets; waiting for the whole drain timeout", {
      error: (e as Error).message,
    })
  );
  let successor = false;
  while (Date.now() < deadline && !(successor = await successorBound(ports))) {
    await new Promise((r) => setTimeout(r, 100));
  }
  await proxy.drain();
  // TCP connections to end, and UDP requests to be answered (the answer leaves through
  // this process's socket: gone with it, the client would never get it).
  const busy = () => proxy.inFlight + proxy.udpAwaitingAnswer(UDP_ANSWER_WAIT_MS);
  const awaiting = proxy.udpAwaitingAnswer(UDP_ANSWER_WAIT_MS);
  if (awaiting > 0) log.info("draining: waiting for answers to UDP datagrams", { awaiting });
  while (busy() > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const open = busy();
  (open > 0 || !successor ? log.warn : log.info).call(log, "drained", {
    successor,
    open,
    ms: Date.now() - started,
  });
}
