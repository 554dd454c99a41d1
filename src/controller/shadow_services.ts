import type { KubeApi, RawObject } from "../kube/mod.ts";
import type { Logger } from "../observability/mod.ts";
import { compareNames, type MeshConfig, type MeshService } from "../topology/mod.ts";
import type { MeshDnsEntry } from "../dns/mod.ts";

/** Labels on every shadow Service. */
export const SHADOW_LABELS = {
  managedBy: "app.kubernetes.io/managed-by",
  role: "meshd.io/role",
  ofName: "meshd.io/shadow-of-name",
  ofNamespace: "meshd.io/shadow-of-namespace",
} as const;

/** The label selector of the shadow Services meshd manages. */
export const SHADOW_SELECTOR = `${SHADOW_LABELS.managedBy}=meshd,${SHADOW_LABELS.role}=shadow`;

/** 64-bit FNV-1a of `s`, as 16 hex digits. */
function fnv64(s: string): string {
  let h = 0xcbf29ce484222325n;
  for (const b of new TextEncoder().encode(s)) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, "0");
}

function cut(s: string, n: number): string {
  return s.slice(0, n).replace(/-+$/, "");
}

/**
 * The shadow Service's name for `namespace/name`: `m-<name>-<namespace>-<hash>`, the two parts
 * cut to 22 characters each and the hash of the full pair added, so it is a valid DNS label of
 * at most 63 characters for any names, and distinct pairs never collide by truncation.
 */
export function shadowServiceName(namespace: string, name: string): string {
  return `m-${cut(name, 22)}-${cut(namespace, 22)}-${fnv64(`${namespace}/${name}`).slice(0, 12)}`;
}

/** Options that shape the shadow Services. */
export interface ShadowOptions {
  meshNamespace: string;
  /** Labels that select the meshd pods. */
  selector: Record<string, string>;
  /** The HTTP entrypoint port on the meshd pods. */
  httpPort: number;
}

/**
 * The shadow Services a MeshConfig needs: one per meshed Service, in the mesh namespace, with
 * one port per service port, sent to the meshd pod on the client's own node
 * (`internalTrafficPolicy: Local`): HTTP ports to the HTTP entrypoint, TCP and UDP ports to the
 * proxy port the config gave them. Ports without a proxy port are left out.
 */
export function desiredShadowServices(config: MeshConfig, o: ShadowOptions): RawObject[] {
  const out: RawObject[] = [];
  for (const s of config.services) {
    const svc = desiredShadowService(s, o);
    if (svc) out.push(svc);
  }
  return out.sort((a, b) => compareNames(name(a), name(b)));
}

/** The shadow Service one meshed service needs; null when none of its ports has a target. */
export function desiredShadowService(s: MeshService, o: ShadowOptions): RawObject | null {
  const ports = shadowPorts(s, o.httpPort);
  if (ports.length === 0) return null;
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: {
      name: shadowServiceName(s.namespace, s.name),
      namespace: o.meshNamespace,
      labels: {
        [SHADOW_LABELS.managedBy]: "meshd",
        [SHADOW_LABELS.role]: "shadow",
        [SHADOW_LABELS.ofName]: s.name,
        [SHADOW_LABELS.ofNamespace]: s.namespace,
      },
    },
    spec: {
      type: "ClusterIP",
      selector: o.selector,
      internalTrafficPolicy: "Local",
      // The meshd pods run on the node's network: a new pod (not ready yet) and the one it
      // replaces share one address, and kube-proxy keeps one endpoint per address, either
      // one. Were readiness published, the node's traffic would be dropped until the new pod
      // is Ready, though the old one still serves that address. Any meshd bound there
      // serves; with no meshd the port refuses, as a Service without endpoints would.
      publishNotReadyAddresses: true,
      ports,
    },
  };
}

function name(o: RawObject): string {
  return (o["metadata"] as { name: string }).name;
}

function shadowPorts(s: MeshService, httpPort: number) {
  const ports = [];
  for (const p of s.ports) {
    const target = p.protocol === "http" ? httpPort : p.listenPort;
    if (target === null) continue;
    const proto = p.protocol === "udp" ? "UDP" : "TCP";
    ports.push({
      name: `${proto.toLowerCase()}-${p.port}`,
      port: p.port,
      protocol: proto,
      targetPort: target,
    });
  }
  return ports;
}

/** Options for {@linkcode ShadowServiceController}. */
export interface ShadowControllerOptions extends ShadowOptions {
  api: KubeApi;
  logger: Logger;
  /** Asked before every write: only the leader writes. */
  isLeader: () => boolean;
  /**
   * The shadow Services as a watch last saw them, or null until it has listed them; without
   * it (or while it is null) each pass lists them from the API. With 10,000 Services that list
   * is megabytes on every config change, so meshd hands over the watch its DNS answers from.
   */
  existing?: () => Iterable<RawObject> | null;
  /** Writes in flight at once; default 8. */
  concurrency?: number;
  /**
   * How long after a failed pass the next one starts when nothing else starts it, in ms; it
   * doubles with each failure in a row, up to 30 s. Default 1,000.
   */
  retryMs?: number;
}

/** The longest wait between passes that fail in a row. */
const MAX_RETRY_MS = 30_000;

/**
 * Keeps the shadow Services in the mesh namespace in line with the MeshConfig: creates and
 * updates them by server-side apply, and deletes the ones no Service needs any more. It writes
 * only while `isLeader()` holds. A failed pass is tried again on the next config,
 * {@linkcode ShadowServiceController.resync}, or after a backoff, whichever comes first: a
 * pass that times out under load must not wait for a change that may never come.
 */
export class ShadowServiceController {
  readonly #o: ShadowControllerOptions;
  #config: MeshConfig | null = null;
  #running: Promise<void> = Promise.resolve();
  #again = false;
  #retry: ReturnType<typeof setTimeout> | undefined;
  /** Passes that failed in a row. */
  #failures = 0;
  #stopped = false;
  /**
   * The shadow each config service needs, by the service object: configs keep the objects of
   * unchanged services, so a pass at 10,000 services builds only the changed ones' shadows.
   */
  #desired = new WeakMap<MeshService, RawObject | null>();
  /** Existing Services (as the watch or a list gave them) known to match a desired shadow. */
  #matched = new WeakMap<RawObject, RawObject>();
  /** Completed passes that wrote something, for tests. */
  writes = 0;

  constructor(options: ShadowControllerOptions) {
    this.#o = options;
  }

  /** Takes a new config and reconciles. */
  update(config: MeshConfig): Promise<void> {
    this.#config = config;
    return this.resync();
  }

  /** Reconciles against the last config (coalescing calls that overlap). */
  resync(): Promise<void> {
    if (this.#again) return this.#running;
    this.#again = true;
    this.#running = this.#running.then(async () => {
      this.#again = false;
      clearTimeout(this.#retry);
      this.#retry = undefined;
      if (this.#stopped) return;
      try {
        await this.#reconcile();
        this.#failures = 0;
      } catch (e) {
        const delay = Math.min(
          MAX_RETRY_MS,
          (this.#o.retryMs ?? 1_000) * 2 ** Math.min(this.#failures++, 15),
        );
        this.#o.logger.warn("shadow services: reconcile failed; will retry", {
          error: String(e),
          retryMs: delay,
        });
        if (!this.#stopped) {
          this.#retry = setTimeout(() => void this.resync(), delay);
          // A retry alone never keeps the process up.
          Deno.unrefTimer(this.#retry);
        }
      }
    });
    return this.#running;
  }

  /** Stops retrying; a pass under way finishes. */
  stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#retry);
    this.#retry = undefined;
    return this.#running;
  }

  async #reconcile(): Promise<void> {
    const config = this.#config;
    if (!config || !this.#o.isLeader()) return;
    const { api, meshNamespace } = this.#o;
    const base = `/api/v1/namespaces/${meshNamespace}/services`;
    const want: RawObject[] = [];
    for (const s of config.services) {
      let svc = this.#desired.get(s);
      if (svc === undefined) this.#desired.set(s, svc = desiredShadowService(s, this.#o));
      if (svc) want.push(svc);
    }
    const have = new Map<string, RawObject>();
    const cached = this.#o.existing?.();
    if (cached) {
      for (const item of cached) have.set(name(item), item);
    } else {
      const sel = encodeURIComponent(SHADOW_SELECTOR);
      const existing = await api.request("GET", `${base}?labelSelector=${sel}`);
      for (const item of (existing["items"] ?? []) as RawObject[]) have.set(name(item), item);
    }
    let created = 0;
    let updated = 0;
    let deleted = 0;
    const writes: (() => Promise<void>)[] = [];
    for (const svc of want) {
      const old = have.get(name(svc));
      if (old && this.#matched.get(old) === svc) continue;
      if (old && sameShape(old, svc)) {
        this.#matched.set(old, svc);
        continue;
      }
      writes.push(async () => {
        await api.request("PATCH", `${base}/${name(svc)}?fieldManager=meshd&force=true`, svc, {
          contentType: "application/apply-patch+yaml",
        });
        if (old) updated++;
        else created++;
      });
    }
    const keep = new Set(want.map(name));
    for (const n of have.keys()) {
      if (keep.has(n)) continue;
      writes.push(async () => {
        await api.request("DELETE", `${base}/${n}`).catch((e) => {
          if ((e as { status?: number }).status !== 404) throw e;
        });
        deleted++;
      });
    }
    // A few writes at a time; all stop at the first failure or once leadership is lost.
    let next = 0;
    let failed: unknown = null;
    await Promise.all(
      Array.from({ length: Math.min(this.#o.concurrency ?? 8, writes.length) }, async () => {
        while (next < writes.length && failed === null && this.#o.isLeader()) {
          try {
            await writes[next++]!();
          } catch (e) {
            failed ??= e;
          }
        }
      }),
    );
    if (failed !== null) throw failed;
    if (!this.#o.isLeader()) return;
    if (created + updated + deleted > 0) {
      this.writes++;
      this.#o.logger.info("shadow services updated", {
        version: config.version,
        created,
        updated,
        deleted,
        total: want.length,
      });
    }
  }
}

/** Whether an existing Service already has the ports, selector and labels wanted. */
function sameShape(have: RawObject, want: RawObject): boolean {
  const h = have["spec"] as Record<string, unknown>;
  const w = want["spec"] as Record<string, unknown>;
  const ports = (x: unknown) =>
    JSON.stringify(
      ((x ?? []) as Record<string, unknown>[]).map((
        p,
      ) => [p["name"], p["port"], p["protocol"], p["targetPort"]]),
    );
  const hl = (have["metadata"] as { labels?: Record<string, string> }).labels ?? {};
  const wl = (want["metadata"] as { labels: Record<string, string> }).labels;
  return ports(h["ports"]) === ports(w["ports"]) &&
    JSON.stringify(h["selector"] ?? {}) === JSON.stringify(w["selector"]) &&
    h["internalTrafficPolicy"] === w["internalTrafficPolicy"] &&
    (h["publishNotReadyAddresses"] ?? false) === w["publishNotReadyAddresses"] &&
    Object.entries(wl).every(([k, v]) => hl[k] === v);
}

/** A Service's ClusterIPs, both families (`clusterIP` alone on older objects); none if headless. */
export function clusterIps(service: RawObject): string[] {
  const spec = (service["spec"] ?? {}) as { clusterIP?: string; clusterIPs?: string[] };
  return (spec.clusterIPs ?? (spec.clusterIP ? [spec.clusterIP] : []))
    .filter((ip) => ip && ip !== "None");
}

/** What the mesh DNS answers, from the shadow Services: `<name>.<namespace>` to their ClusterIPs. */
export function shadowDnsEntries(services: Iterable<RawObject>): MeshDnsEntry[] {
  const out: MeshDnsEntry[] = [];
  for (const s of services) {
    let entry = dnsEntries.get(s);
    if (entry === undefined) dnsEntries.set(s, entry = shadowDnsEntry(s));
    if (entry) out.push(entry);
  }
  return out;
}

/**
 * Each shadow's entry, by the object a watch holds (a changed Service is a new object): every
 * change of one shadow reads them all again, thousands a second while a leader creates them.
 */
const dnsEntries = new WeakMap<RawObject, MeshDnsEntry | null>();

function shadowDnsEntry(s: RawObject): MeshDnsEntry | null {
  const labels = ((s["metadata"] ?? {}) as { labels?: Record<string, string> }).labels ?? {};
  const ofName = labels[SHADOW_LABELS.ofName];
  const ofNamespace = labels[SHADOW_LABELS.ofNamespace];
  if (!ofName || !ofNamespace) return null;
  const ips = clusterIps(s);
  if (ips.length === 0) return null; // not allocated yet
  return {
    namespace: ofNamespace,
    name: ofName,
    ipv4: ips.filter((ip) => !ip.includes(":")),
    ipv6: ips.filter((ip) => ip.includes(":")),
  };
}
