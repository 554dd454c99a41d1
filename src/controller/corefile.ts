/**
 * The server block `meshd prepare` adds to CoreDNS's Corefile, and its removal. Pure: text in,
 * text out.
 */

/** The first line of the block meshd adds. */
export const COREFILE_BEGIN = "# BEGIN meshd: the mesh domain, added by meshd prepare";
/** The last line of the block meshd adds. */
export const COREFILE_END = "# END meshd";

/** A Corefile meshd will not edit, and why. */
export class CorefileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CorefileError";
  }
}

/** Where the mesh domain's queries go. */
export interface MeshBlockOptions {
  /** The mesh domain, such as `mesh`. */
  domain: string;
  /**
   * Other domains meshd answers like the domain (Traefik Mesh's `traefik.mesh` and `maesh`);
   * they join the domain as zones of the same server block.
   */
  aliases?: readonly string[];
  /** Addresses of the mesh DNS Service (its ClusterIPs), port 53. */
  upstreams: readonly string[];
  /** How long CoreDNS caches answers; meshd's own TTL is the useful value. */
  cacheSeconds: number;
}

const ZONE_NAME = /^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

/**
 * The zones of meshd's block: the domain first, then each alias once, lowercase and without a
 * final dot. A name that is not a plain domain name is refused, as it would end up in the
 * Corefile's syntax.
 */
export function meshZones(o: Pick<MeshBlockOptions, "domain" | "aliases">): string[] {
  const out: string[] = [];
  for (const [i, raw] of [o.domain, ...(o.aliases ?? [])].entries()) {
    const zone = raw.replace(/\.$/, "").toLowerCase();
    if (!ZONE_NAME.test(zone)) {
      throw new CorefileError(
        `Cannot use "${raw}" as ${i === 0 ? "the mesh domain" : "a mesh domain alias"}: ` +
          'expected a domain name such as "traefik.mesh"',
      );
    }
    if (!out.includes(zone)) out.push(zone);
  }
  return out;
}

/**
 * The block, from its begin marker to its end marker, with a line break after each line. Its
 * one server block holds the domain and every alias as keys (`mesh:53 traefik.mesh:53 {`): a
 * Corefile server block may serve several zones, so one `forward` covers them all.
 */
export function meshBlock(o: MeshBlockOptions): string {
  if (o.upstreams.length === 0) throw new CorefileError("The mesh DNS Service has no ClusterIP");
  const to = o.upstreams.map((ip) => ip.includes(":") ? `[${ip}]:53` : `${ip}:53`).join(" ");
  const keys = meshZones(o).map((z) => `${z}:53`).join(" ");
  return [
    COREFILE_BEGIN,
    `# ("meshd cleanup" removes it; edits between these markers are overwritten)`,
    `${keys} {`,
    "    errors",
    `    cache ${o.cacheSeconds}`,
    `    forward . ${to}`,
    "}",
    COREFILE_END,
    "",
  ].join("\n");
}

/** Where meshd's block sits in a Corefile: from the line break before it to its end. */
interface Span {
  start: number;
  end: number;
  /** The line break before the block, when there is one. */
  lead: string;
}

function findBlock(corefile: string): Span | null {
  const begins = lineStarts(corefile, COREFILE_BEGIN);
  const ends = lineStarts(corefile, COREFILE_END);
  if (begins.length === 0 && ends.length === 0) return null;
  if (begins.length !== 1 || ends.length !== 1 || ends[0]! < begins[0]!) {
    throw new CorefileError(
      `The Corefile has ${begins.length} "${COREFILE_BEGIN}" and ${ends.length} ` +
        `"${COREFILE_END}" lines, not one pair; fix it by hand, then run this again`,
    );
  }
  const eol = corefile.indexOf("\n", ends[0]!);
  // prepare put one line break before the block; it goes with it
  const lead = begins[0]! > 0 && corefile[begins[0]! - 1] === "\n" ? "\n" : "";
  return { start: begins[0]! - lead.length, end: eol < 0 ? corefile.length : eol + 1, lead };
}

function lineStarts(text: string, line: string): number[] {
  const out: number[] = [];
  for (let i = text.indexOf(line); i >= 0; i = text.indexOf(line, i + 1)) {
    const atStart = i === 0 || text[i - 1] === "\n";
    const rest = text.slice(
      i + line.length,
      text.indexOf("\n", i) < 0 ? undefined : text.indexOf("\n", i),
    );
    if (atStart && rest.trim() === "") out.push(i);
  }
  return out;
}

/** The zones of the server blocks at the top level of a Corefile, with their port. */
export function serverBlockKeys(corefile: string): { zone: string; port: number }[] {
  const out: { zone: string; port: number }[] = [];
  let depth = 0;
  let pending: string[] = [];
  let continues = false;
  for (const raw of corefile.split("\n")) {
    continues = false;
    for (const tok of raw.replace(/#.*$/, "").split(/(\{|\})|\s+/).filter(Boolean)) {
      if (tok === "{") {
        // snippets, "(name) { ... }", are not server blocks
        if (depth === 0) {
          for (const k of pending) if (!k.startsWith("(")) out.push(parseKey(k));
        }
        pending = [];
        depth++;
      } else if (tok === "}") depth = Math.max(0, depth - 1);
      else if (depth === 0) {
        pending.push(...tok.split(",").filter(Boolean));
        continues = tok.endsWith(",");
      }
    }
    // at the top level a line ends a directive such as import, unless keys go on after a comma
    if (!continues) pending = [];
  }
  return out;
}

function parseKey(key: string): { zone: string; port: number } {
  const noScheme = key.replace(/^[a-z]+:\/\//, "");
  const m = noScheme.match(/^(.*?)(?::(\d+))?$/)!;
  const zone = m[1]!.replace(/\.$/, "").toLowerCase() || ".";
  return { zone, port: m[2] ? Number(m[2]) : 53 };
}

/** What {@linkcode addMeshBlock} made of a Corefile. */
export interface MeshBlockEdit {
  /** The Corefile with meshd's block in place. */
  corefile: string;
  /** The zones of meshd's block, the domain first. */
  zones: string[];
  /**
   * Aliases left out of meshd's block because a server block meshd did not add already serves
   * them on port 53 (Traefik Mesh's own, during a migration).
   */
  leftOut: string[];
}

/**
 * The Corefile with meshd's block in place: appended after one line break when absent,
 * replaced where it is when present. CoreDNS refuses to start when two server blocks serve one
 * zone on one port, so a zone the Corefile already serves on port 53 outside meshd's markers
 * stays out of meshd's block: for the domain that is an error, for an alias it is left out
 * (and named in `leftOut`) until that other block is gone.
 */
export function addMeshBlock(corefile: string, o: MeshBlockOptions): MeshBlockEdit {
  const span = findBlock(corefile);
  const outside = span ? corefile.slice(0, span.start) + corefile.slice(span.end) : corefile;
  const [domain, ...aliases] = meshZones(o);
  const taken = servedOutside(outside);
  if (taken.has(domain!)) {
    throw new CorefileError(
      `The Corefile already has a server block for "${domain}:53" that meshd did not add; ` +
        "remove it, or give meshd another --domain",
    );
  }
  const leftOut = aliases.filter((a) => taken.has(a));
  const zones = [domain!, ...aliases.filter((a) => !taken.has(a))];
  const block = meshBlock({ ...o, domain: domain!, aliases: zones.slice(1) });
  const text = span
    ? corefile.slice(0, span.start) + span.lead + block + corefile.slice(span.end)
    : corefile + "\n" + block;
  return { corefile: text, zones, leftOut };
}

/** The zones a Corefile serves on port 53. */
function servedOutside(corefile: string): Set<string> {
  return new Set(serverBlockKeys(corefile).filter((k) => k.port === 53).map((k) => k.zone));
}

/**
 * Which zones a Corefile sends to meshd and which it serves elsewhere: `forwarded` are the keys
 * of meshd's block on port 53 (empty without the block), `elsewhere` the zones served on port
 * 53 by server blocks meshd did not add.
 */
export function corefileZones(corefile: string): { forwarded: string[]; elsewhere: string[] } {
  const span = findBlock(corefile);
  if (!span) return { forwarded: [], elsewhere: [...servedOutside(corefile)] };
  const outside = corefile.slice(0, span.start) + corefile.slice(span.end);
  return {
    forwarded: [...servedOutside(corefile.slice(span.start, span.end))],
    elsewhere: [...servedOutside(outside)],
  };
}

/** The Corefile without meshd's block; the same text when there is none. */
export function removeMeshBlock(corefile: string): string {
  const span = findBlock(corefile);
  return span ? corefile.slice(0, span.start) + corefile.slice(span.end) : corefile;
}

/** The block meshd added, or null. */
export function currentMeshBlock(corefile: string): string | null {
  const span = findBlock(corefile);
  return span ? corefile.slice(span.start + span.lead.length, span.end) : null;
}
