import type { Logger } from "./log.ts";
import { METRICS_CONTENT_TYPE } from "./metrics.ts";
import { serveSmallHttp } from "./small_http.ts";

/** What the API shows; the caller owns the state and the API only reads it. */
export interface ApiSource {
  /** The MeshConfig in force, or `null` before the first one. */
  config(): unknown;
  /** One entry per service port. */
  services(): unknown[];
  /** Ready once a config is applied and every listener is bound. */
  ready(): boolean;
  /** Why it is not ready, for `/readyz`; "no config applied yet" when absent. */
  notReadyReason?(): string;
  /** Extra detail for `/api/status`: last load errors and the like. */
  status(): unknown;
  /** `/metrics` in the Prometheus text format (gathered from the proxy workers, when several). */
  metrics(): string | Promise<string>;
  /** `/api/status/nodes`: what the leader knows of every node; absent when not distributing. */
  nodes?: () => unknown;
}

/**
 * What one listener serves: `api` the `/api/*` endpoints, `health` `/healthz` and `/readyz`,
 * `metrics` `/metrics`.
 */
export type ApiPart = "api" | "health" | "metrics";

/** Options for {@linkcode serveApi}. */
export interface ApiOptions {
  hostname: string;
  port: number;
  source: ApiSource;
  logger: Logger;
  /** What this listener serves; default all of it. */
  serves?: readonly ApiPart[];
  /** Sets SO_REUSEPORT, so a successor meshd can bind the same port before this one leaves. */
  reusePort?: boolean;
  /** The listener's name in logs; default "api". */
  name?: string;
}

/** A running API server. */
export interface ApiServer {
  addr: Deno.NetAddr;
  shutdown(): Promise<void>;
}

/**
 * Serves meshd's HTTP API: `GET /api/config`, `/api/services`, `/api/status`,
 * `/api/status/nodes`, `/metrics`,
 * `/healthz` and `/readyz`, or the part of it `serves` names (a health port answers
 * `/healthz` and `/readyz` alone, so the probes' port shows no config). Resolves once the port
 * is bound. One request per connection, on {@linkcode serveSmallHttp}: these ports face the
 * node network (see there why not `Deno.serve`).
 *
 * @example
 * ```ts
 * const api = await serveApi({ hostname: "127.0.0.1", port: 9000, source, logger });
 * ```
 */
export function serveApi(options: ApiOptions): Promise<ApiServer> {
  const { source } = options;
  const serves = new Set<ApiPart>(options.serves ?? ["api", "health", "metrics"]);
  const partOf = (path: string): ApiPart =>
    path === "/healthz" || path === "/readyz" ? "health" : path === "/metrics" ? "metrics" : "api";
  const offered = [
    ...(serves.has("api")
      ? ["/api/config", "/api/services", "/api/status", "/api/status/nodes"]
      : []),
    ...(serves.has("metrics") ? ["/metrics"] : []),
    ...(serves.has("health") ? ["/healthz", "/readyz"] : []),
  ];
  const name = options.name ?? "api";
  const json = (body: unknown, status = 200): Response =>
    new Response(JSON.stringify(body, null, 2) + "\n", {
      status,
      headers: { "content-type": "application/json" },
    });
  const text = (body: string, status = 200): Response =>
    new Response(body + "\n", { status, headers: { "content-type": "text/plain; charset=utf-8" } });

  const handler = (req: Request): Response | Promise<Response> => {
    const path = new URL(req.url).pathname;
    if (req.method !== "GET" && req.method !== "HEAD") {
      return text(`Method ${req.method} is not allowed`, 405);
    }
    if (!serves.has(partOf(path))) {
      return text(`No such endpoint "${path}" on the ${name} port; try ${offered.join(", ")}`, 404);
    }
    switch (path) {
      case "/healthz":
        return text("ok");
      case "/readyz":
        return source.ready()
          ? text("ready")
          : text(`not ready: ${source.notReadyReason?.() || "no config applied yet"}`, 503);
      case "/api/config": {
        const c = source.config();
        return c === null ? json({ error: "no config applied yet" }, 503) : json(c);
      }
      case "/api/services":
        return json(source.services());
      case "/api/status":
        return json(source.status());
      case "/api/status/nodes":
        return source.nodes
          ? json(source.nodes())
          : json({ error: "this meshd gets its config from files: there are no nodes" }, 404);
      case "/metrics": {
        const headers = { "content-type": METRICS_CONTENT_TYPE };
        const body = source.metrics();
        return typeof body === "string"
          ? new Response(body, { headers })
          : body.then((b) => new Response(b, { headers }));
      }
      default:
        return text(`No such endpoint "${path}"; try ${offered.join(", ")}`, 404);
    }
  };

  let server: ApiServer;
  try {
    server = serveSmallHttp({
      hostname: options.hostname,
      port: options.port,
      reusePort: options.reusePort,
      logger: options.logger,
      name,
      handler,
    });
  } catch (e) {
    return Promise.reject(e);
  }
  options.logger.info(`${name} listening`, {
    address: `${server.addr.hostname}:${server.addr.port}`,
  });
  return Promise.resolve(server);
}
