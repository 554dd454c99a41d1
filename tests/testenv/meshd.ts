/**
 * meshd processes for the integration tier: `meshd run --provider kube` against the test
 * cluster, with the permissions the deployed binary has, and its JSON log lines parsed.
 *
 * @module
 */
import { Child, freePort, waitFor } from "./process.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** The permissions `deno task compile` gives the binary. */
export const MESHD_PERMISSIONS = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-sys=hostname,osRelease",
];

/** One meshd process on loopback. */
export class MeshdProcess {
  readonly child: Child;
  readonly identity: string;
  readonly apiPort: number;
  readonly httpPort: number;
  /** Port of its DNS responder, UDP and TCP. */
  readonly dnsPort: number;
  /** Port of its config stream (served while it leads). */
  readonly distributionPort: number;

  constructor(
    child: Child,
    identity: string,
    ports: { api: number; http: number; dns: number; distribution: number },
  ) {
    this.child = child;
    this.identity = identity;
    this.apiPort = ports.api;
    this.httpPort = ports.http;
    this.dnsPort = ports.dns;
    this.distributionPort = ports.distribution;
  }

  /**
   * Starts `meshd run --provider kube` with `extra` flags, on free loopback ports; it keeps
   * its applied config in `stateDir` when one is given, and nothing otherwise.
   */
  static start(
    kubeconfig: string,
    identity: string,
    extra: string[] = [],
    stateDir = "",
  ): MeshdProcess {
    const apiPort = freePort();
    const httpPort = freePort();
    const dnsPort = freePort();
    const distributionPort = freePort();
    const child = new Child(identity, [
      "run",
      ...MESHD_PERMISSIONS,
      `${ROOT}main.ts`,
      "run",
      "--provider=kube",
      `--kubeconfig=${kubeconfig}`,
      `--identity=${identity}`,
      `--api-port=${apiPort}`,
      `--http-port=${httpPort}`,
      `--dns-port=${dnsPort}`,
      `--distribution-port=${distributionPort}`,
      `--state-dir=${stateDir}`,
      "--log-format=json",
      ...extra,
    ], { cwd: ROOT });
    return new MeshdProcess(child, identity, {
      api: apiPort,
      http: httpPort,
      dns: dnsPort,
      distribution: distributionPort,
    });
  }

  /** The JSON log events written so far. */
  events(): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    for (const line of this.child.lines) {
      if (!line.startsWith("{")) continue;
      try {
        out.push(JSON.parse(line));
      } catch { /* a partial line */ }
    }
    return out;
  }

  /** Waits for a log event whose `msg` is `msg` (and that passes `where`). */
  waitLog(
    msg: string,
    where: (e: Record<string, unknown>) => boolean = () => true,
    timeoutMs = 15_000,
  ): Promise<Record<string, unknown>> {
    return waitFor(`${this.identity} to log "${msg}"`, () => {
      const e = this.events().find((e) => e["msg"] === msg && where(e));
      if (e) return e;
      return undefined;
    }, timeoutMs).catch((err) => {
      throw new Error(`${err.message}\nlast lines:\n${this.child.lines.slice(-15).join("\n")}`);
    });
  }

  /** `GET` on this meshd's API. */
  async api(path: string): Promise<{ status: number; body: string }> {
    const r = await fetch(`http://127.0.0.1:${this.apiPort}${path}`);
    return { status: r.status, body: await r.text() };
  }

  /** SIGKILL, by PID: no cleanup at all, as a crash. */
  async kill(): Promise<void> {
    try {
      Deno.kill(this.child.pid, "SIGKILL");
    } catch { /* already gone */ }
    await this.child.exited();
  }

  /** SIGTERM, by PID, and wait for the exit. */
  async stop(): Promise<Deno.CommandStatus> {
    return await this.child.stop();
  }
}
