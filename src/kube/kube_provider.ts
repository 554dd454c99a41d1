import type { Logger } from "../observability/mod.ts";
import {
  type ConfigError,
  decodeObject,
  type LoadResult,
  type MeshObject,
  SUPPORTED_KINDS,
} from "../topology/mod.ts";
import { type KubeApi, KubeApiError, type RawObject } from "./api.ts";
import { Reflector } from "./reflector.ts";

/** A collection meshd reads. */
export interface Collection {
  kind: string;
  apiVersion: string;
  plural: string;
  /** An SMI CRD: missing is a warning, not a failure. */
  smi: boolean;
}

/** Everything the kube provider lists and watches, at the versions meshd reads. */
export const COLLECTIONS: readonly Collection[] = [
  { kind: "Service", plural: "services", smi: false },
  { kind: "EndpointSlice", plural: "endpointslices", smi: false },
  { kind: "Pod", plural: "pods", smi: false },
  { kind: "TrafficTarget", plural: "traffictargets", smi: true },
  { kind: "HTTPRouteGroup", plural: "httproutegroups", smi: true },
  { kind: "TCPRoute", plural: "tcproutes", smi: true },
  { kind: "TrafficSplit", plural: "trafficsplits", smi: true },
].map((c) => ({ ...c, apiVersion: SUPPORTED_KINDS[c.kind]! }));

/**
 * Keeps of a Pod what `decodeObject` reads (metadata, `spec.serviceAccountName`,
 * `spec.nodeName`, `status.podIP`, `status.phase`): a Pod's containers, volumes and statuses are
 * most of its size, and a cluster has many Pods. When `decodePod` reads more, keep it here too
 * (the test "slimPod() keeps every field decodeObject reads of a Pod" checks a full Pod).
 */
export function slimPod(o: RawObject): void {
  const pick = (from: unknown, keys: string[]): Record<string, unknown> | unknown => {
    if (typeof from !== "object" || from === null || Array.isArray(from)) return from;
    const src = from as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const k of keys) if (k in src) out[k] = src[k];
    return out;
  };
  if ("spec" in o) o["spec"] = pick(o["spec"], ["serviceAccountName", "nodeName"]);
  if ("status" in o) o["status"] = pick(o["status"], ["podIP", "phase"]);
}

/** The API path of a collection, cluster-wide or in one namespace. */
export function collectionPath(c: Collection, namespace?: string): string {
  const base = c.apiVersion.includes("/") ? `/apis/${c.apiVersion}` : `/api/${c.apiVersion}`;
  return `${base}${namespace ? `/namespaces/${namespace}` : ""}/${c.plural}`;
}

/** What the API server serves of one SMI group. */
export interface SmiGroupStatus {
  group: string;
  /** The version meshd reads. */
  wanted: string;
  /** Versions the server serves; empty when the group is not there. */
  served: string[];
  ok: boolean;
  /** One line for a log or `meshd check`. */
  message: string;
}

/**
 * Asks the API server which versions of each SMI group it serves. A missing group, or one
 * without the version meshd reads, is not ok; extra versions are fine and noted.
 */
export async function smiGroupStatus(api: KubeApi): Promise<SmiGroupStatus[]> {
  const wanted = new Map<string, string>();
  for (const c of COLLECTIONS) {
    if (!c.smi) continue;
    const [group, version] = c.apiVersion.split("/") as [string, string];
    wanted.set(group, version);
  }
  const out: SmiGroupStatus[] = [];
  for (const [group, version] of wanted) {
    let served: string[] = [];
    try {
      const g = await api.request("GET", `/apis/${group}`);
      served = ((g["versions"] ?? []) as { version: string }[]).map((v) => v.version);
    } catch (e) {
      if (!(e instanceof KubeApiError && e.status === 404)) throw e;
    }
    const ok = served.includes(version);
    const extra = served.filter((v) => v !== version);
    let message: string;
    if (served.length === 0) {
      message = `${group} is not served: install its CRDs (manifests/crds) to use it`;
    } else if (!ok) {
      message = `${group} serves ${served.join(", ")} but not ${version}, the version meshd reads`;
    } else {
      message = `${group}/${version} is served` +
        (extra.length ? `; ${extra.join(", ")} also served, and not read by meshd` : "");
    }
    out.push({ group, wanted: version, served, ok, message });
  }
  return out;
}

/** Options for {@linkcode KubeProvider}. */
export interface KubeProviderOptions {
  api: KubeApi;
  logger: Logger;
  /** Only these namespaces; empty: every namespace. */
  watchNamespaces: readonly string[];
  /** Objects in these namespaces are dropped as they arrive. */
  ignoreNamespaces: readonly string[];
  /** Called with every load once every collection was listed (or found missing). */
  onLoad: (result: LoadResult) => void | Promise<void>;
  /**
   * How long a burst of events may settle before a load; default 50 ms. A lone change (none
   * in the last `debounceMs`) is loaded at once; only the events that follow it within
   * `debounceMs` wait and go together in the next load.
   */
  debounceMs?: number;
  /**
   * The longest a change waits in a burst that does not settle (events keep coming within
   * `debounceMs` of each other, as endpoints churn in a large cluster); default 10 debounces.
   */
  maxWaitMs?: number;
  /** Passed to each {@linkcode Reflector}. */
  watchTimeoutSeconds?: number;
  /** The clock that tells a lone change from a burst, in ms; default `performance.now`. */
  now?: () => number;
}

interface Decoded {
  resourceVersion: string;
  object: MeshObject | null;
  error: ConfigError | null;
  skipped: string | null;
}

/**
 * The kube provider: lists and watches Services, EndpointSlices, Pods and the SMI kinds through
 * the Kubernetes API and hands the same loads to the same topology code as the file provider.
 * Each object is decoded once per resource version; an object that stops decoding keeps its
 * last good version, as with files. A missing SMI CRD is a warning: meshd runs without those
 * objects and picks them up once the CRD is installed.
 */
export class KubeProvider {
  readonly #opts: KubeProviderOptions;
  readonly #reflectors: Reflector[] = [];
  readonly #decoded = new Map<string, Decoded>();
  readonly #good = new Map<string, MeshObject>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** When the last load started, by the clock of the options; -Infinity before the first. */
  #lastLoad = -Infinity;
  /** When the first change the pending load waits for came. */
  #pendingSince = 0;
  #loading: Promise<void> = Promise.resolve();
  #firstLoad: (() => void) | null = null;
  #loads = 0;
  /** SMI groups whose "not served" warning was logged, until they are served again. */
  readonly #smiWarned = new Set<string>();

  constructor(options: KubeProviderOptions) {
    this.#opts = options;
  }

  /** Loads delivered so far. */
  get loads(): number {
    return this.#loads;
  }

  /** The reflectors, for status and tests. */
  get reflectors(): readonly Reflector[] {
    return this.#reflectors;
  }

  /**
   * Checks the SMI groups (warnings only), starts every list-and-watch, and resolves once the
   * first load was delivered.
   */
  async start(): Promise<void> {
    const log = this.#opts.logger;
    try {
      for (const s of await smiGroupStatus(this.#opts.api)) {
        // Extra versions are fine (the server answers meshd's at its version): info only.
        if (s.ok) log.info(s.message);
        else {
          log.warn(s.message);
          this.#smiWarned.add(s.group);
        }
      }
    } catch (e) {
      // Only a report: the watches below find out for themselves, and keep trying.
      log.warn("cannot ask which SMI versions are served", { error: (e as Error).message });
    }
    const first = new Promise<void>((r) => this.#firstLoad = r);
    const namespaces = this.#opts.watchNamespaces.length ? this.#opts.watchNamespaces : [undefined];
    // Watching every namespace, the server leaves the ignored ones out (the mesh namespace
    // among them, where the leader writes a shadow Service per Service): their events would
    // only start loads that drop them.
    const fieldSelector = this.#opts.watchNamespaces.length
      ? undefined
      : this.#opts.ignoreNamespaces.map((n) => `metadata.namespace!=${n}`).join(",") || undefined;
    for (const c of COLLECTIONS) {
      for (const ns of namespaces) {
        const r = new Reflector({
          api: this.#opts.api,
          path: collectionPath(c, ns),
          apiVersion: c.apiVersion,
          kind: c.kind,
          fieldSelector,
          logger: log,
          onChange: (r) => {
            if (c.smi) this.#smiChanged(r);
            this.#schedule();
          },
          ...(c.kind === "Pod" ? { transform: slimPod } : {}),
          watchTimeoutSeconds: this.#opts.watchTimeoutSeconds,
        });
        this.#reflectors.push(r);
      }
    }
    for (const r of this.#reflectors) r.start();
    await first;
  }

  /**
   * Names the group and the versions it serves once, when a collection of it stops being served
   * while meshd runs (its CRD removed, or changed to versions meshd does not read).
   */
  #smiChanged(r: Reflector): void {
    const group = r.opts.apiVersion.split("/")[0]!;
    const ofGroup = this.#reflectors.filter((x) => x.opts.apiVersion.startsWith(`${group}/`));
    if (!r.missing) {
      if (ofGroup.every((x) => !x.missing)) this.#smiWarned.delete(group);
      return;
    }
    if (this.#smiWarned.has(group)) return;
    this.#smiWarned.add(group);
    const log = this.#opts.logger;
    smiGroupStatus(this.#opts.api).then((all) => {
      const s = all.find((g) => g.group === group);
      if (s && !s.ok) log.warn(s.message);
      else {log.warn(
          `${r.opts.kind} is not served at ${r.opts.apiVersion}, the version meshd reads`,
        );}
    }).catch((e) =>
      log.warn("cannot ask which SMI versions are served", { error: (e as Error).message })
    );
  }

  /** Stops every watch. */
  async stop(): Promise<void> {
    clearTimeout(this.#timer);
    await Promise.all(this.#reflectors.map((r) => r.stop()));
    await this.#loading;
  }

  #now(): number {
    return this.#opts.now?.() ?? performance.now();
  }

  /**
   * Starts a load for the changes so far. A change after a quiet spell loads on the next turn
   * of the event loop (the events of one watch chunk still go together): waiting out the
   * debounce there only delayed every single edit by it, a quarter of the leader's part of
   * propagation at 10,000 services. Changes that come while a load is pending, or within
   * `debounceMs` of the last one, are a burst: they wait until it settles and load together,
   * but none waits longer than `maxWaitMs`.
   */
  #schedule(): void {
    const debounce = this.#opts.debounceMs ?? 50;
    const maxWait = this.#opts.maxWaitMs ?? 10 * debounce;
    const now = this.#now();
    if (this.#timer === undefined) this.#pendingSince = now;
    const burst = this.#timer !== undefined || now - this.#lastLoad < debounce;
    const delay = burst ? Math.max(0, Math.min(debounce, this.#pendingSince + maxWait - now)) : 0;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      // The first load waits for every collection, so meshd never routes on half a picture.
      if (!this.#reflectors.every((r) => r.synced || r.missing)) return;
      this.#lastLoad = this.#now();
      this.#loading = this.#loading.then(() => this.#deliver()).catch((e) =>
        this.#opts.logger.error("applying a load failed", { error: String(e) })
      );
    }, delay);
  }

  async #deliver(): Promise<void> {
    const ignored = new Set(this.#opts.ignoreNamespaces);
    const objects: MeshObject[] = [];
    const errors: ConfigError[] = [];
    const warnings: string[] = [];
    let seen = 0;
    for (const r of this.#reflectors) {
      for (const [nsName, raw] of r.items) {
        if (ignored.size > 0 && ignored.has(nsName.slice(0, nsName.indexOf("/")))) continue;
        const key = `${r.opts.kind}/${nsName}`;
        // The API server's own Service: clients reach it directly, never through the mesh.
        if (key === "Service/default/kubernetes") continue;
        seen++;
        const d = this.#decode(key, raw);
        if (d.object) objects.push(d.object);
        else if (d.error) {
          errors.push(d.error);
          const old = this.#good.get(key);
          if (old) {
            warnings.push(`Keeping the last good version of ${key} until it is fixed`);
            objects.push(old);
          }
        } else if (d.skipped) {
          warnings.push(`Skipping ${key}: ${d.skipped}`);
        }
      }
    }
    // Every key seen was decoded just now, once: more decoded keys than seen means objects
    // went away. Only then is a set of every key made (20,000 at 10,000 Services).
    if (this.#decoded.size > seen) this.#forgetGone();
    this.#loads++;
    await this.#opts.onLoad({ objects, errors, warnings });
    this.#firstLoad?.();
    this.#firstLoad = null;
  }

  /** Forgets the decoded and last good versions of objects no reflector holds any more. */
  #forgetGone(): void {
    const held = new Set<string>();
    for (const r of this.#reflectors) {
      for (const nsName of r.items.keys()) held.add(`${r.opts.kind}/${nsName}`);
    }
    for (const k of this.#decoded.keys()) {
      if (!held.has(k)) {
        this.#decoded.delete(k);
        this.#good.delete(k);
      }
    }
  }

  #decode(key: string, raw: RawObject): Decoded {
    const rv = String(
      (raw["metadata"] as { resourceVersion?: string } | undefined)
        ?.resourceVersion ?? "",
    );
    const cached = this.#decoded.get(key);
    if (cached && cached.resourceVersion === rv && rv !== "") return cached;
    const r = decodeObject(raw, { file: `${key} in the Kubernetes API`, doc: -1 });
    const d: Decoded = {
      resourceVersion: rv,
      object: r.status === "ok" ? r.object : null,
      error: r.status === "invalid" ? r.error : null,
      skipped: r.status === "skipped" ? r.reason : null,
    };
    this.#decoded.set(key, d);
    // Set once per version here, not on every load for every object.
    if (d.object) this.#good.set(key, d.object);
    return d;
  }
}
