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
  const l = bare(listen);
  if (l === "localhost") return isLoopback;
  if (l !== "0.0.0.0" && l !== "::" && l !== "") return (a) => bare(a) === l;
  let local: Set<string> | null = null;
  return (a) => {
    const b = bare(a);
    if (isLoopback(b) || b === "0.0.0.0" || b === "::") return true;
    local ??= new Set(interfaces().map(bare));
    return local.has(b);
  };
}

function bare(a: string): string {
  const s = a.startsWith("[") && a.endsWith("]") ? a.slice(1, -1) : a;
  return s.toLowerCase().replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
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
