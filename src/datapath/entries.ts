import type { MeshConfig, MeshPort, MeshService } from "../topology/mod.ts";
import { MAX_BACKENDS } from "./layout.ts";

/** One address a socket can be sent to. */
export interface SockAddr {
  address: string;
  port: number;
}

/**
 * One mesh service address as the eBPF hooks see it: a connect or sendmsg to `address:port`
 * over `protocol` goes to one of `backends`.
 */
export interface DatapathEntry {
  family: 4 | 6;
  address: string;
  port: number;
  protocol: "tcp" | "udp";
  /** Ready endpoints of a plain TCP or UDP port, or this node's meshd listener. */
  backends: SockAddr[];
  /** True when `backends` is meshd's listener: the port needs the L7 proxy. */
  redirect: boolean;
  /** `namespace/name:port` of the service port, for logs. */
  service: string;
}

/** Where this node's meshd listens, for ports the eBPF path hands to the L7 proxy. */
export interface ProxyListener {
  /** meshd's address on this node for IPv4 clients; none leaves such ports to the userspace path. */
  ipv4?: string;
  /** The same for IPv6 clients. */
  ipv6?: string;
  /** The HTTP entrypoint's port, shared by every HTTP service port. */
  httpPort: number;
}

/** The mesh addresses of each service, by `namespace/name`. */
export type MeshAddresses = ReadonlyMap<
  string,
  { ipv4: readonly string[]; ipv6: readonly string[] }
>;

/**
 * Whether the kernel alone can serve a port: plain L4 (TCP or UDP), with no TrafficSplit and no
 * access rules to enforce. Everything else needs meshd's proxy.
 */
export function plainL4(p: MeshPort): boolean {
  return (p.protocol === "tcp" || p.protocol === "udp") && p.split === null && p.access === null;
}

/** The mesh addresses of a file-provider config: each Service's own ClusterIP. */
export function clusterIPAddresses(config: MeshConfig): MeshAddresses {
  const out = new Map<string, { ipv4: string[]; ipv6: string[] }>();
  for (const s of config.services) {
    if (!s.clusterIP || s.clusterIP === "None") continue;
    const v6 = s.clusterIP.includes(":");
    out.set(`${s.namespace}/${s.name}`, {
      ipv4: v6 ? [] : [s.clusterIP],
      ipv6: v6 ? [s.clusterIP] : [],
    });
  }
  return out;
}

function portEntry(
  s: MeshService,
  p: MeshPort,
  family: 4 | 6,
  address: string,
  proxy: ProxyListener,
): DatapathEntry | null {
  const protocol = p.protocol === "udp" ? "udp" : "tcp";
  const service = `${s.namespace}/${s.name}:${p.port}`;
  if (plainL4(p)) {
    const backends = p.endpoints
      .filter((e) => e.ready && e.address.includes(":") === (family === 6))
      .slice(0, MAX_BACKENDS)
      .map((e) => ({ address: e.address, port: e.port }));
    // No ready endpoint: the connect goes on to the mesh address and the userspace path.
    if (backends.length === 0) return null;
    return { family, address, port: p.port, protocol, backends, redirect: false, service };
  }
  const listener = family === 4 ? proxy.ipv4 : proxy.ipv6;
  const port = p.listenPort ?? (p.protocol === "http" ? proxy.httpPort : null);
  if (!listener || port === null) return null;
  return {
    family,
    address,
    port: p.port,
    protocol,
    backends: [{ address: listener, port }],
    redirect: true,
    service,
  };
}

/**
 * What the eBPF maps should hold for `config`: one entry per mesh address and service port.
 * Pure.
 */
export function datapathEntries(
  config: MeshConfig,
  addresses: MeshAddresses,
  proxy: ProxyListener,
): DatapathEntry[] {
  const out: DatapathEntry[] = [];
  for (const s of config.services) {
    const a = addresses.get(`${s.namespace}/${s.name}`);
    if (!a) continue;
    for (const p of s.ports) {
      for (const v4 of a.ipv4) {
        const e = portEntry(s, p, 4, v4, proxy);
        if (e) out.push(e);
      }
      for (const v6 of a.ipv6) {
        const e = portEntry(s, p, 6, v6, proxy);
        if (e) out.push(e);
      }
    }
  }
  return out;
}
