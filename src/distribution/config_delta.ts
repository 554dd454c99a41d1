import { type MeshConfig, type MeshService, serviceJson } from "../topology/mod.ts";

/**
 * What turns one MeshConfig version into the next: services added or changed are sent whole,
 * removed ones by key, and the identity table by entry. A one-endpoint change costs one
 * service, not the config.
 */
export interface MeshDelta {
  /** The version this delta applies to. */
  from: number;
  /** The version it makes. */
  to: number;
  /** Set when the domain changed. */
  domain?: string;
  /** Set when ACL was turned on or off. */
  acl?: boolean;
  /** Services new or changed, whole. */
  upserts: MeshService[];
  /** Services gone, as `namespace/name`. */
  removes: string[];
  /** Identity entries new or changed (source address to ServiceAccount). */
  identitiesSet: Record<string, string>;
  /** Identity entries gone, by source address. */
  identitiesRemoved: string[];
}

/** A delta that does not fit the config it was applied to. */
export class DeltaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DeltaError";
  }
}

/** A service's key: `namespace/name`. */
export function serviceKey(s: { namespace: string; name: string }): string {
  return `${s.namespace}/${s.name}`;
}

/** The order the topology builder gives services: by namespace, then name. */
export function compareServices(a: MeshService, b: MeshService): number {
  return a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name);
}

/** The delta from `a` to `b`. Pure. */
export function diffConfigs(a: MeshConfig, b: MeshConfig): MeshDelta {
  const before = new Map(a.services.map((s) => [serviceKey(s), s]));
  const after = new Set<string>();
  const upserts: MeshService[] = [];
  for (const s of b.services) {
    const k = serviceKey(s);
    after.add(k);
    const old = before.get(k);
    // The same object is the same service (configs never change a service once built).
    if (old !== s && (!old || serviceJson(old) !== serviceJson(s))) upserts.push(s);
  }
  const removes = [...before.keys()].filter((k) => !after.has(k));
  const identitiesSet: Record<string, string> = {};
  for (const [ip, sa] of Object.entries(b.identities)) {
    if (a.identities[ip] !== sa) identitiesSet[ip] = sa;
  }
  const identitiesRemoved = Object.keys(a.identities).filter((ip) => !(ip in b.identities));
  return {
    from: a.version,
    to: b.version,
    ...(a.domain !== b.domain ? { domain: b.domain } : {}),
    ...(a.acl !== b.acl ? { acl: b.acl } : {}),
    upserts,
    removes,
    identitiesSet,
    identitiesRemoved,
  };
}

/**
 * `a` with `d` applied: a new config, `a` untouched. Throws {@linkcode DeltaError} when `d`
 * was made from another version, or names services `a` does not have; a node then asks for a
 * full snapshot. Pure.
 */
export function applyDelta(a: MeshConfig, d: MeshDelta): MeshConfig {
  if (d.from !== a.version) {
    throw new DeltaError(`Cannot apply delta ${d.from}->${d.to} to version ${a.version}`);
  }
  const services = new Map(a.services.map((s) => [serviceKey(s), s]));
  for (const k of d.removes) {
    if (!services.delete(k)) {
      throw new DeltaError(
        `Cannot apply delta ${d.from}->${d.to}: it removes "${k}", not in ${a.version}`,
      );
    }
  }
  // Services only changed or removed keep the base's order (sorted, and a Map keeps insertion
  // order); only new ones need a sort.
  let added = false;
  for (const s of d.upserts) {
    const k = serviceKey(s);
    if (!services.has(k)) added = true;
    services.set(k, s);
  }
  const list = [...services.values()];
  if (added) list.sort(compareServices);
  const identities = { ...a.identities, ...d.identitiesSet };
  for (const ip of d.identitiesRemoved) delete identities[ip];
  return {
    version: d.to,
    domain: d.domain ?? a.domain,
    acl: d.acl ?? a.acl,
    services: list,
    identities,
  };
}

/** Whether `d` changes nothing but the version. */
export function isEmptyDelta(d: MeshDelta): boolean {
  return d.domain === undefined && d.acl === undefined && d.upserts.length === 0 &&
    d.removes.length === 0 && Object.keys(d.identitiesSet).length === 0 &&
    d.identitiesRemoved.length === 0;
}
