import type { MeshService } from "../topology/mod.ts";
import type { ProxyFailure } from "./policy.ts";
import { ATOMIC_WRITE, LineQueue } from "./line_queue.ts";

/** `--access-log`: off, or the format of the lines. */
export type AccessLogMode = "off" | "json" | "logfmt";

/** The format of a Service's lines when only its annotation turns logging on. */
export const ANNOTATION_FORMAT = "json";

/**
 * One access log line: an HTTP request, a TCP connection or a UDP flow at its end, or one
 * refused. Fields that do not apply are left out of the line.
 */
export interface AccessEntry {
  /** When it started, in ms since the epoch. */
  start: number;
  /** The client's address. */
  source: string;
  /** The client's port, when known. */
  sourcePort?: number;
  protocol: "http" | "tcp" | "udp";
  /** `namespace/name:port` of the service port addressed; absent when none answers. */
  service?: string;
  /** `address:port` of the endpoint of the last try. */
  endpoint?: string;
  /** `namespace/name:port` of the backend a TrafficSplit chose, when one did. */
  backend?: string;
  /** HTTP: the status answered (by the backend or by meshd); 0 when none was. */
  status?: number;
  /**
   * Why it ended or was refused: `acl`, `rate_limit`, `circuit_open`, `no_endpoint`, `loop`,
   * `timeout`, `endpoint_failed`, `bad_request`, `client_gone`, `unknown_host`, `reset`
   * (HTTP); `eof`, `error`,
   * `idle_timeout`, `shutdown` (TCP); `idle_timeout`, `evicted`, `endpoint_failed`,
   * `endpoint_removed`, `shutdown` (UDP).
   */
  reason?: string;
  /** For a refusal: meshd's own message, naming the rule that was missing. */
  detail?: string;
  durationMs: number;
  /** Bytes from the client (HTTP: the request body), and to it (HTTP: the response body). */
  bytesIn: number;
  bytesOut: number;
  /** Tries after the first. */
  retries: number;
  method?: string;
  authority?: string;
  /** The path, without the query. */
  path?: string;
  requestId?: string;
}

/** Options for {@linkcode AccessLog}. */
export interface AccessLogOptions {
  /** The `--access-log` flag: the default of every Service, and the format. */
  mode: AccessLogMode;
  /**
   * Takes one line (with its newline) and must not block. Default: a {@linkcode LineQueue} on
   * stdout.
   */
  write?: (line: string) => void;
}

/**
 * The longest line in bytes: a longer one has its long text fields cut (ending in `...`), so
 * that it goes to a pipe in one write and is never mixed with another worker's lines.
 */
export const MAX_LINE = ATOMIC_WRITE;

/**
 * The access log of one proxy. Whether a route logs is decided once per config, when routes
 * are built ({@linkcode AccessLog.forService}): a route that does not log holds `null`, so a
 * request on it costs one field test.
 *
 * @example
 * ```ts
 * const log = new AccessLog({ mode: "json" });
 * log.forService(service)?.write({ start: Date.now(), source: "127.0.0.1", protocol: "tcp",
 *   service: "shop/db:5432", durationMs: 3, bytesIn: 10, bytesOut: 20, retries: 0 });
 * ```
 */
export class AccessLog {
  readonly #mode: AccessLogMode;
  readonly #write: (line: string) => void;
  /** The sink of routes logged in the other format (annotation on, flag off). */
  #annotated: AccessLog | null = null;
  /** Source address to ServiceAccount, as access control reads it; set by the route build. */
  identities: Readonly<Record<string, string>> = {};

  constructor(options: AccessLogOptions) {
    this.#mode = options.mode;
    if (options.write) this.#write = options.write;
    else {
      const q = new LineQueue();
      this.#write = (l) => q.push(l);
    }
  }

  /** The format lines are written in. */
  get format(): "json" | "logfmt" {
    return this.#mode === "logfmt" ? "logfmt" : "json";
  }

  /**
   * The log the routes of `service` write to, or null when they do not log: its
   * `meshd.io/access-log` annotation when set, else the flag. A Service turned on by its
   * annotation while the flag is off logs in {@linkcode ANNOTATION_FORMAT}.
   */
  forService(service: MeshService): AccessLog | null {
    const on = service.accessLog ?? this.#mode !== "off";
    if (!on) return null;
    if (this.#mode !== "off") return this;
    if (!this.#annotated) {
      this.#annotated = new AccessLog({ mode: ANNOTATION_FORMAT, write: this.#write });
    }
    this.#annotated.identities = this.identities;
    return this.#annotated;
  }

  /**
   * The log of requests no service answers (no Host of the mesh, too malformed to route): the
   * flag's, or null when the flag is off (an annotation turns on a Service, not the rest).
   */
  get unrouted(): AccessLog | null {
    return this.#mode === "off" ? null : this;
  }

  /** Writes one line for `e`. */
  write(e: AccessEntry): void {
    const identity = this.identities[e.source];
    const fields: [string, string | number | undefined][] = [
      ["time", new Date(e.start).toISOString()],
      ["protocol", e.protocol],
      ["source", e.sourcePort === undefined ? e.source : hostPort(e.source, e.sourcePort)],
      ["identity", identity],
      ["service", e.service],
      ["backend", e.backend],
      ["endpoint", e.endpoint],
      ["method", e.method],
      ["authority", e.authority],
      ["path", e.path],
      ["request_id", e.requestId],
      ["status", e.status],
      ["reason", e.reason],
      ["detail", e.detail],
      ["duration_ms", Math.round(e.durationMs * 1000) / 1000],
      ["bytes_in", e.bytesIn],
      ["bytes_out", e.bytesOut],
      ["retries", e.retries],
    ];
    const render = this.format === "json" ? jsonLine : logfmtLine;
    let line = render(fields);
    // Cheap test first: a line of MAX_LINE / 3 UTF-16 units or fewer fits in MAX_LINE bytes.
    for (let cut = 256; line.length * 3 > MAX_LINE && byteLength(line) > MAX_LINE; cut >>= 2) {
      for (const f of fields) {
        if (typeof f[1] === "string" && f[1].length > cut) f[1] = f[1].slice(0, cut) + "...";
      }
      line = render(fields);
      if (cut < 16) break;
    }
    this.#write(line);
  }
}

const encoder = new TextEncoder();

function byteLength(s: string): number {
  return encoder.encode(s).length;
}

function hostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

function jsonLine(fields: [string, string | number | undefined][]): string {
  const o: Record<string, string | number> = {};
  for (const [k, v] of fields) if (v !== undefined) o[k] = v;
  return escapeBreaks(JSON.stringify(o)) + "\n";
}

/**
 * What JSON.stringify leaves as it is but a reader may act on: DEL and the C1 controls (NEL
 * ends a line for Unicode-aware splitters, CSI, OSC and DCS start terminal sequences), and the
 * line and paragraph separators. A client's bytes reach them as Latin-1 characters.
 */
const BREAKS = /[\x7f-\x9f\u2028\u2029]/g;

/** `json` (a JSON text) with {@linkcode BREAKS} written as \u escapes. */
function escapeBreaks(json: string): string {
  BREAKS.lastIndex = 0;
  if (!BREAKS.test(json)) return json;
  return json.replace(BREAKS, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

function logfmtLine(fields: [string, string | number | undefined][]): string {
  let s = "";
  for (const [k, v] of fields) {
    if (v === undefined) continue;
    if (s) s += " ";
    s += `${k}=${typeof v === "number" ? v : logfmtValue(v)}`;
  }
  return s + "\n";
}

/** A logfmt value: bare when it has no space, quote, `=` or control byte; else quoted. */
function logfmtValue(v: string): string {
  // deno-lint-ignore no-control-regex -- a control byte must be quoted (escaped)
  if (v !== "" && !/[\s"=\\\x00-\x1f\x7f-\x9f\u2028\u2029]/.test(v)) return v;
  return escapeBreaks(JSON.stringify(v));
}

/** The `reason` of a refusal or failure meshd answered itself. */
export function failureReason(f: ProxyFailure): string {
  switch (f.code) {
    case "acl-denied":
      return "acl";
    case "rate-limited":
      return "rate_limit";
    default:
      return f.code.replaceAll("-", "_");
  }
}

/** An HTTP request no service answered, as {@linkcode logUnrouted} logs it. */
export interface UnroutedRequest {
  /** The client's address and port. */
  source: string;
  sourcePort?: number;
  method?: string;
  authority?: string;
  /** The request target (its query is left out of the line). */
  target?: string;
  /** meshd's answer: a 404 for a Host of no service, a 400 or 431 for a malformed request. */
  failure: ProxyFailure;
}

/**
 * Writes the line of an HTTP request that reached no service (so no service's log): with
 * `reason` `unknown_host` or `bad_request` and meshd's answer in `detail`.
 */
export function logUnrouted(log: AccessLog, r: UnroutedRequest): void {
  const q = r.target?.indexOf("?") ?? -1;
  log.write({
    start: Date.now(),
    source: r.source,
    sourcePort: r.sourcePort,
    protocol: "http",
    method: r.method,
    authority: r.authority,
    path: q >= 0 ? r.target!.slice(0, q) : r.target,
    status: r.failure.status,
    reason: failureReason(r.failure),
    detail: r.failure.message,
    durationMs: 0,
    bytesIn: 0,
    bytesOut: 0,
    retries: 0,
  });
}
