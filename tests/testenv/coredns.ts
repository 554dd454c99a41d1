/**
 * A real CoreDNS for the tests, built from the Go module proxy (tests/testenv/coredns/), run on
 * loopback with a Corefile in a test cluster's folder so that a crashed run's leftovers sweep
 * finds it.
 *
 * @module
 */
import { Child, waitFor } from "./process.ts";
import type { TestCluster } from "./cluster.ts";
import { dig } from "../../src/dns/_testing.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** Builds CoreDNS once (cached outside the repo) and returns the binary's path. */
export async function corednsBinary(): Promise<string> {
  const o = await new Deno.Command("bash", {
    args: [`${ROOT}tests/testenv/coredns/build.sh`],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!o.success) throw new Error("Building CoreDNS failed; see the lines above");
  return new TextDecoder().decode(o.stdout).trim().split("\n").pop()!;
}

/** A running CoreDNS. */
export class CoreDns {
  readonly child: Child;
  readonly port: number;

  private constructor(child: Child, port: number) {
    this.child = child;
    this.port = port;
  }

  /**
   * Starts CoreDNS on `corefile`, whose server blocks must listen on `port`, and waits until it
   * answers a query for `probe`. Its PID goes to the cluster's record of processes.
   */
  static async start(
    cluster: TestCluster,
    corefile: string,
    port: number,
    probe: string,
  ): Promise<CoreDns> {
    const bin = await corednsBinary();
    const conf = `${cluster.dir}/Corefile`;
    await Deno.writeTextFile(conf, corefile);
    const child = new Child("coredns", ["-conf", conf], { command: bin, cwd: cluster.dir });
    await Deno.writeTextFile(`${cluster.dir}/pids`, `${child.pid}\n`, { append: true });
    const dns = new CoreDns(child, port);
    try {
      await waitFor("CoreDNS to answer", async () => {
        const r = await dig(port, probe, "SOA");
        return r.status.startsWith("no answer") ? undefined : true;
      }, 15_000);
    } catch (e) {
      await child.stop();
      throw new Error(`${(e as Error).message}\n${child.lines.slice(-20).join("\n")}`);
    }
    return dns;
  }

  /** Stops it, by PID. */
  async stop(): Promise<void> {
    await this.child.stop();
  }
}

const FIXTURES = new URL("../fixtures/corefile/", import.meta.url);
const CONFIGMAPS = "/api/v1/namespaces/kube-system/configmaps";

/** The text of one Corefile fixture (`tests/fixtures/corefile/NAME`). */
export function corefileFixture(name: string): Promise<string> {
  return Deno.readTextFile(new URL(name, FIXTURES));
}

/** The names of every Corefile fixture, sorted. */
export function corefileFixtureNames(): string[] {
  return [...Deno.readDirSync(FIXTURES)].map((e) => e.name)
    .filter((n) => n.endsWith(".Corefile")).sort();
}

/** Creates or replaces the ConfigMap kube-system/coredns holding `corefile`. */
export async function putCorefile(cluster: TestCluster, corefile: string): Promise<void> {
  const body = {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: "coredns", namespace: "kube-system" },
    data: { Corefile: corefile },
  };
  const r = await cluster.request("GET", `${CONFIGMAPS}/coredns`);
  if (r.status === 404) await cluster.must("POST", CONFIGMAPS, body);
  else await cluster.must("PUT", `${CONFIGMAPS}/coredns`, body);
}
