import { KubeConfig } from "@kubernetes/client-node";

/** An answer from the API server other than success, or a request that never got one. */
export class KubeApiError extends Error {
  /** HTTP status; 0 when the server could not be reached. */
  readonly status: number;
  /** The `reason` of a Kubernetes Status, such as `NotFound`, `Conflict`, `Expired`. */
  readonly reason: string;

  constructor(message: string, status: number, reason = "") {
    super(oneLine(message));
    this.name = "KubeApiError";
    this.status = status;
    this.reason = reason;
  }
}

// deno-lint-ignore no-control-regex -- the characters a terminal acts on
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;

/**
 * `text` (which may hold a server's or a file's words) as one line for an error: line breaks
 * and the whitespace around them as one space, other control characters (a terminal's escapes)
 * as `\xNN`, and at most 400 characters.
 */
export function oneLine(text: string): string {
  let s = text.trim().replace(/\s*[\r\n]+\s*/g, " ");
  s = s.replace(CONTROL, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
  return s.length > 400 ? `${s.slice(0, 400)}...` : s;
}

/** Whether `signal` was aborted by its time running out (not by its owner). */
function timedOut(signal: AbortSignal): boolean {
  return signal.reason instanceof DOMException && signal.reason.name === "TimeoutError";
}

/** A raw object as the API returns it. */
export type RawObject = Record<string, unknown>;

/** One event of a watch stream. */
export interface WatchEvent {
  type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK";
  object: RawObject;
}

/**
 * Loads credentials the way kubectl does: `path` when given; inside a Pod, its ServiceAccount;
 * otherwise `$KUBECONFIG` or `~/.kube/config`. Throws one line that says what it tried.
 */
export function loadKubeConfig(
  path?: string,
  env: (k: string) => string | undefined = (k) => Deno.env.get(k),
): KubeConfig {
  const kc = new KubeConfig();
  // Outside a Pod with no kubeconfig file, client-node's loadFromDefault() quietly falls back to
  // http://localhost:8080, and meshd would retry there forever: say where we looked instead.
  if (!path && !env("KUBERNETES_SERVICE_HOST")) noDefaultKubeconfig(env);
  try {
    if (path) kc.loadFromFile(path);
    else if (env("KUBERNETES_SERVICE_HOST")) kc.loadFromCluster();
    else kc.loadFromDefault();
  } catch (e) {
    const from = path ? `"${path}"` : "the Pod's ServiceAccount or the default kubeconfig";
    throw new Error(
      oneLine(`Cannot load Kubernetes credentials from ${from}: ${(e as Error).message}`),
    );
  }
  if (!kc.getCurrentCluster()) {
    throw new Error(
      path
        ? `The kubeconfig "${path}" names no current cluster`
        : "No Kubernetes cluster found: not in a Pod, and no kubeconfig at $KUBECONFIG or " +
          "~/.kube/config; pass --kubeconfig",
    );
  }
  return kc;
}

/**
 * Throws one line naming every place kubectl would look outside a Pod, when none of them holds
 * a kubeconfig file: the files `$KUBECONFIG` lists, else `~/.kube/config`.
 */
function noDefaultKubeconfig(env: (k: string) => string | undefined): void {
  const list = env("KUBECONFIG");
  const files = list
    ? list.split(":").filter((f) => f !== "")
    : [`${env("HOME") ?? "~"}/.kube/config`];
  if (files.some(isFile)) return;
  const where = list
    ? `$KUBECONFIG names ${
      files.map((f) => `"${f}"`).join(", ") || "no file"
    }, none of which exists`
    : `$KUBECONFIG is unset and "${files[0]}" does not exist`;
  throw new Error(
    `No Kubernetes credentials found: not in a Pod (KUBERNETES_SERVICE_HOST is unset), ${where}; ` +
      "pass --kubeconfig",
  );
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** What a request needs from the KubeConfig: TLS material and auth headers. */
interface Credentials {
  ca?: string;
  cert?: string;
  key?: string;
  headers: Record<string, string>;
}

function pem(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === "string") return v;
  if (v instanceof Uint8Array) return new TextDecoder().decode(v);
  if (Array.isArray(v)) return v.map(pem).join("\n");
  return String(v);
}

/**
 * The Kubernetes API. `@kubernetes/client-node`'s KubeConfig loads the credentials and
 * authenticates every request (client certificates, bearer tokens re-read from their file,
 * exec plugins); the bytes go through Deno's own fetch, whose requests and watch streams stop
 * at once when aborted. (The client's bundled fetch does not end an aborted watch under Deno:
 * the connection stays open and the caller is never told.) Requests are plain JSON by path,
 * so one client serves built-in kinds and CRDs alike.
 */
export class KubeApi {
  readonly kc: KubeConfig;
  readonly server: string;
  readonly limits: KubeApiLimits;
  #client: Deno.HttpClient | null = null;
  #tlsKey = "";

  constructor(kc: KubeConfig, limits: KubeApiLimits = DEFAULT_LIMITS) {
    this.kc = kc;
    this.limits = limits;
    const cluster = kc.getCurrentCluster()!;
    this.server = cluster.server.replace(/\/+$/, "");
    if (!this.server.startsWith("https://")) {
      throw new Error(
        `The kubeconfig's cluster "${cluster.name}" has server "${cluster.server}", expected an ` +
          "https:// address (meshd does not talk to the API server in the clear)",
      );
    }
    if (cluster.skipTLSVerify) {
      throw new Error(
        `The kubeconfig's cluster "${cluster.name}" sets insecure-skip-tls-verify, which meshd ` +
          "does not support: give it the cluster's CA (certificate-authority or -data)",
      );
    }
  }

  async #credentials(): Promise<Credentials> {
    const opts: Record<string, unknown> = {};
    await this.kc.applyToHTTPSOptions(opts as never);
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries((opts["headers"] ?? {}) as Record<string, unknown>)) {
      headers[k.toLowerCase()] = String(v);
    }
    if (typeof opts["auth"] === "string") headers["authorization"] = `Basic ${btoa(opts["auth"])}`;
    return { ca: pem(opts["ca"]), cert: pem(opts["cert"]), key: pem(opts["key"]), headers };
  }

  #httpClient(c: Credentials): Deno.HttpClient {
    const key = `${c.ca ?? ""}|${c.cert ?? ""}|${c.key ?? ""}`;
    if (!this.#client || key !== this.#tlsKey) {
      this.#client?.close();
      this.#client = Deno.createHttpClient({
        ...(c.ca ? { caCerts: [c.ca] } : {}),
        ...(c.cert && c.key ? { cert: c.cert, key: c.key } : {}),
      });
      this.#tlsKey = key;
    }
    return this.#client;
  }

  async #fetch(
    method: string,
    path: string,
    body: unknown,
    contentType: string | undefined,
    signal: AbortSignal,
    stream = false,
  ): Promise<Response> {
    const cred = await this.#credentials();
    const headers: Record<string, string> = { ...cred.headers, accept: "application/json" };
    // The API server gzips a watch stream as it flushes each event, and Deno's fetch ends
    // such a body after the first event or two; a watch asks for it uncompressed.
    if (stream) headers["accept-encoding"] = "identity";
    if (body !== undefined) headers["content-type"] = contentType ?? "application/json";
    try {
      return await fetch(this.server + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        client: this.#httpClient(cred),
        signal,
      });
    } catch (e) {
      if (signal.aborted && !timedOut(signal)) throw e;
      throw new KubeApiError(
        signal.aborted
          ? `${method} ${path}: the API server at ${this.server} did not answer in time`
          : `${method} ${path}: cannot reach the API server at ${this.server}: ${
            (e as Error).message
          }`,
        0,
      );
    }
  }

  /**
   * One request. Resolves with the parsed body of a 2xx answer; throws {@linkcode KubeApiError}
   * for any other, with the server's message. `body` is JSON unless `contentType` says a patch.
   */
  async request(
    method: string,
    path: string,
    body?: unknown,
    options: { contentType?: string; signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<RawObject> {
    const timeout = AbortSignal.timeout(options.timeoutMs ?? 15_000);
    const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
    const res = await this.#fetch(method, path, body, options.contentType, signal);
    let text: string;
    try {
      text = await readCapped(res, this.limits.answerBytes);
    } catch (e) {
      if (signal.aborted && !timedOut(signal)) throw e;
      throw new KubeApiError(`${method} ${path}: ${(e as Error).message}`, 0);
    }
    let parsed: RawObject = {};
    try {
      parsed = text ? JSON.parse(text) : {};
    } catch {
      parsed = { message: text.slice(0, 200) };
    }
    if (res.status < 200 || res.status > 299) {
      throw new KubeApiError(
        `${method} ${path}: ${res.status} ${parsed["message"] ?? res.statusText}`,
        res.status,
        typeof parsed["reason"] === "string" ? parsed["reason"] : "",
      );
    }
    return parsed;
  }

  /**
   * One request whose answer is text, not JSON (a pod's `/metrics` through the API server's
   * proxy). Throws {@linkcode KubeApiError} for an answer other than 2xx, with the server's
   * message (its Status, or the first line of the text).
   */
  async requestText(
    method: string,
    path: string,
    options: { signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<string> {
    const timeout = AbortSignal.timeout(options.timeoutMs ?? 15_000);
    const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
    let res: Response;
    let text: string;
    try {
      res = await this.#fetch(method, path, undefined, undefined, signal);
      text = await readCapped(res, this.limits.answerBytes);
    } catch (e) {
      if (e instanceof KubeApiError) throw e;
      throw new KubeApiError(`${method} ${path}: ${(e as Error).message}`, 0);
    }
    if (res.status < 200 || res.status > 299) {
      let message = text.trim().split("\n")[0]?.slice(0, 300) || res.statusText;
      let reason = "";
      try {
        const st = JSON.parse(text) as RawObject;
        if (typeof st["message"] === "string") message = st["message"];
        if (typeof st["reason"] === "string") reason = st["reason"];
      } catch { /* not a Status */ }
      throw new KubeApiError(`${method} ${path}: ${res.status} ${message}`, res.status, reason);
    }
    return text;
  }

  /**
   * Watches `path` from `resourceVersion`, with bookmarks, calling `onEvent` for each event.
   * Resolves when the server ends the stream (at the latest after `timeoutSeconds`) or
   * `signal` aborts; rejects with {@linkcode KubeApiError} when the server answers or streams
   * an error (410 Gone among them), or with what `onEvent` threw. A stream silent for
   * `timeoutSeconds` plus a minute is given up as dead.
   */
  async watch(
    path: string,
    resourceVersion: string,
    onEvent: (ev: WatchEvent) => void,
    options: { signal?: AbortSignal; timeoutSeconds?: number } = {},
  ): Promise<void> {
    const timeoutSeconds = options.timeoutSeconds ?? 300;
    const q = new URLSearchParams({
      watch: "true",
      allowWatchBookmarks: "true",
      timeoutSeconds: String(timeoutSeconds),
    });
    if (resourceVersion) q.set("resourceVersion", resourceVersion);
    const sep = path.includes("?") ? "&" : "?";
    const ac = new AbortController();
    const onAbort = () => ac.abort();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    let silent = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        silent = true;
        ac.abort();
      }, (timeoutSeconds + 60) * 1000);
    };
    try {
      arm();
      const res = await this.#fetch(
        "GET",
        `${path}${sep}${q}`,
        undefined,
        undefined,
        ac.signal,
        true,
      );
      if (res.status !== 200) throw await watchRefused(path, res);
      await readWatchEvents(path, res.body!, arm, onEvent, this.limits.eventBytes);
    } catch (e) {
      if (options.signal?.aborted) return;
      if (silent) throw new KubeApiError(`watch ${path}: no data for too long`, 0);
      if (e instanceof KubeApiError) throw e;
      if (e instanceof SyntaxError) throw new KubeApiError(`watch ${path}: bad event: ${e}`, 0);
      if ((e as Error).name === "AbortError") return;
      throw e instanceof Error && e.message.startsWith(`GET ${path}`) ? e : new KubeApiError(
        `watch ${path}: ${(e as Error).message}`,
        0,
      );
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      ac.abort();
    }
  }

  /** Closes idle connections. */
  close(): void {
    this.#client?.close();
    this.#client = null;
  }
}

/**
 * How much meshd reads from the API server: an answer to one request (a page of a list is at
 * most 500 objects; etcd keeps objects of at most 1.5 MiB by default) and one watch event. A
 * server that streams more is cut off with an error instead of filling meshd's memory.
 */
export interface KubeApiLimits {
  answerBytes: number;
  eventBytes: number;
}
export const DEFAULT_LIMITS: KubeApiLimits = {
  answerBytes: 256 * 2 ** 20,
  eventBytes: 16 * 2 ** 20,
};
/** The most read of an answer that refuses a watch (a Status). */
const STATUS_BYTES = 2 ** 20;

const mib = (bytes: number) =>
  bytes >= 2 ** 20 ? `${+(bytes / 2 ** 20).toFixed(1)} MiB` : `${+(bytes / 1024).toFixed(1)} KiB`;

/**
 * A response's body as text, read up to `limit` bytes; throws (and cancels the body) when it
 * declares or streams more.
 */
async function readCapped(res: Response, limit: number): Promise<string> {
  const tooLong = () => new Error(`the answer is longer than ${mib(limit)}, more than meshd reads`);
  if (!res.body) return "";
  if (Number(res.headers.get("content-length") ?? 0) > limit) {
    await res.body.cancel();
    throw tooLong();
  }
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      throw tooLong();
    }
    parts.push(value);
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    all.set(part, at);
    at += part.byteLength;
  }
  return new TextDecoder().decode(all);
}

/** The error for a watch the server answered with a status other than 200. */
async function watchRefused(path: string, res: Response): Promise<KubeApiError> {
  const text = await readCapped(res, STATUS_BYTES).catch((e: Error) => e.message);
  let st: RawObject = {};
  try {
    st = JSON.parse(text);
  } catch { /* not a Status */ }
  return new KubeApiError(
    `watch ${path}: ${res.status} ${st["message"] ?? res.statusText}`,
    res.status,
    typeof st["reason"] === "string" ? st["reason"] : "",
  );
}

/**
 * Reads a watch stream's JSON lines into `onEvent`, calling `alive` on each chunk; throws
 * {@linkcode KubeApiError} for an ERROR event, `SyntaxError` for a line that is not JSON.
 */
async function readWatchEvents(
  path: string,
  body: ReadableStream<Uint8Array>,
  alive: () => void,
  onEvent: (ev: WatchEvent) => void,
  eventBytes: number,
): Promise<void> {
  // The unfinished line, in pieces: joined once its newline comes, so that a long event sent in
  // many chunks is copied once, not once per chunk.
  let pending: string[] = [];
  let pendingLength = 0;
  for await (const chunk of body.pipeThrough(new TextDecoderStream())) {
    alive();
    let start = 0;
    for (let nl = chunk.indexOf("\n"); nl !== -1; nl = chunk.indexOf("\n", start)) {
      pending.push(chunk.slice(start, nl));
      const line = pending.join("");
      pending = [];
      pendingLength = 0;
      start = nl + 1;
      if (line.trim()) deliverWatchLine(path, line, onEvent);
    }
    if (start < chunk.length) {
      pending.push(chunk.slice(start));
      pendingLength += chunk.length - start;
    }
    // (A character is at least one byte, so this never cuts off an event within the limit.)
    if (pendingLength > eventBytes) {
      throw new KubeApiError(
        `watch ${path}: an event is longer than ${mib(eventBytes)}, more than meshd reads`,
        0,
      );
    }
  }
}

/** One line of a watch stream to `onEvent`; an ERROR event throws its Status. */
function deliverWatchLine(path: string, line: string, onEvent: (ev: WatchEvent) => void): void {
  const ev = JSON.parse(line) as { type: string; object: RawObject };
  if (ev.type === "ERROR") {
    // A Status object: 410 Gone when resourceVersion is too old.
    const o = ev.object;
    throw new KubeApiError(
      `watch ${path}: ${o["message"] ?? "error"}`,
      Number(o["code"] ?? 0),
      typeof o["reason"] === "string" ? o["reason"] : "",
    );
  }
  onEvent(ev as WatchEvent);
}
