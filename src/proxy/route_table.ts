import type { MeshConfig, MeshPort, MeshService } from "../topology/mod.ts";

/** One service port the proxy can send traffic to. */
export interface Route {
  /** `namespace/name:port`, the key for per-port state such as the balancer's position. */
  key: string;
  service: MeshService;
  port: MeshPort;
}

/** Everything the proxy looks up per request or connection, built once per config. */
export interface RouteTable {
  version: number;
  /** HTTP routes by `host:port`, and by bare `host` where that is unambiguous. */
  http: Map<string, Route>;
  /** TCP routes by proxy listen port. */
  tcp: Map<number, Route>;
}

/**
 * Builds the lookup tables for a config. Pure.
 *
 * An HTTP service port is reached as `<service>.<namespace>.<domain>:<port>`; a Host header
 * without a port means port 80, or the service's only HTTP port when it has no port 80.
 */
export function buildRouteTable(config: MeshConfig): RouteTable {
  const http = new Map<string, Route>();
  const tcp = new Map<number, Route>();
  const domain = config.domain.toLowerCase().replace(/^\.+|\.+$/g, "");
  for (const service of config.services) {
    const host = `${service.name}.${service.namespace}.${domain}`;
    const httpPorts = service.ports.filter((p) => p.protocol === "http");
    for (const port of service.ports) {
      const route = { key: `${service.namespace}/${service.name}:${port.port}`, service, port };
      if (port.protocol === "http") {
        http.set(`${host}:${port.port}`, route);
        if (port.port === 80 || (httpPorts.length === 1 && !http.has(host))) http.set(host, route);
      } else if (port.protocol === "tcp" && port.listenPort !== null) {
        tcp.set(port.listenPort, route);
      }
    }
  }
  return { version: config.version, http, tcp };
}

/** Finds the route for a Host header (`name.ns.mesh`, `name.ns.mesh:8080`, any case). */
export function lookupHttpRoute(table: RouteTable, hostHeader: string | null): Route | undefined {
  if (!hostHeader) return undefined;
  let host = hostHeader.trim().toLowerCase();
  let port = "";
  const m = /^(.*?)(?::(\d+))?$/.exec(host);
  if (m) {
    host = m[1]!;
    port = m[2] ?? "";
  }
  host = host.replace(/\.$/, ""); // a fully qualified name may end with a dot
  return port ? table.http.get(`${host}:${port}`) : table.http.get(host);
}
