import { compareNames, type MeshConfig, type MeshService, sameJson } from "../topology/mod.ts";

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
  return compareNames(a.namespace, b.namespace) || compareNames(a.name, b.name);
}

/** The delta from `a` to `b`. Pure. */
export function diffConfigs(a: MeshConfig, b: MeshConfig): MeshDelta {
  const { upserts, removes } = changedInPlace(a.services, b.services) ??
    diffServices(a.services, b.services);
  const identitiesSet: Record<string, string> = {};
  const identitiesRemoved: string[] = [];
  // A table the builder kept is the same object (configs are never changed once made).
  if (a.identities !== b.identities) {
    for (const [ip, sa] of Object.entries(b.identities)) {
      if (a.identities[ip] !== sa) identitiesSet[ip] = sa;
    }
    for (const ip of Object.keys(a.identities)) {
      if (!(ip in b.identities)) identitiesRemoved.push(ip);
    }
  }
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
 * The delta of two service lists of one length where every service that is not the same object
 * is the same service (key) at the same place: what the builder makes when services only
 * changed, the common case. Only the services that are not the same object are looked at, so
 * one change at 10,000 services costs a pass of reference compares, not two indexes of every
 * key. Null when services were added, removed or moved.
 */
function changedInPlace(
  a: readonly MeshService[],
  b: readonly MeshService[],
): { upserts: MeshService[]; removes: string[] } | null {
  if (a.length !== b.length) return null;
  const upserts: MeshService[] = [];
  for (let i = 0; i < b.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x === y) continue;
    if (x.namespace !== y.namespace || x.name !== y.name) return null;
    if (!sameJson(x, y)) upserts.push(y);
  }
  return { upserts, removes: [] };
}

/** The delta of any two service lists, by key; upserts in the order of `b`. */
function diffServices(
  a: readonly MeshService[],
  b: readonly MeshService[],
): { upserts: MeshService[]; removes: string[] } {
  const before = new Map(a.map((s) => [serviceKey(s), s]));
  const after = new Set<string>();
  const upserts: MeshService[] = [];
  for (const s of b) {
    const k = serviceKey(s);
    after.add(k);
    const old = before.get(k);
    // The same object is the same service (configs never change a service once built).
    if (old !== s && (!old || !sameJson(old, s))) upserts.push(s);
  }
  const removes = [...before.keys()].filter((k) => !after.has(k));
  return { upserts, removes };
}

/**
 * Where each service sits in a config's service list, by key. Built once per list and shared
 * by every list made from it by replacing services in place, so applying a delta that only
 * changes services costs what changed, not a pass over every service.
 */
const positions = new WeakMap<readonly MeshService[], Map<string, number>>();

function positionsOf(services: readonly MeshService[]): Map<string, number> {
  let index = positions.get(services);
  if (!index) {
    index = new Map();
    services.forEach((s, i) => index!.set(serviceKey(s), i));
    positions.set(services, index);
  }
  return index;
}

/**
 * `a` with `d` applied: a new config, `a` untouched. Throws {@linkcode DeltaError} when `d`
 * was made from another version, or names services `a` does not have; a node then asks for a
 * full snapshot. Pure: configs are never changed once made, so the result shares what did not
 * change with `a` (service objects, and the identity table when the delta leaves it alone).
 */
export function applyDelta(a: MeshConfig, d: MeshDelta): MeshConfig {
  if (d.from !== a.version) {
    throw new DeltaError(`Cannot apply delta ${d.from}->${d.to} to version ${a.version}`);
  }
  const at = positionsOf(a.services);
  for (const k of d.removes) {
    if (!at.has(k)) {
      throw new DeltaError(
        `Cannot apply delta ${d.from}->${d.to}: it removes "${k}", not in ${a.version}`,
      );
    }
  }
  let services: MeshService[];
  if (d.removes.length === 0 && d.upserts.every((s) => at.has(serviceKey(s)))) {
    // Only changes: each replaced where it stands, so the order and the index carry over.
    services = a.services.slice();
    for (const s of d.upserts) services[at.get(serviceKey(s))!] = s;
    positions.set(services, at);
  } else {
    const gone = new Set(d.removes);
    const changed = new Map(d.upserts.map((s) => [serviceKey(s), s]));
    services = [];
    for (const s of a.services) {
      const k = serviceKey(s);
      if (gone.has(k)) continue;
      const next = changed.get(k);
      services.push(next ?? s);
      changed.delete(k);
    }
    // What is left is new; the builder's order is by namespace, then name.
    if (changed.size > 0) {
      services.push(...changed.values());
      services.sort(compareServices);
    }
  }
  let identities = a.identities;
  if (Object.keys(d.identitiesSet).length > 0 || d.identitiesRemoved.length > 0) {
    identities = { ...a.identities, ...d.identitiesSet };
    for (const ip of d.identitiesRemoved) delete identities[ip];
  }
  return {
    version: d.to,
    domain: d.domain ?? a.domain,
    acl: d.acl ?? a.acl,
    services,
    identities,
  };
}

/** Whether `d` changes nothing but the version. */
export function isEmptyDelta(d: MeshDelta): boolean {
  return d.domain === undefined && d.acl === undefined && d.upserts.length === 0 &&
    d.removes.length === 0 && Object.keys(d.identitiesSet).length === 0 &&
    d.identitiesRemoved.length === 0;
}
