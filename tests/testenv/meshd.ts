/**
 * meshd processes for the integration tier: `meshd run --provider kube` against the test
 * cluster, with the permissions the deployed binary has, and its JSON log lines parsed.
 *
 * @module
 */
import { Child, freePort, waitFor } from "./process.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/**
 * The V8 flags every launch of meshd passes (deno.json's `meshd` and `compile` tasks, the test
 * image's wrapper, `scripts/quickstart`): the pages of the config reader's thread go back to
 * the system when the thread ends, not 30 s later, and `gc()` lets meshd give back what a large
 * config change grew at once (see the README, "Memory"), and HTTPRouteGroups' regular
 * expressions run on V8's linear-time engine (`src/topology/user_regex.ts`).
 */
export const MESHD_V8_FLAGS =
  "--v8-flags=--no-memory-pool-share-memory-on-teardown,--expose-gc,--enable-experimental-regexp-engine";

/**
 * The userspace path's permissions (`deno task meshd`). Without FFI, `--datapath auto` falls
 * back to the userspace proxy, so these meshd processes never attach anything; the eBPF tier
 * (`tests/ebpf/`) runs meshd with `--allow-all` on a scratch cgroup of its own.
 */
export const MESHD_PERMISSIONS = [
  MESHD_V8_FLAGS,
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-sys=hostname,osRelease,networkInterfaces",
];

/**
 * The file-mode permissions `scripts/quickstart` gives meshd: no FFI, so the userspace path.
 * The default of {@linkcode spawnMeshd}.
 */
export const FILE_PERMISSIONS: readonly string[] = [
  MESHD_V8_FLAGS,
  "--allow-net",
  "--allow-read",
  "--allow-env=MESHD_*,LOG_TOKENS,LOG_STREAM",
];

/**
 * Deno's argv for `meshd run` from this checkout: `deno` (permissions and other Deno flags,
 * default {@linkcode FILE_PERMISSIONS}), `main.ts`, `run`, then meshd's `flags`.
 */
export function meshdArgv(flags: string[], deno: readonly string[] = FILE_PERMISSIONS): string[] {
  return ["run", ...deno, `${ROOT}main.ts`, "run", ...flags];
}

/** Where and how {@linkcode spawnMeshd} starts meshd. */
export interface SpawnMeshdOptions {
  /** The process's name in the harness's messages; default `meshd`. */
  name?: string;
  /** Deno's flags before `main.ts`; default {@linkcode FILE_PERMISSIONS}. */
  deno?: readonly string[];
  /** A network namespace to run it in (`ip netns exec`). */
  netns?: string;
  /** A command and its arguments that run Deno in turn, such as `["prlimit", "--nofile=64"]`. */
  wrap?: string[];
  /** Starts it through an eBPF env: in its namespace, and with `inCgroup` in its cgroup. */
  via?: { spawn(cmd: string, args: string[], o: { inCgroup?: boolean }): Child };
  inCgroup?: boolean;
  cwd?: string;
  env?: Record<string, string>;
}

/**
 * The environment meshd is shipped with (the Dockerfile's `ENV`, the test image's `Env`,
 * `deno task meshd`): one glibc malloc arena, which glibc reads only at start (README, Memory).
 * {@linkcode spawnMeshd} starts meshd with it unless `env` says otherwise.
 */
export const MESHD_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: "1" };

/**
 * Starts `meshd run` with `flags` from this checkout: the one place the harness, the tests
 * and the benches build meshd's command line. Returns at once; wait for readiness yourself.
 */
export function spawnMeshd(flags: string[], o: SpawnMeshdOptions = {}): Child {
  const argv = meshdArgv(flags, o.deno);
  if (o.via) return o.via.spawn(Deno.execPath(), argv, { inCgroup: o.inCgroup });
  const before = [...(o.netns ? ["ip", "netns", "exec", o.netns] : []), ...(o.wrap ?? [])];
  const name = o.name ?? "meshd";
  const env = { ...MESHD_ENV, ...o.env };
  if (before.length === 0) return new Child(name, argv, { cwd: o.cwd, env });
  return new Child(name, [...before.slice(1), Deno.execPath(), ...argv], {
    command: before[0]!,
    cwd: o.cwd,
    env,
  });
}

/** A file-mode meshd on loopback: its process and the free ports it was given. */
export interface FileMeshd {
  child: Child;
  http: number;
  api: number;
  tcp: number;
  udp: number;
}

/**
 * Starts `meshd run` with the file provider on `configDir` (the userspace path, as
 * `scripts/quickstart` runs it), on free loopback ports: the HTTP entrypoint, the API, and one
 * TCP and one UDP proxy port (so it never takes the default ranges); `args` are added. Resolves
 * once `/readyz` answers 200.
 */
export async function startFileMeshd(
  configDir: string,
  args: string[] = [],
  name = "meshd",
): Promise<FileMeshd> {
  const ports = { http: freePort(), api: freePort(), tcp: freePort(), udp: freePort() };
  const child = spawnMeshd([
    "--config-dir",
    configDir,
    "--http-port",
    String(ports.http),
    "--api-port",
    String(ports.api),
    "--tcp-ports",
    `${ports.tcp}-${ports.tcp}`,
    "--udp-ports",
    `${ports.udp}-${ports.udp}`,
    ...args,
  ], { name });
  try {
    await waitFor(`${name} to be ready`, async () => {
      const r = await fetch(`http://127.0.0.1:${ports.api}/readyz`);
      await r.body?.cancel();
      return r.status === 200 ? true : undefined;
    }, 30_000);
  } catch (e) {
    await child.stop();
    throw new Error(`${(e as Error).message}\n${child.lines.slice(-10).join("\n")}`);
  }
  return { child, ...ports };
}

/** `GET` on a meshd's API, from wherever it can be reached. */
export type ApiGet = (path: string) => Promise<{ status: number; body: string }>;

/** Where a meshd runs: on host loopback (free ports), or inside a node's network namespace. */
export interface MeshdPlace {
  /** The network namespace (`ip netns exec`); its ports are meshd's defaults there. */
  netns: string;
  /** How the test reaches the API inside the namespace. */
  api: ApiGet;
  /** Called with the PID once the process runs (the harness records it for cleanup). */
  started?: (pid: number) => void;
}

/** One meshd process, on loopback or in a node's network namespace. */
export class MeshdProcess {
  readonly child: Child;
  readonly identity: string;
  readonly apiPort: number;
  readonly httpPort: number;
  /** Port of its DNS responder, UDP and TCP. */
  readonly dnsPort: number;
  /** Port of its config stream (served while it leads). */
  readonly distributionPort: number;
  readonly #get: ApiGet;

  constructor(
    child: Child,
    identity: string,
    ports: { api: number; http: number; dns: number; distribution: number },
    get?: ApiGet,
  ) {
    this.child = child;
    this.identity = identity;
    this.apiPort = ports.api;
    this.httpPort = ports.http;
    this.dnsPort = ports.dns;
    this.distributionPort = ports.distribution;
    this.#get = get ?? (async (path) => {
      const r = await fetch(`http://127.0.0.1:${this.apiPort}${path}`);
      return { status: r.status, body: await r.text() };
    });
  }

  /**
   * Starts `meshd run --provider kube` with `extra` flags; it keeps its applied config in
   * `stateDir` when one is given, and nothing otherwise. On loopback it takes free ports; in a
   * namespace (`place`) it listens on every address there, on ports 9000 (API), 5000 (HTTP),
   * 53 (DNS) and 9443 (config stream). A successor (`samePorts`, with `--reuse-port` in both)
   * takes the ports of the meshd it replaces.
   */
  static start(
    kubeconfig: string,
    identity: string,
    extra: string[] = [],
    stateDir = "",
    place?: MeshdPlace,
    samePorts?: MeshdProcess,
  ): MeshdProcess {
    const ports = samePorts
      ? {
        api: samePorts.apiPort,
        http: samePorts.httpPort,
        dns: samePorts.dnsPort,
        distribution: samePorts.distributionPort,
      }
      : place
      ? { api: 9000, http: 5000, dns: 53, distribution: 9443 }
      : { api: freePort(), http: freePort(), dns: freePort(), distribution: freePort() };
    const child = spawnMeshd([
      "--provider=kube",
      `--kubeconfig=${kubeconfig}`,
      `--identity=${identity}`,
      `--api-port=${ports.api}`,
      `--http-port=${ports.http}`,
      `--dns-port=${ports.dns}`,
      `--distribution-port=${ports.distribution}`,
      `--state-dir=${stateDir}`,
      "--log-format=json",
      ...(place
        ? ["--proxy-address=0.0.0.0", "--dns-address=0.0.0.0", "--distribution-address=0.0.0.0"]
        : []),
      ...extra,
    ], { name: identity, deno: MESHD_PERMISSIONS, netns: place?.netns, cwd: ROOT });
    place?.started?.(child.pid);
    return new MeshdProcess(child, identity, ports, place?.api);
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
  api(path: string): Promise<{ status: number; body: string }> {
    return this.#get(path);
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
