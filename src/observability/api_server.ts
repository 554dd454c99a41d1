import type { Logger } from "./log.ts";
import { METRICS_CONTENT_TYPE } from "./metrics.ts";

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
  /** `/metrics` in the Prometheus text format. */
  metrics(): string;
  /** `/api/status/nodes`: what the leader knows of every node; absent when not distributing. */
  nodes?: () => unknown;
}

/** Options for {@linkcode serveApi}. */
export interface ApiOptions {
  hostname: string;
  port: number;
  source: ApiSource;
  logger: Logger;
}

/** A running API server. */
export interface ApiServer {
  addr: Deno.NetAddr;
  shutdown(): Promise<void>;
}

/**
 * Serves meshd's HTTP API: `GET /api/config`, `/api/services`, `/api/status`,
 * `/api/status/nodes`, `/metrics`,
 * `/healthz` and `/readyz`. Resolves once the port is bound.
 *
 * @example
 * ```ts
 * const api = await serveApi({ hostname: "127.0.0.1", port: 9000, source, logger });
 * ```
 */
export function serveApi(options: ApiOptions): Promise<ApiServer> {
  const { source } = options;
  const json = (body: unknown, status = 200): Response =>
    new Response(JSON.stringify(body, null, 2) + "\n", {
      status,
      headers: { "content-type": "application/json" },
    });
  const text = (body: string, status = 200): Response =>
    new Response(body + "\n", { status, headers: { "content-type": "text/plain; charset=utf-8" } });

  const handler = (req: Request): Response => {
    const path = new URL(req.url).pathname;
    if (req.method !== "GET" && req.method !== "HEAD") {
      return text(`Method ${req.method} is not allowed`, 405);
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
      case "/metrics":
        return new Response(source.metrics(), {
          headers: { "content-type": METRICS_CONTENT_TYPE },
        });
      default:
        return text(
          `No such endpoint "${path}"; try /api/config, /api/services, /api/status, /api/status/nodes, /metrics, /healthz, /readyz`,
          404,
        );
    }
  };

  return new Promise((resolve, reject) => {
    try {
      const server = Deno.serve({
        hostname: options.hostname,
        port: options.port,
        onListen: (addr) => {
          options.logger.info("api listening", { address: `${addr.hostname}:${addr.port}` });
          resolve({ addr: addr as Deno.NetAddr, shutdown: () => server.shutdown() });
        },
        onError: (e) => {
          options.logger.error("api request failed", { error: String(e) });
          return text("internal error", 500);
        },
      }, handler);
    } catch (e) {
      reject(e);
    }
  });
}
