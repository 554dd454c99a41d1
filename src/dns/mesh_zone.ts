import {
  type DnsName,
  type DnsQuery,
  type DnsRecord,
  type DnsResponse,
  nameFromString,
  RCODE,
  RR_CLASS,
  RR_TYPE,
} from "./dns_message.ts";

/** The addresses `<name>.<namespace>.<domain>` resolves to. */
export interface MeshDnsEntry {
  namespace: string;
  name: string;
  ipv4: readonly string[];
  ipv6: readonly string[];
}

/** Options for {@linkcode MeshZone}. */
export interface MeshZoneOptions {
  /** The mesh domain, such as `mesh`. */
  domain: string;
  /**
   * Other domains answered the same, such as Traefik Mesh's `traefik.mesh` and `maesh`; each
   * is a zone of its own with its own SOA.
   */
  aliases?: readonly string[];
  /** TTL of answers, and of negative answers (the SOA minimum); default 5 s. */
  ttlSeconds?: number;
}

/** The largest UDP payload meshd sends, whatever a client advertises (DNS Flag Day 2020). */
export const EDNS_UDP_SIZE = 1232;

/**
 * The mesh zone: answers `<service>.<namespace>.<domain>` with A and AAAA records from a table
 * the caller replaces whole. Authoritative for the domain: a name with nothing at or below it is
 * NXDOMAIN, a name that exists without the asked type is NOERROR with no answer (NODATA), and
 * both carry the zone's SOA so resolvers cache them briefly (RFC 2308). Names outside the domain
 * are REFUSED: meshd does not recurse. Pure: no I/O, no clock.
 */
export class MeshZone {
  readonly domain: DnsName;
  /** The domain and its aliases, longest first, so `traefik.mesh` wins over `mesh`. */
  readonly zones: readonly DnsName[];
  readonly ttl: number;
  #entries = new Map<string, MeshDnsEntry>();
  #namespaces = new Set<string>();
  #serial = 1;

  constructor(options: MeshZoneOptions) {
    const parse = (text: string, what: string): DnsName => {
      const name = nameFromString(text.toLowerCase());
      if (name.length === 0 || name.some((l) => !/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(l))) {
        throw new TypeError(`Cannot use "${text}" as ${what}`);
      }
      return name;
    };
    this.domain = parse(options.domain, "the mesh DNS domain");
    const zones = [this.domain];
    for (const a of options.aliases ?? []) {
      const z = parse(a, "a mesh DNS domain alias");
      if (!zones.some((x) => x.join(".") === z.join("."))) zones.push(z);
    }
    this.zones = zones.sort((a, b) => b.length - a.length);
    this.ttl = options.ttlSeconds ?? 5;
  }

  /** Number of names in the zone. */
  get size(): number {
    return this.#entries.size;
  }

  /** The SOA serial; it grows with every change of the table. */
  get serial(): number {
    return this.#serial;
  }

  /** Replaces the table. */
  replace(entries: Iterable<MeshDnsEntry>): void {
    const next = new Map<string, MeshDnsEntry>();
    const namespaces = new Set<string>();
    for (const e of entries) {
      const ns = e.namespace.toLowerCase();
      next.set(`${e.name.toLowerCase()}.${ns}`, e);
      namespaces.add(ns);
    }
    if (next.size === this.#entries.size) {
      let same = true;
      for (const [k, e] of next) {
        if (!sameEntry(this.#entries.get(k), e)) {
          same = false;
          break;
        }
      }
      if (same) return;
    }
    this.#entries = next;
    this.#namespaces = namespaces;
    this.#serial = (this.#serial + 1) >>> 0 || 1;
  }

  /** The addresses of `namespace/name`, if the zone has it. */
  lookup(namespace: string, name: string): MeshDnsEntry | undefined {
    return this.#entries.get(`${name.toLowerCase()}.${namespace.toLowerCase()}`);
  }

  /** The response to `q`. */
  answer(q: DnsQuery): DnsResponse {
    const base = {
      id: q.id,
      opcode: q.opcode,
      rd: q.rd,
      cd: q.cd,
      aa: false,
      question: q.questions[0],
      answers: [] as DnsRecord[],
      authority: [] as DnsRecord[],
      ...(q.edns ? { edns: { udpSize: EDNS_UDP_SIZE } } : {}),
    };
    if (q.opcode !== 0) return { ...base, rcode: RCODE.NOTIMP };
    if (q.questions.length !== 1) return { ...base, question: undefined, rcode: RCODE.FORMERR };
    if (q.edns && q.edns.version > 0) return { ...base, rcode: RCODE.BADVERS };
    const { name, type, class: cls } = q.questions[0]!;
    if (cls !== RR_CLASS.IN && cls !== RR_CLASS.ANY) return { ...base, rcode: RCODE.REFUSED };
    const found = this.#relative(name);
    if (!found) return { ...base, rcode: RCODE.REFUSED };
    const { rel, apex } = found;
    if (type === RR_TYPE.AXFR || type === RR_TYPE.IXFR) return { ...base, rcode: RCODE.REFUSED };
    const zone = { ...base, aa: true };
    const soa = [this.#soa(apex)];
    if (rel.length === 0) {
      return type === RR_TYPE.SOA || type === RR_TYPE.ANY
        ? { ...zone, rcode: RCODE.NOERROR, answers: soa }
        : { ...zone, rcode: RCODE.NOERROR, authority: soa };
    }
    if (rel.length === 1) {
      // `<namespace>.<domain>` holds no records, but names exist below it (RFC 8020).
      return this.#namespaces.has(rel[0]!)
        ? { ...zone, rcode: RCODE.NOERROR, authority: soa }
        : { ...zone, rcode: RCODE.NXDOMAIN, authority: soa };
    }
    const entry = rel.length === 2 ? this.#entries.get(`${rel[0]}.${rel[1]}`) : undefined;
    if (!entry) return { ...zone, rcode: RCODE.NXDOMAIN, authority: soa };
    const answers: DnsRecord[] = [];
    if (type === RR_TYPE.A || type === RR_TYPE.ANY) {
      for (const a of entry.ipv4) {
        answers.push({ name, type: RR_TYPE.A, ttl: this.ttl, data: { a } });
      }
    }
    if (type === RR_TYPE.AAAA || type === RR_TYPE.ANY) {
      for (const aaaa of entry.ipv6) {
        answers.push({ name, type: RR_TYPE.AAAA, ttl: this.ttl, data: { aaaa } });
      }
    }
    return answers.length > 0
      ? { ...zone, rcode: RCODE.NOERROR, answers }
      : { ...zone, rcode: RCODE.NOERROR, authority: soa };
  }

  /**
   * The labels of `name` below the longest zone that holds it, lower-cased, and that zone;
   * undefined when outside them all.
   */
  #relative(name: DnsName): { rel: string[]; apex: DnsName } | undefined {
    const lower = name.map((l) => l.toLowerCase());
    for (const d of this.zones) {
      if (lower.length < d.length) continue;
      if (d.every((l, i) => lower[lower.length - d.length + i] === l)) {
        return { rel: lower.slice(0, lower.length - d.length), apex: d };
      }
    }
    return undefined;
  }

  #soa(apex: DnsName): DnsRecord {
    return {
      name: apex,
      type: RR_TYPE.SOA,
      ttl: this.ttl,
      data: {
        soa: {
          mname: ["meshd", ...apex],
          rname: ["hostmaster", ...apex],
          serial: this.#serial,
          refresh: 60,
          retry: 10,
          expire: 3600,
          minimum: this.ttl,
        },
      },
    };
  }
}

function sameEntry(a: MeshDnsEntry | undefined, b: MeshDnsEntry): boolean {
  return a === b || !!a && a.ipv4.join() === b.ipv4.join() && a.ipv6.join() === b.ipv6.join();
}
