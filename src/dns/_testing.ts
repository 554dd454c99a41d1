/**
 * DNS queries with BIND's dig, a client written independently of meshd's DNS code. scripts/test
 * installs it (Debian bind9-dnsutils); without it the tests that ask fail and say so. For tests
 * only (the DNS server's unit test and the harness): nothing in meshd imports it. It runs a
 * process because an independent client is the point of the check.
 *
 * @module
 */

/** What dig printed, section by section; records with their whitespace collapsed. */
export interface DigResult {
  status: string;
  flags: string[];
  answer: string[];
  authority: string[];
}

/** Asks the server on 127.0.0.1:`port`; `args` are dig's (name, type, +options). */
export async function dig(port: number, ...args: string[]): Promise<DigResult> {
  let out;
  try {
    out = await new Deno.Command("dig", {
      args: [
        "@127.0.0.1",
        "-p",
        String(port),
        "+time=2",
        "+tries=1",
        "+noall",
        "+comments",
        "+answer",
        "+authority",
        ...args,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    throw new Error(`Cannot run dig (Debian package bind9-dnsutils): ${(e as Error).message}`);
  }
  const text = new TextDecoder().decode(out.stdout);
  const status = text.match(/status: (\w+)/)?.[1] ?? `no answer: ${text.trim()}`;
  const flags = text.match(/;; flags: ([^;]*);/)?.[1]?.trim().split(/\s+/) ?? [];
  const section = (name: string) => {
    const m = text.match(new RegExp(`;; ${name} SECTION:\\n([\\s\\S]*?)(?:\\n\\n|$)`));
    return m ? m[1]!.trim().split("\n").map((l) => l.split(/\s+/).join(" ")) : [];
  };
  return { status, flags, answer: section("ANSWER"), authority: section("AUTHORITY") };
}
