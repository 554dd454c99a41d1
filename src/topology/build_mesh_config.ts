import type { Diagnostic, MeshConfig, MeshPort, MeshService } from "./mesh_config.ts";
import { sameJson } from "./same_json.ts";
import type { Topology, TopologyService } from "./build_topology.ts";

/** An inclusive range of ports. */
export interface PortRange {
  first: number;
  last: number;
}

/** Options for {@linkcode buildMeshConfig}. */
export interface BuildMeshConfigOptions {
  /** The config in force: its version and its listen ports are carried forward. */
  previous?: MeshConfig | null;
  /** The mesh DNS domain. Default `mesh`. */
  domain?: string;
  /** Proxy ports for TCP service ports. Default 10000-14999. */
  tcpPorts?: PortRange;
  /** Proxy ports for UDP service ports. Default 15000-19999. */
  udpPorts?: PortRange;
}

/** The config, and what could not be placed in it. */
export interface BuildMeshConfigResult {
  config: MeshConfig;
  diagnostics: Diagnostic[];
}

/** Default proxy port ranges, far above the 25-port pool that Traefik Mesh capped them at. */
export const DEFAULT_TCP_PORTS: PortRange = { first: 10000, last: 14999 };
/** See {@linkcode DEFAULT_TCP_PORTS}. */
export const DEFAULT_UDP_PORTS: PortRange = { first: 15000, last: 19999 };

/**
 * Turns a {@linkcode Topology} into the versioned {@linkcode MeshConfig}. Pure. The version
 * grows only when the content changes, and a TCP or UDP service port keeps its proxy port for
 * as long as it exists, so clients and shadow Services never see ports move.
 *
 * @example
 * ```ts
 * const { config } = buildMeshConfig(topology, { previous: current });
 * ```
 */
export function buildMeshConfig(
  topology: Topology,
  options: BuildMeshConfigOptions = {},
): BuildMeshConfigResult {
  const previous = options.previous ?? null;
  const diagnostics: Diagnostic[] = [];
  const ranges = {
    tcp: options.tcpPorts ?? DEFAULT_TCP_PORTS,
    udp: options.udpPorts ?? DEFAULT_UDP_PORTS,
  };
  const listenPortOf = portAllocator(topology, previous, ranges);

  // An unchanged service keeps the previous config's object, so whoever compares the two
  // configs (the delta to the nodes, the proxy's routes) can skip it by reference.
  const oldOf = previousServices(previous);
  const services: MeshService[] = [];
  for (const s of topology.services) {
    const ports: MeshPort[] = [];
    for (const p of s.ports) {
      let listenPort: number | null = null;
      if (p.protocol !== "http") {
        listenPort = listenPortOf(portKey(s.namespace, s.name, p.port, p.protocol), p.protocol);
        if (listenPort === null) {
          const r = ranges[p.protocol];
          diagnostics.push({
            level: "error",
            object: `Service/${s.namespace}/${s.name}`,
            message: `Cannot give ${p.protocol.toUpperCase()} port ${p.port} a proxy port: ` +
              `all of ${r.first}-${r.last} are taken`,
          });
          continue;
        }
      }
      ports.push({ ...p, listenPort });
    }
    if (ports.length === 0) continue;
    const old = oldOf(s);
    // Made from this very topology service, with the same proxy ports: the same service.
    if (old && madeFrom.get(old) === s && sameListenPorts(old.ports, ports)) {
      services.push(old);
      continue;
    }
    const built: MeshService = { ...s, ports };
    const kept = old && sameJson(old, built) ? old : built;
    madeFrom.set(kept, s);
    services.push(kept);
  }
  const body = {
    domain: options.domain ?? "mesh",
    acl: topology.acl,
    services,
    identities: topology.acl ? topology.identities : {},
  };
  // The same table keeps its object too: the proxy then has no identity to update.
  if (previous && sameJson(previous.identities, body.identities)) {
    body.identities = previous.identities;
  }
  if (previous && sameContent(previous, body)) return { config: previous, diagnostics };
  return { config: { version: (previous?.version ?? 0) + 1, ...body }, diagnostics };
}

/**
 * The topology service each MeshService was made from. The topology builder gives an
 * unchanged service as the same object build after build (when there are no splits or ACL),
 * so a service made from it again is known equal without a comparison of every field. Both
 * are never changed once made.
 */
const madeFrom = new WeakMap<MeshService, TopologyService>();

function sameListenPorts(a: readonly MeshPort[], b: readonly MeshPort[]): boolean {
  return a.length === b.length &&
    a.every((p, i) =>
      p.port === b[i]!.port && p.protocol === b[i]!.protocol && p.listenPort === b[i]!.listenPort
    );
}

/**
 * Finds the previous config's service of the same namespace and name. Services come in the
 * same order build after build, so each is first looked for where the last one found left
 * off; an index of every key is made only when that misses (a service added or removed).
 */
function previousServices(
  previous: MeshConfig | null,
): (s: { namespace: string; name: string }) => MeshService | undefined {
  const list = previous?.services ?? [];
  let next = 0;
  let index: Map<string, MeshService> | null = null;
  return (s) => {
    const at = list[next];
    if (at && at.namespace === s.namespace && at.name === s.name) {
      next++;
      return at;
    }
    index ??= new Map(list.map((p) => [`${p.namespace}/${p.name}`, p]));
    return index.get(`${s.namespace}/${s.name}`);
  };
}

/**
 * Hands out proxy ports for TCP and UDP service ports, by {@linkcode portKey}: a port the
 * previous config gave and that is still in use and in range keeps its number; only then are
 * new ones handed out, lowest first. `null` when the range is full.
 */
function portAllocator(
  topology: Topology,
  previous: MeshConfig | null,
  ranges: Record<"tcp" | "udp", PortRange>,
): (key: string, proto: "tcp" | "udp") => number | null {
  const held = new Map<string, number>();
  for (const s of previous?.services ?? []) {
    for (const p of s.ports) {
      if (p.listenPort !== null) {
        held.set(portKey(s.namespace, s.name, p.port, p.protocol), p.listenPort);
      }
    }
  }
  const wanted = new Set<string>();
  for (const s of topology.services) {
    for (const p of s.ports) {
      if (p.protocol !== "http") wanted.add(portKey(s.namespace, s.name, p.port, p.protocol));
    }
  }
  const used = { tcp: new Set<number>(), udp: new Set<number>() };
  for (const [k, port] of held) {
    const proto = k.endsWith("/udp") ? "udp" : "tcp";
    if (wanted.has(k) && port >= ranges[proto].first && port <= ranges[proto].last) {
      used[proto].add(port);
    } else held.delete(k);
  }
  const next = { tcp: ranges.tcp.first, udp: ranges.udp.first };
  const allocate = (proto: "tcp" | "udp"): number | null => {
    while (next[proto] <= ranges[proto].last && used[proto].has(next[proto])) next[proto]++;
    if (next[proto] > ranges[proto].last) return null;
    used[proto].add(next[proto]);
    return next[proto]++;
  };
  return (key, proto) => held.get(key) ?? allocate(proto);
}

function portKey(ns: string, name: string, port: number, proto: string): string {
  return `${ns}/${name}:${port}/${proto}`;
}

function sameContent(a: MeshConfig, b: Omit<MeshConfig, "version">): boolean {
  return a.domain === b.domain && a.acl === b.acl &&
    a.services.length === b.services.length &&
    a.services.every((s, i) => s === b.services[i]) &&
    a.identities === b.identities;
}
