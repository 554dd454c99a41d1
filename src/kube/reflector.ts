import type { Logger } from "../observability/mod.ts";
import { type KubeApi, KubeApiError, type RawObject, type WatchEvent } from "./api.ts";

/** Options for {@linkcode Reflector}. */
export interface ReflectorOptions {
  api: KubeApi;
  /** Collection path, such as `/api/v1/services` or `/api/v1/namespaces/a/pods`. */
  path: string;
  /** `apiVersion` and `kind` to stamp on listed items (a list's items carry neither). */
  apiVersion: string;
  kind: string;
  /** Only objects with these labels, as a label selector such as `a=b,c`. */
  labelSelector?: string;
  /** Only objects whose fields match, such as `metadata.name=meshd`. */
  fieldSelector?: string;
  logger: Logger;
  /**
   * Trims each object before it is stored, after the generic {@linkcode stripForCache}: to the
   * fields its readers use, for kinds whose objects are large and many (Pods).
   */
  transform?: (o: RawObject) => void;
  /** Called after every change to the store: a list, or a watch event. */
  onChange: (r: Reflector) => void;
  /** Server-side length of one watch; default 300 s. */
  watchTimeoutSeconds?: number;
  /** Page size of lists; default 500. */
  pageSize?: number;
  /**
   * Start by watching from this resource version instead of listing, as a restarted watcher
   * that kept its store would. A version the server no longer keeps brings 410 and a list.
   */
  resumeFrom?: string;
  /** Backoff after errors: first and largest wait; default 500 ms and 30 s. */
  backoffMs?: { first: number; max: number };
}

/** Counters a test or `/metrics` can read. */
export interface ReflectorStats {
  lists: number;
  watches: number;
  events: number;
  bookmarks: number;
  /** Lists that followed a 410 Gone. */
  relistsAfterGone: number;
  errors: number;
}

/**
 * Keeps a local copy of one collection: lists it (in pages), then watches from the list's
 * resource version with bookmarks, and watches again from the last version seen whenever the
 * stream ends. `410 Gone` (the version is too old) starts a fresh list. A collection the server
 * does not serve (a CRD not installed) is reported once, then tried again slowly, so installing
 * the CRD later is picked up.
 */
export class Reflector {
  readonly opts: ReflectorOptions;
  /** Objects by `namespace/name`. */
  readonly items = new Map<string, RawObject>();
  readonly stats: ReflectorStats = {
    lists: 0,
    watches: 0,
    events: 0,
    bookmarks: 0,
    relistsAfterGone: 0,
    errors: 0,
  };
  /** True once a list succeeded. */
  synced = false;
  /** Set while the server does not serve the collection (404). */
  missing = false;
  #resourceVersion = "";
  #abort = new AbortController();
  #done: Promise<void> = Promise.resolve();

  constructor(options: ReflectorOptions) {
    this.opts = options;
  }

  /** The resource version the store reflects. */
  get resourceVersion(): string {
    return this.#resourceVersion;
  }

  /** Starts the list-and-watch loop in the background. */
  start(): void {
    this.#done = this.#loop(this.#abort.signal);
  }

  /** Stops watching and waits for the loop to end. */
  async stop(): Promise<void> {
    this.#abort.abort();
    await this.#done;
  }

  async #loop(signal: AbortSignal): Promise<void> {
    const log = this.opts.logger;
    const { first, max } = this.opts.backoffMs ?? { first: 500, max: 30_000 };
    let backoff = first;
    let needList = !this.opts.resumeFrom;
    if (this.opts.resumeFrom) this.#resourceVersion = this.opts.resumeFrom;
    while (!signal.aborted) {
      try {
        if (needList) {
          await this.#list(signal);
          needList = false;
          if (this.missing) {
            this.missing = false;
            log.info("collection is served now", { path: this.opts.path });
          }
        }
        this.stats.watches++;
        const selectors = this.#selectors().toString();
        await this.opts.api.watch(
          selectors ? `${this.opts.path}?${selectors}` : this.opts.path,
          this.#resourceVersion,
          (ev) => this.#apply(ev),
          { signal, timeoutSeconds: this.opts.watchTimeoutSeconds },
        );
        backoff = first; // a watch that ran to its end is healthy
      } catch (e) {
        if (signal.aborted) break;
        const err = e as KubeApiError | Error;
        const status = err instanceof KubeApiError ? err.status : 0;
        if (status === 410) {
          this.stats.relistsAfterGone++;
          log.info("resource version expired; listing again", { path: this.opts.path });
          needList = true;
          continue;
        }
        this.stats.errors++;
        if (status === 404) {
          if (!this.missing) {
            log.warn("collection not served; is its CRD installed? trying again later", {
              path: this.opts.path,
            });
            this.missing = true;
            // What the server no longer serves is gone for meshd too, as for a meshd started
            // now: a CRD whose version meshd reads stopped being served keeps its objects (at
            // other versions), and no DELETED event ever comes for them.
            this.items.clear();
            this.opts.onChange(this);
          }
          needList = true;
          await sleep(Math.max(backoff, 5_000), signal);
          continue;
        }
        log.warn("list/watch failed; retrying", {
          path: this.opts.path,
          error: err.message,
          retryMs: backoff,
        });
        // After a failed list, list again; after a failed watch, resume from the version.
        await sleep(jitter(backoff), signal);
        backoff = Math.min(max, backoff * 2);
      }
    }
  }

  #selectors(): URLSearchParams {
    const q = new URLSearchParams();
    if (this.opts.labelSelector) q.set("labelSelector", this.opts.labelSelector);
    if (this.opts.fieldSelector) q.set("fieldSelector", this.opts.fieldSelector);
    return q;
  }

  async #list(signal: AbortSignal): Promise<void> {
    const fresh = new Map<string, RawObject>();
    let cont = "";
    let rv = "";
    do {
      const q = this.#selectors();
      q.set("limit", String(this.opts.pageSize ?? 500));
      if (cont) q.set("continue", cont);
      const page = await this.opts.api.request("GET", `${this.opts.path}?${q}`, undefined, {
        signal,
        timeoutMs: 60_000,
      });
      const meta = (page["metadata"] ?? {}) as { resourceVersion?: string; continue?: string };
      rv = meta.resourceVersion ?? rv;
      cont = meta.continue ?? "";
      for (const item of (page["items"] ?? []) as RawObject[]) {
        stripForCache(item);
        this.opts.transform?.(item);
        item["apiVersion"] ??= this.opts.apiVersion;
        item["kind"] ??= this.opts.kind;
        fresh.set(keyOf(item), item);
      }
    } while (cont);
    this.items.clear();
    for (const [k, v] of fresh) this.items.set(k, v);
    this.#resourceVersion = rv;
    this.stats.lists++;
    this.synced = true;
    this.opts.onChange(this);
  }

  #apply(ev: WatchEvent): void {
    const meta = (ev.object["metadata"] ?? {}) as { resourceVersion?: string };
    if (meta.resourceVersion) this.#resourceVersion = meta.resourceVersion;
    if (ev.type === "BOOKMARK") {
      this.stats.bookmarks++;
      return;
    }
    this.stats.events++;
    stripForCache(ev.object);
    this.opts.transform?.(ev.object);
    ev.object["apiVersion"] ??= this.opts.apiVersion;
    ev.object["kind"] ??= this.opts.kind;
    const key = keyOf(ev.object);
    if (ev.type === "DELETED") this.items.delete(key);
    else this.items.set(key, ev.object);
    this.opts.onChange(this);
  }
}

/** The annotation `kubectl apply` writes: the whole object again, as JSON. */
export const LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration";

/**
 * Drops what no reader of the store uses and what can be most of an object's size: the
 * server-side apply bookkeeping (`metadata.managedFields`) and `kubectl apply`'s copy of the
 * object. As client-go's informers do with a transform, so a store of thousands of objects
 * holds what meshd reads, not every field manager's history. A PUT of a stored object leaves
 * the server's managedFields as they are.
 */
export function stripForCache(o: RawObject): void {
  const m = o["metadata"];
  if (typeof m !== "object" || m === null) return;
  const meta = m as Record<string, unknown>;
  delete meta["managedFields"];
  const a = meta["annotations"];
  if (typeof a === "object" && a !== null && LAST_APPLIED_ANNOTATION in a) {
    delete (a as Record<string, unknown>)[LAST_APPLIED_ANNOTATION];
  }
}

function keyOf(o: RawObject): string {
  const m = (o["metadata"] ?? {}) as { namespace?: string; name?: string };
  return `${m.namespace ?? ""}/${m.name ?? ""}`;
}

function jitter(ms: number): number {
  return ms / 2 + Math.random() * ms / 2;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
