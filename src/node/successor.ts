/**
 * How a meshd that is told to stop sees that its successor on the node has bound the same
 * ports (both bind with SO_REUSEPORT): the kernel's socket tables of this network namespace,
 * `/proc/net/{tcp,tcp6,udp,udp6}`, list one more socket on each port.
 *
 * @module
 */

/** The ports a meshd listens on. */
export interface ListeningPorts {
  tcp: readonly number[];
  udp: readonly number[];
  /**
   * Sockets this meshd itself holds on a port, where more than one: with `--workers N`, each
   * proxy worker binds the HTTP and TCP ports. A port not listed holds one.
   */
  own?: { tcp?: ReadonlyMap<number, number>; udp?: ReadonlyMap<number, number> };
}

/** Reads one of the socket tables; throws when it cannot. */
export type ReadTable = (name: "tcp" | "tcp6" | "udp" | "udp6") => Promise<string>;

/** TCP_LISTEN in include/net/tcp_states.h. */
const TCP_LISTEN = "0A";
/** TCP_CLOSE, the state of a UDP socket that is bound and not connected. */
const UDP_UNCONNECTED = "07";

/**
 * Counts the sockets per local port in one `/proc/net/{tcp,udp}[6]` table: listening ones
 * for TCP, bound and unconnected ones for UDP. Pure, for tests.
 *
 * @example
 * ```ts
 * const n = countSockets(await Deno.readTextFile("/proc/net/tcp"), "tcp").get(5000) ?? 0;
 * ```
 */
export function countSockets(table: string, proto: "tcp" | "udp"): Map<number, number> {
  const want = proto === "tcp" ? TCP_LISTEN : UDP_UNCONNECTED;
  const out = new Map<number, number>();
  for (const line of table.split("\n").slice(1)) {
    // "  0: 0100007F:1388 00000000:0000 0A ...": local address, remote address, state.
    const f = line.trim().split(/\s+/);
    if (f.length < 4 || f[3] !== want) continue;
    const port = parseInt(f[1]!.slice(f[1]!.lastIndexOf(":") + 1), 16);
    if (Number.isInteger(port)) out.set(port, (out.get(port) ?? 0) + 1);
  }
  return out;
}

const readProc: ReadTable = (name) => Deno.readTextFile(`/proc/net/${name}`);

/**
 * Whether another process has bound every port in `ports` next to this one: each TCP port has
 * more than one listening socket, each UDP port more than one bound socket, in this network
 * namespace. meshd holds one socket per port (or `ports.own` of them); a successor that has
 * applied its config holds the same ports. A table that cannot be read counts as no successor.
 */
export async function successorBound(
  ports: ListeningPorts,
  read: ReadTable = readProc,
): Promise<boolean> {
  const count = async (proto: "tcp" | "udp"): Promise<Map<number, number>> => {
    const total = new Map<number, number>();
    for (const name of proto === "tcp" ? ["tcp", "tcp6"] as const : ["udp", "udp6"] as const) {
      let text: string;
      try {
        text = await read(name);
      } catch {
        if (name.endsWith("6")) continue; // no IPv6 on this node
        throw new Error(`cannot read /proc/net/${name}`);
      }
      for (const [p, n] of countSockets(text, proto)) total.set(p, (total.get(p) ?? 0) + n);
    }
    return total;
  };
  try {
    const tcp = ports.tcp.length > 0 ? await count("tcp") : new Map<number, number>();
    const udp = ports.udp.length > 0 ? await count("udp") : new Map<number, number>();
    const own = (proto: "tcp" | "udp", p: number) => ports.own?.[proto]?.get(p) ?? 1;
    return ports.tcp.every((p) => (tcp.get(p) ?? 0) > own("tcp", p)) &&
      ports.udp.every((p) => (udp.get(p) ?? 0) > own("udp", p));
  } catch {
    return false;
  }
}
