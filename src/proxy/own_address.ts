/**
 * Whether an endpoint address is this host as the proxy listens on it: the listen address
 * itself, or, when the proxy listens on every address (`0.0.0.0`, `::`), any loopback address
 * or an address of one of the host's interfaces. An endpoint at such an address and at one of
 * the proxy's own ports is the proxy itself: forwarding there loops.
 *
 * @example
 * ```ts
 * const own = ownAddress("0.0.0.0", () => ["192.0.2.7"]);
 * own("127.0.0.1"); // true
 * own("192.0.2.7"); // true
 * own("192.0.2.8"); // false
 * ```
 */
export function ownAddress(
  listen: string,
  interfaces: () => string[] = interfaceAddresses,
): (address: string) => boolean {
  const raw = unbracket(listen).toLowerCase();
  if (raw === "localhost") return (a) => isLoopback(canonicalAddress(a));
  if (!isUnspecified(raw)) {
    const l = canonicalAddress(listen);
    return (a) => canonicalAddress(a) === l;
  }
  let local: Set<string> | null = null;
  return (a) => {
    const b = canonicalAddress(a);
    if (isLoopback(b)) return true;
    local ??= new Set(interfaces().map(canonicalAddress));
    return local.has(b);
  };
}

function unbracket(a: string): string {
  return a.startsWith("[") && a.endsWith("]") ? a.slice(1, -1) : a;
}

/** Whether a listen address is every address (`0.0.0.0`, `::` or empty, in any spelling). */
function isUnspecified(raw: string): boolean {
  return raw === "" || atonIpv4(raw) === 0 || (parseIpv6(raw)?.every((g) => g === 0) ?? false);
}

/**
 * An address in one spelling, so that every way of writing it that the resolver accepts
 * (`getaddrinfo`, as `Deno.connect` uses) compares equal: IPv4 in the forms `inet_aton` reads
 * (`127.1`, `2130706433`, `0x7f.0.0.1`, `0177.0.0.1`) as dotted decimal, IPv6 in full with
 * IPv4-mapped addresses as their IPv4 (`::ffff:7f00:1` is `127.0.0.1`), brackets and zone
 * dropped, the unspecified address as loopback (a connection to it reaches this host), and
 * `localhost` (RFC 6761 §6.3) as `127.0.0.1`.
 */
export function canonicalAddress(a: string): string {
  let s = unbracket(a).toLowerCase();
  const zone = s.indexOf("%");
  if (zone >= 0) s = s.slice(0, zone);
  if (s === "localhost" || s.endsWith(".localhost")) return "127.0.0.1";
  const v4 = atonIpv4(s);
  if (v4 !== null) return v4 === 0 ? "127.0.0.1" : dotted(v4);
  const v6 = parseIpv6(s);
  if (v6 === null) return s;
  if (v6.slice(0, 5).every((g) => g === 0) && v6[5] === 0xffff) {
    const v = (v6[6]! * 0x10000 + v6[7]!) >>> 0;
    return v === 0 ? "127.0.0.1" : dotted(v);
  }
  if (v6.slice(0, 7).every((g) => g === 0) && v6[7]! <= 1) return "::1";
  return v6.map((g) => g.toString(16)).join(":");
}

function dotted(v: number): string {
  return [v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff].join(".");
}

/** An IPv4 address as `inet_aton` reads it (1 to 4 parts, decimal, octal or hex), or null. */
function atonIpv4(s: string): number | null {
  const parts = s.split(".");
  if (parts.length > 4) return null;
  const values: number[] = [];
  for (const p of parts) {
    let v: number;
    if (/^0x[0-9a-f]+$/.test(p)) v = parseInt(p.slice(2), 16);
    else if (/^0[0-7]*$/.test(p)) v = parseInt(p, 8);
    else if (/^[1-9][0-9]*$/.test(p)) v = Number(p);
    else return null;
    values.push(v);
  }
  const last = values.pop()!;
  if (values.some((v) => v > 255)) return null;
  const room = 2 ** (8 * (4 - values.length));
  if (last >= room) return null;
  let out = 0;
  for (const v of values) out = out * 256 + v;
  return out * room + last;
}

/** The eight groups of an IPv6 address (a dotted IPv4 tail allowed), or null. */
function parseIpv6(s: string): number[] | null {
  if (!s.includes(":")) return null;
  let text = s;
  const tail: number[] = [];
  const v4 = /^(.*:)(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/.exec(s);
  if (v4) {
    const bytes = v4[2]!.split(".").map(Number);
    if (bytes.some((b) => b > 255)) return null;
    tail.push(bytes[0]! * 256 + bytes[1]!, bytes[2]! * 256 + bytes[3]!);
    text = v4[1]!.endsWith("::") ? v4[1]! : v4[1]!.slice(0, -1);
  }
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const groups = halves.map((h) => h === "" ? [] : h.split(":"));
  if (!groups.flat().every((g) => /^[0-9a-f]{1,4}$/.test(g))) return null;
  const [head, rest] = groups.map((gs) => gs.map((g) => parseInt(g, 16)));
  const known = head!.length + (rest?.length ?? 0) + tail.length;
  if (rest === undefined ? known !== 8 : known > 7) return null;
  return [...head!, ...new Array(8 - known).fill(0), ...(rest ?? []), ...tail];
}

function isLoopback(a: string): boolean {
  return a.startsWith("127.") || a === "::1";
}

/**
 * The addresses of the host's interfaces, if meshd may read them (`--allow-sys` with
 * `networkInterfaces`; asked without a prompt), else none: loopback and the listen address
 * are then all that is known.
 */
function interfaceAddresses(): string[] {
  try {
    const p = Deno.permissions.querySync({ name: "sys", kind: "networkInterfaces" });
    if (p.state !== "granted") return [];
    return Deno.networkInterfaces().map((i) => i.address);
  } catch {
    return [];
  }
}
