import denoJson from "../../deno.json" with { type: "json" };
import { ConfigStore, MeshNode, successorBound, ZoneStore } from "../node/mod.ts";
import {
  type ApiServer,
  type LogFormat,
  Logger,
  type LogLevel,
  registerBuildInfo,
  type Registry,
  serveApi,
} from "../observability/mod.ts";
import { decodeFiles, FileProvider, ObjectLoader, readConfigFiles } from "../provider/mod.ts";
// Only types here: the kube room (and @kubernetes/client-node with it) loads on demand, so the
// file provider needs neither it nor the permissions it asks for.
import type { KubeApi, LeaderElector, Reflector } from "../kube/mod.ts";
import { availableCpus, type DataPlane, NodeProxy, ProxyPool } from "../proxy/mod.ts";
import {
  MeshController,
  SHADOW_SELECTOR,
  shadowDnsEntries,
  ShadowServiceController,
} from "../controller/mod.ts";
// Types only as well: the distribution room brings grpc-js, which reads GRPC_* variables as it
// loads, so it is imported in kube mode alone.
import type { DistributionClient, DistributionServer } from "../distribution/mod.ts";
import { DnsServer, type MeshDnsEntry, MeshZone } from "../dns/mod.ts";
import { compileMeshConfig, ConfigError, unreadableObjects } from "../topology/mod.ts";
import {
  DatapathError,
  type DatapathMode,
  FastPath,
  type MeshAddresses,
  type ProxyListener,
  selectDatapath,
} from "../datapath/mod.ts";
import { buildInfo, formatBuildInfo } from "./version.ts";
import { completionScript, type Shell, SHELLS } from "./completion.ts";
import {
  type FlagGroup,
  type FlagSpec,
  type FlagValue,
  formatFlagGroups,
  HELP_WIDTH,
  parseFlags,
  UsageError,
  wrap,
} from "./flags.ts";
import {
  compileOptions,
  configLimits,
  COREDNS_FLAGS,
  DATAPATH_FLAG,
  DISTRIBUTION_FLAGS,
  DNS_FLAGS,
  DOMAIN_ALIASES_FLAG,
  DRAIN_FLAGS,
  EBPF_FLAGS,
  EBPF_GRACE_FLAG,
  HEALTH_FLAGS,
  KUBE_FLAGS,
  LOG_FLAGS,
  MODEL_FLAGS,
  PROBE_FLAGS,
  PROXY_FLAGS,
  proxyOptions,
  WORKERS_FLAG,
} from "./options.ts";
import { checkCommand, cleanupCommand, prepareCommand } from "./cluster_commands.ts";
import { statCommand, statusCommand } from "./ops_commands.ts";
import { CliError, type CliIo, errorLine, kubeClient, warningLine } from "./common.ts";

export { CliError, type CliIo };

/** meshd's version, from deno.json. */
export const VERSION: string = denoJson.version;

/** Failures of the cluster commands that are the cluster's state, not a bug in meshd. */
const KNOWN_ERRORS = new Set(["KubeApiError", "PrepareError", "CorefileError"]);

/** `meshd run`'s flags, by topic as `--help` shows them. */
const RUN_GROUPS: readonly FlagGroup[] = [
  {
    title: "Where the config comes from",
    flags: [
      {
        name: "provider",
        kind: "string",
        values: ["file", "kube"],
        arg: "file|kube",
        default: "file",
        help: "Where objects come from: file reads --config-dir; kube watches the Kubernetes " +
          "API and elects a controller leader",
      },
      ...MODEL_FLAGS,
      DOMAIN_ALIASES_FLAG,
    ],
  },
  {
    title: "Proxy",
    flags: [
      {
        name: "proxy-address",
        kind: "string",
        arg: "ADDR",
        default: "127.0.0.1",
        help: "Address the proxy listens on (the node's address in a DaemonSet: UDP answers " +
          "leave from the address bound, and from 0.0.0.0 the kernel picks one NAT does not " +
          "match)",
      },
      {
        name: "http-port",
        kind: "int",
        arg: "PORT",
        default: "5000",
        help: "HTTP entrypoint, routed by Host <service>.<namespace>.<domain>[:port]",
      },
      WORKERS_FLAG,
      ...PROXY_FLAGS,
      ...DRAIN_FLAGS,
    ],
  },
  { title: "Kubernetes (--provider kube)", flags: KUBE_FLAGS },
  { title: "Config distribution (--provider kube)", flags: DISTRIBUTION_FLAGS },
  { title: "Mesh DNS (--provider kube)", flags: DNS_FLAGS },
  {
    title: "API, health and metrics",
    flags: [
      {
        name: "api-address",
        kind: "string",
        arg: "ADDR",
        default: "127.0.0.1",
        help: "Address of the API (/api/config, /api/services, /api/status, /metrics, " +
          "/healthz, /readyz); it shows every endpoint and ServiceAccount, so keep it on " +
          "loopback and reach it with kubectl port-forward",
      },
      { name: "api-port", kind: "int", arg: "PORT", default: "9000", help: "Port of the API" },
      ...HEALTH_FLAGS,
    ],
  },
  {
    title: "eBPF data path",
    flags: [DATAPATH_FLAG, ...EBPF_FLAGS, EBPF_GRACE_FLAG, ...PROBE_FLAGS],
  },
  { title: "Logging", flags: LOG_FLAGS },
];

const RUN_FLAGS: readonly FlagSpec[] = RUN_GROUPS.flatMap((g) => g.flags);

const DUMP_FLAGS: readonly FlagSpec[] = [...MODEL_FLAGS];

const pick = (specs: readonly FlagSpec[], ...names: string[]) =>
  specs.filter((f) => names.includes(f.name));
const CLUSTER_FLAGS = pick(KUBE_FLAGS, "kubeconfig", "mesh-namespace");
const LEVEL_FLAG = pick(LOG_FLAGS, "log-level");
const DOMAIN_FLAG = pick(MODEL_FLAGS, "domain");

const PREPARE_FLAGS: readonly FlagSpec[] = [
  ...CLUSTER_FLAGS,
  ...DOMAIN_FLAG,
  {
    ...DOMAIN_ALIASES_FLAG,
    help: "Domains CoreDNS also sends to meshd (match meshd run's); one that a block meshd " +
      "did not add serves (Traefik Mesh's) is left out, with a warning",
  },
  ...COREDNS_FLAGS,
  {
    ...pick(DNS_FLAGS, "dns-ttl")[0]!,
    help: "How long CoreDNS caches mesh answers; match meshd run's --dns-ttl",
  },
  ...LEVEL_FLAG,
];

const CLEANUP_FLAGS: readonly FlagSpec[] = [
  ...CLUSTER_FLAGS,
  ...pick(COREDNS_FLAGS, "coredns-namespace", "coredns-configmap"),
  ...pick(KUBE_FLAGS, "lease-name"),
  {
    name: "force",
    kind: "bool",
    default: "false",
    help: "Clean up even while a meshd controller holds the Lease (it will write its shadow " +
      "Services again)",
  },
  ...LEVEL_FLAG,
];

/** Where meshd runs, and how its pods' metrics are reached: check, status and stat. */
const MESH_FLAGS: readonly FlagSpec[] = [
  {
    name: "daemonset",
    kind: "string",
    arg: "NAME",
    default: "meshd",
    help: "meshd's DaemonSet in --mesh-namespace",
  },
  ...pick(KUBE_FLAGS, "meshd-selector", "lease-name"),
  {
    name: "metrics-port",
    kind: "int",
    arg: "PORT",
    default: "9002",
    help: "The meshd pods' --metrics-port, read through the API server's pod proxy (needs " +
      "get pods/proxy)",
  },
];

const OUTPUT_FLAG: FlagSpec = {
  name: "output",
  short: "o",
  kind: "string",
  values: ["text", "json"],
  default: "text",
  help: "Print text for people or JSON for programs",
};

const CHECK_FLAGS: readonly FlagSpec[] = [
  {
    name: "pre",
    kind: "bool",
    default: "false",
    help: "Before install: the API version, RBAC to install, CoreDNS found, SMI CRDs and the " +
      "nodes' kernels (instead of the installed meshd's DaemonSet, leader and nodes)",
  },
  {
    name: "wait",
    kind: "duration",
    arg: "DURATION",
    help: "Run the checks again (every 2s) until none fails or DURATION is up, such as 2m",
  },
  OUTPUT_FLAG,
  ...CLUSTER_FLAGS,
  ...MESH_FLAGS,
  ...DOMAIN_FLAG,
  {
    ...DOMAIN_ALIASES_FLAG,
    help: "Domains the coredns line expects forwarded with --domain; one missing is a warning",
  },
  ...COREDNS_FLAGS,
  ...EBPF_FLAGS,
  ...PROBE_FLAGS,
  ...LEVEL_FLAG,
];

const STATUS_FLAGS: readonly FlagSpec[] = [
  OUTPUT_FLAG,
  ...CLUSTER_FLAGS,
  ...MESH_FLAGS,
  ...LEVEL_FLAG,
];

const STAT_FLAGS: readonly FlagSpec[] = [
  {
    name: "window",
    kind: "duration",
    arg: "DURATION",
    default: "30s",
    help: "How long to count: every node's metrics are read at its start and at its end",
  },
  OUTPUT_FLAG,
  ...CLUSTER_FLAGS,
  ...MESH_FLAGS,
  ...LEVEL_FLAG,
];

interface Command {
  usage: string;
  summary: string;
  flags: readonly FlagSpec[];
  /** How many positional arguments it takes (default none). */
  positionals?: number;
  /** The flags by topic in `--help`, when there are many. */
  groups?: readonly FlagGroup[];
  run: (values: Record<string, FlagValue>, io: CliIo, positionals: string[]) => Promise<number>;
}

const COMMANDS: Record<string, Command> = {
  run: {
    usage: "meshd run [flags]",
    summary: "Run the node proxy and the API, fed by a provider",
    flags: RUN_FLAGS,
    groups: RUN_GROUPS,
    run: runCommand,
  },
  prepare: {
    usage: "meshd prepare [flags]",
    summary: "Add the mesh domain and its aliases to CoreDNS: a Corefile server block " +
      "forwarding them to meshd",
    flags: PREPARE_FLAGS,
    run: (v, io) => prepareCommand(v, io),
  },
  cleanup: {
    usage: "meshd cleanup [flags]",
    summary: "Remove what prepare added to CoreDNS, and the shadow Services",
    flags: CLEANUP_FLAGS,
    run: (v, io) => cleanupCommand(v, io),
  },
  check: {
    usage: "meshd check [--pre] [--wait DURATION] [-o json] [flags]",
    summary: "Check a cluster for meshd, grouped with a hint per problem: --pre before " +
      "install (API version, RBAC, CoreDNS, SMI CRDs, kernels); after it also the DaemonSet, " +
      "the leader and each node's config and data path. Exit 1 when something fails",
    flags: CHECK_FLAGS,
    run: (v, io) => checkCommand(v, io),
  },
  status: {
    usage: "meshd status [-o json] [flags]",
    summary: "One screen on the installed mesh: version, leader, nodes ready, config version " +
      "skew, data path per node, last errors. Exit 1 when not every node has a ready meshd",
    flags: STATUS_FLAGS,
    run: (v, io) => statusCommand(v, io),
  },
  stat: {
    usage: "meshd stat [NAMESPACE[/SERVICE]] [--window 30s] [-o json] [flags]",
    summary: "Golden signals per service port over a window, from every node's metrics " +
      "through the API server: success rate, requests/s, p50, p95, p99",
    flags: STAT_FLAGS,
    positionals: 1,
    run: (v, io, positionals) => statCommand(v, io, positionals),
  },
  "config dump": {
    usage: "meshd config dump --config-dir DIR [flags]",
    summary: "Print the MeshConfig built from a directory as JSON; exit 1 on bad input",
    flags: DUMP_FLAGS,
    run: dumpCommand,
  },
  completion: {
    usage: "meshd completion bash|zsh|fish",
    summary: "Print a shell completion script for meshd's commands, flags and flag values",
    flags: [],
    positionals: 1,
    run: (_v, io, positionals) => {
      const shell = positionals[0];
      if (!SHELLS.includes(shell as Shell)) {
        throw new UsageError(
          shell === undefined
            ? `Which shell? Expected one of ${SHELLS.join(", ")}`
            : `Unknown shell "${shell}": expected one of ${SHELLS.join(", ")}`,
        );
      }
      const commands = Object.entries(COMMANDS).map(([name, c]) => ({
        name,
        summary: c.summary,
        flags: c.flags,
      }));
      io.stdout(completionScript(shell as Shell, commands));
      return Promise.resolve(0);
    },
  },
  version: {
    usage: "meshd version",
    summary: "Print the version, the commit and build date, compiled or from source, and " +
      "the Deno version",
    flags: [],
    run: (_v, io) => {
      io.stdout(formatBuildInfo(buildInfo(VERSION)));
      return Promise.resolve(0);
    },
  },
};

function topHelp(): string {
  const rows = Object.entries(COMMANDS).map(([name, c]) =>
    wrap(c.summary, HELP_WIDTH - 15).map((l, i) => `${i ? "" : `  ${name}`}`.padEnd(15) + l)
      .join("\n")
  );
  return `meshd: a sidecar-less service mesh for Kubernetes

Usage: meshd <command> [flags]

Commands:
${rows.join("\n")}

Every flag can also be set as an environment variable MESHD_<FLAG>, such as
MESHD_CONFIG_DIR for --config-dir; a flag on the command line wins.
Run "meshd <command> --help" for its flags.
`;
}

function commandHelp(c: Command): string {
  const flags = c.flags.length > 0
    ? `\n${formatFlagGroups(c.groups ?? [{ title: "Flags", flags: c.flags }], true)}\n`
    : "";
  return `${wrap(c.summary, HELP_WIDTH).join("\n")}\n\nUsage: ${c.usage}\n${flags}`;
}

/**
 * The CLI: parses `argv`, runs the command, returns the exit code (0 done, 1 failed, 2 wrong
 * usage). Known errors are one line on stderr; stack traces only at `--log-level debug`.
 */
export async function main(argv: readonly string[], io: CliIo = defaultIo()): Promise<number> {
  const [first, second] = argv;
  if (first === undefined || first === "help" || first === "--help" || first === "-h") {
    (first === undefined ? io.stderr : io.stdout)(topHelp());
    return first === undefined ? 2 : 0;
  }
  if (first === "--version") return COMMANDS.version!.run({}, io, []);
  let name = first;
  let rest = argv.slice(1);
  if (first === "config") {
    if (second === undefined || second === "--help" || second === "-h") {
      io.stdout(
        `Usage: meshd config dump --config-dir DIR [flags]\n\nSubcommands:\n  dump  ${
          COMMANDS["config dump"]!.summary
        }\n`,
      );
      return second === undefined ? 2 : 0;
    }
    name = `config ${second}`;
    rest = argv.slice(2);
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    io.stderr(
      errorLine("meshd", `unknown command "${name}"`, 'run "meshd --help" for the commands'),
    );
    return 2;
  }
  let parsed;
  try {
    parsed = parseFlags(rest, cmd.flags, io.env);
  } catch (e) {
    if (e instanceof UsageError) {
      io.stderr(errorLine(`meshd ${name}`, e.message, `run "meshd ${name} --help" for the flags`));
      return 2;
    }
    throw e;
  }
  if (parsed.help) {
    io.stdout(commandHelp(cmd));
    return 0;
  }
  if (parsed.positionals.length > (cmd.positionals ?? 0)) {
    const extra = parsed.positionals[cmd.positionals ?? 0];
    io.stderr(
      errorLine(`meshd ${name}`, `unexpected argument "${extra}"`, `run "meshd ${name} --help"`),
    );
    return 2;
  }
  try {
    return await cmd.run(parsed.values, io, parsed.positionals);
  } catch (e) {
    if (e instanceof UsageError) {
      io.stderr(errorLine(`meshd ${name}`, e.message, `run "meshd ${name} --help"`));
      return 2;
    }
    const debug = parsed.values["log-level"] === "debug";
    if (
      e instanceof CliError || KNOWN_ERRORS.has((e as Error)?.name) ||
      e instanceof Deno.errors.NotFound ||
      e instanceof Deno.errors.AddrInUse ||
      e instanceof Deno.errors.PermissionDenied
    ) {
      io.stderr(errorLine(`meshd ${name}`, (e as Error).message));
      if (debug) io.stderr(`${(e as Error).stack}\n`);
      return 1;
    }
    // Not a known failure: a bug. Say so, with the trace.
    io.stderr(
      errorLine(
        `meshd ${name}`,
        `internal error (please report): ${e instanceof Error ? e.stack : String(e)}`,
      ),
    );
    return 1;
  }
}

function defaultIo(): CliIo {
  const enc = new TextEncoder();
  return {
    stdout: (s) => Deno.stdout.writeSync(enc.encode(s)),
    stderr: (s) => Deno.stderr.writeSync(enc.encode(s)),
    env: (k) => {
      try {
        return Deno.env.get(k);
      } catch {
        return undefined; // not allowed to read it: treat as unset
      }
    },
  };
}

async function needDir(values: Record<string, FlagValue>): Promise<string> {
  const dir = values["config-dir"] as string | undefined;
  if (!dir) throw new CliError("--config-dir (or MESHD_CONFIG_DIR) is required");
  const stat = await Deno.stat(dir).catch((e) => {
    throw new CliError(`Cannot read config directory "${dir}": ${(e as Error).message}`);
  });
  if (!stat.isDirectory) {
    throw new CliError(`Cannot use "${dir}" as config directory: not a directory`);
  }
  return dir;
}

async function dumpCommand(values: Record<string, FlagValue>, io: CliIo): Promise<number> {
  const dir = await needDir(values);
  const limits = configLimits(values);
  let files;
  try {
    files = await readConfigFiles(dir, { maxFileBytes: limits.maxFileBytes });
  } catch (e) {
    throw new CliError(`Cannot read config directory "${dir}": ${(e as Error).message}`);
  }
  const result = new ObjectLoader().merge(await decodeFiles(files, limits));
  // `run` skips a FIFO or device named *.yaml with a warning; a check of the files says no.
  for (const f of files) {
    if (f.skipped !== undefined) {
      result.errors.push(new ConfigError(`Cannot read file "${f.path}": ${f.skipped}`));
    }
  }
  result.warnings = result.warnings.filter((w) => !w.startsWith('Skipping "'));
  let compiled;
  try {
    compiled = compileMeshConfig(result.objects, {
      ...compileOptions(values),
      unreadable: unreadableObjects(result.errors),
    });
  } catch (e) {
    // The loader bounds what reaches the compiler; should something still break it, say so in
    // one line, as for any bad input.
    throw new CliError(`Cannot compile the config of "${dir}": ${(e as Error).message}`);
  }
  const { config, diagnostics } = compiled;
  for (const w of result.warnings) io.stderr(warningLine("meshd config dump", w));
  for (const d of diagnostics) {
    const line = d.level === "warn" ? warningLine : errorLine;
    io.stderr(line("meshd config dump", `${d.object}: ${d.message}`));
  }
  if (result.errors.length > 0 || diagnostics.some((d) => d.level === "error")) {
    for (const e of result.errors) io.stderr(errorLine("meshd config dump", e.message));
    return 1;
  }
  io.stdout(JSON.stringify(config, null, 2) + "\n");
  return 0;
}

/** The kube provider's client and election settings, checked before anything starts. */
async function kubeSetup(values: Record<string, FlagValue>, io: CliIo) {
  const { kube, kapi } = await kubeClient(values, io);
  const { checkElectionTiming } = kube;
  const timing = {
    leaseDurationMs: values["lease-duration"] as number,
    renewDeadlineMs: values["renew-deadline"] as number,
    retryPeriodMs: values["retry-period"] as number,
  };
  const bad = checkElectionTiming(timing);
  if (bad) throw new CliError(`Leader election: ${bad}`);
  const selector: Record<string, string> = {};
  for (const kv of values["meshd-selector"] as string[]) {
    const [k, v] = kv.split("=");
    if (!k || v === undefined) {
      throw new CliError(`--meshd-selector: "${kv}" is not KEY=VALUE`);
    }
    selector[k] = v;
  }
  let identity = (values["identity"] as string | undefined) ?? io.env("POD_NAME");
  if (!identity) {
    try {
      identity = Deno.hostname();
    } catch {
      throw new CliError("Cannot tell who this pod is: set --identity or POD_NAME");
    }
  }
  let zone: MeshZone;
  try {
    zone = new MeshZone({
      domain: values["domain"] as string,
      aliases: values["domain-aliases"] as string[],
      ttlSeconds: Math.max(1, Math.round((values["dns-ttl"] as number) / 1000)),
    });
  } catch (e) {
    throw new CliError(`--domain or --domain-aliases: ${(e as Error).message}`);
  }
  return { kube, kapi, timing, identity, selector, zone };
}

/** Annotations the leader writes on the Lease: where its config stream is, and its certificate. */
export const LEASE_ADDRESS_ANNOTATION = "meshd.io/distribution-address";
export const LEASE_CERT_ANNOTATION = "meshd.io/distribution-cert";

/** Where other pods reach this one's config stream, from the flags and the environment. */
function advertiseAddress(values: Record<string, FlagValue>, io: CliIo): string {
  const flag = values["advertise-address"] as string | undefined;
  if (flag) return flag;
  const podIp = io.env("POD_IP");
  if (podIp) return podIp;
  const bind = values["distribution-address"] as string;
  if (bind === "0.0.0.0" || bind === "::") {
    throw new CliError(
      `--distribution-address ${bind} says nothing of where other pods reach this one: ` +
        "set --advertise-address or POD_IP",
    );
  }
  return bind;
}

/** `host:port`, with brackets for an IPv6 host. */
function hostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

async function runCommand(values: Record<string, FlagValue>, io: CliIo): Promise<number> {
  const kube = values["provider"] === "kube";
  const dir = kube ? undefined : await needDir(values);
  const kubeCfg = kube ? await kubeSetup(values, io) : null;
  const logger = new Logger({
    level: values["log-level"] as LogLevel,
    format: values["log-format"] as LogFormat,
    write: (line) => io.stderr(line + "\n"),
  });
  const caFile = values["backend-ca"] as string | undefined;
  let caCerts: string[] | undefined;
  if (caFile) {
    const pem = await Deno.readTextFile(caFile).catch((e) => {
      throw new CliError(`Cannot read --backend-ca "${caFile}": ${(e as Error).message}`);
    });
    if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
      throw new CliError(`--backend-ca "${caFile}" holds no PEM certificate`);
    }
    caCerts = [pem];
  }
  const advertise = kubeCfg ? advertiseAddress(values, io) : "";
  let store: ConfigStore | undefined;
  const stateDir = values["state-dir"] as string;
  if (kubeCfg && stateDir) {
    try {
      await Deno.mkdir(stateDir, { recursive: true });
    } catch (e) {
      throw new CliError(
        `Cannot use --state-dir "${stateDir}" for the saved config: ${(e as Error).message}; ` +
          'pass another, or --state-dir "" to keep nothing',
      );
    }
    store = new ConfigStore(`${stateDir}/config.json`);
  }
  logger.info("meshd starting", {
    version: VERSION,
    provider: values["provider"],
    ...(dir ? { configDir: dir } : { server: kubeCfg!.kapi.server, identity: kubeCfg!.identity }),
  });
  for (const a of values["domain-aliases"] as string[]) {
    if (!/^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?\.?$/i.test(a)) {
      throw new CliError(
        `Cannot use "${a}" from --domain-aliases: expected a domain name such as "traefik.mesh"`,
      );
    }
  }
  const reusePort = values["reuse-port"] as boolean;
  const workers = values["workers"] === "auto" ? availableCpus() : values["workers"] as number;
  const proxyOpts = {
    hostname: values["proxy-address"] as string,
    httpPort: values["http-port"] as number,
    domainAliases: values["domain-aliases"] as string[],
    reusePort,
    ...proxyOptions(values),
    caCerts,
  };
  const proxyLog = logger.with({ room: "proxy" });
  const proxy: DataPlane = workers > 1
    ? new ProxyPool({ workers, proxy: proxyOpts, logger: proxyLog, udpWaitMs: UDP_ANSWER_WAIT_MS })
    : new NodeProxy({ ...proxyOpts, logger: proxyLog });
  registerBuildInfo(proxy.registry, buildInfo(VERSION));
  let api: ApiServer | null = null;
  let health: ApiServer | null = null;
  let metrics: ApiServer | null = null;
  let provider: FileProvider | null = null;
  let elector: LeaderElector | null = null;
  let shadows: ShadowServiceController | null = null;
  let dns: DnsServer | null = null;
  let dnsFeed: { stop(): Promise<void> } | null = null;
  let leaseWatch: Reflector | null = null;
  let shadowWatch: Reflector | null = null;
  let controller: MeshController | null = null;
  let distServer: DistributionServer | null = null;
  let client: DistributionClient | null = null;
  let fastPath: FastPath | null = null;
  const stopped = new Promise<string>((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(sig, () => resolve(sig));
    }
  });
  try {
    try {
      await proxy.start();
    } catch (e) {
      throw new CliError(
        `Cannot listen on ${values["proxy-address"]}:${
          values["http-port"]
        } for the HTTP entrypoint: ${(e as Error).message}`,
      );
    }
    // The eBPF fast path, or why not; before the first config, so that config reaches it.
    const dpLog = logger.with({ room: "datapath" });
    try {
      const selected = await selectDatapath({
        mode: values["datapath"] as DatapathMode,
        cgroup: values["cgroup"] as string | undefined,
        bpffs: values["bpffs"] as string,
        object: values["bpf-object"] as string | undefined,
        kernelRelease: values["kernel-release"] as string | undefined,
        libbpfPath: values["libbpf"] as string | undefined,
        graceMs: values["ebpf-grace"] as number,
        logger: dpLog,
        verbose: values["log-level"] === "debug",
      });
      fastPath = new FastPath({
        selected,
        graceMs: values["ebpf-grace"] as number,
        proxy: redirectListener(values, advertise),
        addresses: kubeCfg ? "given" : "cluster-ip",
        logger: dpLog,
        registry: proxy.registry,
      });
      dpLog.info("data path chosen", {
        datapath: selected.choice.datapath,
        reason: selected.choice.reason,
      });
    } catch (e) {
      if (e instanceof DatapathError) throw new CliError(e.message);
      throw e;
    }
    if (kubeCfg) {
      shadows = new ShadowServiceController({
        api: kubeCfg.kapi,
        logger: logger.with({ room: "controller" }),
        meshNamespace: values["mesh-namespace"] as string,
        selector: kubeCfg.selector,
        httpPort: values["http-port"] as number,
        isLeader: () => elector?.isLeader ?? false,
        existing: () => shadowWatch?.synced ? shadowWatch.items.values() : null,
      });
    }
    const leaseKey = `${values["mesh-namespace"]}/${values["lease-name"]}`;
    const leaseHolder = () =>
      kubeCfg && leaseWatch ? kubeCfg.kube.leaseHolderOf(leaseWatch.items.get(leaseKey)) : null;
    const node = new MeshNode({
      proxy,
      logger: logger.with({ room: "node" }),
      compile: compileOptions(values),
      store,
      datapath: fastPath,
      nodes: kubeCfg
        ? () => ({ leader: leaseHolder()?.identity ?? null, ...controller?.report() })
        : undefined,
    });
    const serve = async (
      name: "api" | "health" | "metrics",
      what: string,
      address: string,
      port: number,
    ): Promise<ApiServer> => {
      try {
        return await serveApi({
          hostname: address,
          port,
          source: node,
          logger: logger.with({ room: "api" }),
          serves: name === "api" ? undefined : [name],
          name,
          reusePort,
        });
      } catch (e) {
        throw new CliError(
          `Cannot listen on ${address}:${port} for ${what}: ${(e as Error).message}`,
        );
      }
    };
    api = await serve(
      "api",
      "the API",
      values["api-address"] as string,
      values["api-port"] as number,
    );
    const healthAddress = values["health-address"] as string;
    if (values["health-port"] !== undefined) {
      health = await serve(
        "health",
        "the health probes",
        healthAddress,
        values["health-port"] as number,
      );
    }
    if (values["metrics-port"] !== undefined) {
      metrics = await serve(
        "metrics",
        "the metrics",
        healthAddress,
        values["metrics-port"] as number,
      );
    }
    // On SIGTERM with --drain-timeout: the probes' port is let go at once (the kubelet probes
    // the successor there), every other port is served until the successor holds it too, then
    // connections in flight finish. All of it within the timeout.
    const drainMs = (values["drain-timeout"] as number | undefined) ?? 0;
    const drain = async (sig: string): Promise<void> => {
      await node.flush(); // the config applied last is saved in the background
      if (sig !== "SIGTERM" || drainMs <= 0) return;
      const started = Date.now();
      const deadline = started + drainMs;
      await health?.shutdown();
      health = null;
      const held = proxy.listening();
      const ports = {
        tcp: [...held.tcp, ...(dns ? [dns.port] : [])],
        udp: [...held.udp, ...(dns ? [dns.port] : [])],
        own: held.own,
      };
      const log = logger.with({ room: "node" });
      log.info("draining: serving until a successor holds every port", {
        tcp: ports.tcp.join(","),
        udp: ports.udp.join(","),
        timeoutMs: drainMs,
      });
      // Deno lets only --allow-all read /proc/net (the compiled binary has it).
      await Deno.readTextFile("/proc/net/tcp").catch((e) =>
        log.warn("cannot see a successor's sockets; waiting for the whole drain timeout", {
          error: (e as Error).message,
        })
      );
      let successor = false;
      while (Date.now() < deadline && !(successor = await successorBound(ports))) {
        await new Promise((r) => setTimeout(r, 100));
      }
      await proxy.drain();
      // TCP connections to end, and UDP requests to be answered (the answer leaves through
      // this process's socket: gone with it, the client would never get it).
      const busy = () => proxy.inFlight + proxy.udpAwaitingAnswer(UDP_ANSWER_WAIT_MS);
      const awaiting = proxy.udpAwaitingAnswer(UDP_ANSWER_WAIT_MS);
      if (awaiting > 0) log.info("draining: waiting for answers to UDP datagrams", { awaiting });
      while (busy() > 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
      }
      const open = busy();
      (open > 0 || !successor ? log.warn : log.info).call(log, "drained", {
        successor,
        open,
        ms: Date.now() - started,
      });
    };
    if (!kubeCfg) {
      provider = new FileProvider({
        dir: dir!,
        logger: logger.with({ room: "provider" }),
        onLoad: (r) => node.load(r),
        limits: configLimits(values),
      });
      await provider.start();
      logger.info("meshd ready", {
        http: proxy.httpAddress,
        api: `${api.addr.hostname}:${api.addr.port}`,
      });
      const sig = await stopped;
      logger.info("meshd stopping", { signal: sig });
      await drain(sig);
      return 0;
    }
    // A restarted node routes on what it last applied before it reaches anyone.
    await node.restore();
    // Every node watches the shadow Services the leader keeps: the leader to reconcile them
    // without listing them all on each change, every node to answer DNS from them. The names
    // are saved beside the config, so a node restarted while the API server is away still
    // resolves them. A burst of changes (thousands of shadows at start) rebuilds the zone once.
    const dnsLog = logger.with({ room: "dns" });
    const zone = (values["dns-port"] as number) > 0 ? kubeCfg.zone : null;
    // The responder binds only once it has names to give (saved ones, or the API's): bound
    // earlier, it would answer NXDOMAIN for every mesh name, and resolvers cache that. Until
    // then the meshd it replaces (--reuse-port) or no one answers, and clients try again.
    const startDns = (z: MeshZone) => {
      if (dns) return;
      const server = new DnsServer({
        hostname: values["dns-address"] as string,
        port: values["dns-port"] as number,
        reusePort,
        zone: z,
        logger: dnsLog,
        registry: proxy.registry,
      });
      try {
        server.start();
      } catch (e) {
        throw new CliError(
          `Cannot listen on ${values["dns-address"]}:${values["dns-port"]} for DNS: ${
            (e as Error).message
          }`,
        );
      }
      dns = server;
    };
    const zoneStore = zone && stateDir
      ? new ZoneStore(
        `${stateDir}/dns.json`,
        (e) => dnsLog.warn("cannot save the DNS names", { error: e.message }),
      )
      : null;
    if (zone && zoneStore) {
      try {
        const saved = await zoneStore.load();
        if (saved) {
          zone.replace(saved);
          fastPath?.setAddresses(meshAddresses(saved));
          dnsLog.info("DNS names restored", { from: "disk", names: saved.length });
        }
      } catch (e) {
        dnsLog.warn("not using the saved DNS names", { error: (e as Error).message });
      }
    }
    if (zone && zone.size > 0) startDns(zone);
    let fed = false;
    let zoneTimer: ReturnType<typeof setTimeout> | undefined;
    let resyncTimer: ReturnType<typeof setTimeout> | undefined;
    const feedZone = () => {
      if (!zone || zoneTimer !== undefined || !shadowWatch) return;
      const watch = shadowWatch;
      zoneTimer = setTimeout(() => {
        zoneTimer = undefined;
        const entries = [...shadowDnsEntries(watch.items.values())];
        zone.replace(entries);
        fastPath?.setAddresses(meshAddresses(entries));
        if (!fed) dnsLog.info("DNS names loaded", { from: "api", names: entries.length });
        fed = true;
        try {
          startDns(zone);
        } catch (e) {
          // Tried again on the next change of the shadow Services.
          dnsLog.error((e as Error).message);
        }
        zoneStore?.save(entries);
      }, fed ? 20 : 0);
    };
    const watch = shadowWatch = new kubeCfg.kube.Reflector({
      api: kubeCfg.kapi,
      path: `/api/v1/namespaces/${values["mesh-namespace"]}/services`,
      apiVersion: "v1",
      kind: "Service",
      labelSelector: SHADOW_SELECTOR,
      logger: logger.with({ room: "controller" }),
      onChange: () => {
        feedZone();
        // The leader reconciles from this watch: when the shadows change (its own writes
        // arriving, or someone else's edit), it looks again, so nothing waits for the next
        // config. A burst of changes makes one pass.
        if (elector?.isLeader && resyncTimer === undefined) {
          resyncTimer = setTimeout(() => {
            resyncTimer = undefined;
            void shadows?.resync();
          }, 100);
        }
      },
    });
    watch.start();
    dnsFeed = {
      stop: async () => {
        await watch.stop();
        clearTimeout(zoneTimer);
        clearTimeout(resyncTimer);
        await zoneStore?.flush();
      },
    };
    // The config stream this pod serves while it leads, with a key made for this process.
    const { kube: k, kapi } = kubeCfg;
    const meshNs = values["mesh-namespace"] as string;
    const dist = await import("../distribution/mod.ts");
    const identity = await dist.createLeaderIdentity(kubeCfg.identity);
    const nodeUser = k.serviceAccountUser(meshNs, values["service-account"] as string);
    const selfToken = `meshd-self.${
      btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))))
    }`;
    distServer = new dist.DistributionServer({
      identity,
      logger: logger.with({ room: "distribution" }),
      isLeader: () => controller?.leading ?? false,
      // This process's own node is let in by a secret only it knows, whatever credentials it
      // runs with: a meshd started from a kubeconfig (the dev loop) has no ServiceAccount
      // token, and its node takes its config from its own controller all the same. Every
      // other node shows a token the API server vouches for.
      authenticate: ({ token }) =>
        token === selfToken ? Promise.resolve(null) : k.reviewToken(kapi, token, nodeUser),
    });
    const distAddress = values["distribution-address"] as string;
    let distPort = values["distribution-port"] as number;
    const distListen = (): Promise<number> => distServer!.listen(distAddress, distPort);
    // With --reuse-port, the meshd this one replaces may hold the port (the config stream
    // cannot share it): take it once that one has left, and campaign for the Lease only then.
    let distBound: Promise<void> = Promise.resolve();
    try {
      distPort = await distListen();
    } catch (e) {
      if (!reusePort || distPort === 0) {
        throw new CliError(
          `Cannot listen on ${distAddress}:${distPort} for the config stream: ${
            (e as Error).message
          }`,
        );
      }
      const distLog = logger.with({ room: "distribution" });
      distLog.info("the config stream's port is held, by the meshd this one replaces; retrying", {
        address: hostPort(distAddress, distPort),
        error: (e as Error).message,
      });
      distBound = (async () => {
        for (let done = false; !done;) {
          const gone = await Promise.race([
            new Promise((r) => setTimeout(() => r(false), 1000)),
            stopped.then(() => true),
          ]);
          if (gone) throw new Error("stopped");
          done = await distListen().then(() => true, () => false);
        }
        distLog.info("config stream listening", { address: hostPort(distAddress, distPort) });
      })();
    }
    const ignore = values["ignore-namespaces"] as string[];
    const ctl = controller = new MeshController({
      logger: logger.with({ room: "controller" }),
      identity: kubeCfg.identity,
      server: distServer,
      registry: proxy.registry,
      seed: () => node.current(),
      compile: (r, previous) => node.compile(r, previous),
      onConfig: (c) => void shadows?.update(c),
      watch: (onLoad) => {
        const p = new k.KubeProvider({
          api: kapi,
          logger: logger.with({ room: "provider" }),
          watchNamespaces: values["watch-namespaces"] as string[],
          ignoreNamespaces: [...ignore, meshNs],
          onLoad,
        });
        p.start().catch((e) =>
          logger.error("watching the cluster failed", { error: (e as Error).message })
        );
        return p;
      },
    });
    elector = new k.LeaderElector({
      api: kapi,
      logger: logger.with({ room: "controller" }),
      namespace: meshNs,
      name: values["lease-name"] as string,
      identity: kubeCfg.identity,
      ...kubeCfg.timing,
      annotations: {
        [LEASE_ADDRESS_ANNOTATION]: hostPort(advertise, distPort),
        [LEASE_CERT_ANNOTATION]: identity.certPem,
      },
      onStartedLeading: () => {
        void ctl.lead();
        // A new leader brings the API in line with the config at once.
        void shadows?.resync();
      },
      onStoppedLeading: () => void ctl.stepDown("the lease is lost"),
    });
    // Every node, the leader's too, takes its config from whoever holds the Lease.
    const leaderAddress = () => {
      const h = leaseHolder();
      const address = h?.annotations[LEASE_ADDRESS_ANNOTATION];
      const certPem = h?.annotations[LEASE_CERT_ANNOTATION];
      return address && certPem ? { address, certPem } : null;
    };
    const tokenFile = values["token-file"] as string;
    const dc = client = new dist.DistributionClient({
      node: kubeCfg.identity,
      leader: () => Promise.resolve(leaderAddress()),
      // (To its own controller, the secret above.)
      token: () => controller?.leading ? Promise.resolve(selfToken) : nodeToken(tokenFile, kapi),
      current: () => node.current(),
      apply: (c) => node.apply(c, "leader"),
      logger: logger.with({ room: "node" }),
    });
    registerNodeMetrics(proxy.registry, dc);
    let lastLeader = "";
    leaseWatch = new k.Reflector({
      api: kapi,
      path: `/apis/coordination.k8s.io/v1/namespaces/${meshNs}/leases`,
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      fieldSelector: `metadata.name=${values["lease-name"]}`,
      logger: logger.with({ room: "node" }),
      onChange: () => {
        const now = leaderAddress();
        const key = now ? `${now.address}|${now.certPem}` : "";
        if (key === lastLeader) return;
        lastLeader = key;
        logger.info("leader found", {
          room: "node",
          leader: leaseHolder()?.identity ?? null,
          address: now?.address ?? null,
        });
        dc.leaderChanged(now);
      },
    });
    leaseWatch.start();
    // Campaign at once: electing a controller does not wait for this node's first config (it
    // waits for the config stream's port, which a predecessor may hold).
    distBound.then(() => elector?.start(), () => {});
    dc.start();
    // Until the first config (the API or the leader may be down), signals still stop meshd.
    const first = await Promise.race([
      waitUntil(() => node.ready(), stopped).then(() => null),
      stopped,
    ]);
    if (first) {
      logger.info("meshd stopping", { signal: first });
      await drain(first);
      return 0;
    }
    logger.info("meshd ready", {
      http: proxy.httpAddress,
      api: `${api.addr.hostname}:${api.addr.port}`,
      distribution: hostPort(advertise, distPort),
    });
    const sig = await stopped;
    logger.info("meshd stopping", { signal: sig });
    await drain(sig);
    return 0;
  } finally {
    // A leader gives the lease up first, so another pod takes over at once.
    await elector?.stop();
    await controller?.stepDown("meshd is stopping");
    await client?.stop();
    await leaseWatch?.stop();
    await distServer?.stop();
    await provider?.stop();
    await dnsFeed?.stop();
    await (dns as DnsServer | null)?.stop();
    await api?.shutdown();
    await health?.shutdown();
    await metrics?.shutdown();
    await proxy.stop();
    // Left pinned and attached: sockets stay balanced until the next meshd takes over.
    fastPath?.close();
  }
}

/**
 * Where the eBPF path sends ports that need the L7 proxy: this pod's own address (the one it
 * advertises), else the proxy's bind address, else loopback when it binds every address.
 */
function redirectListener(values: Record<string, FlagValue>, advertise: string): ProxyListener {
  const bind = values["proxy-address"] as string;
  const own = advertise || (bind === "0.0.0.0" || bind === "::" ? "127.0.0.1" : bind);
  return {
    ...(own.includes(":") ? { ipv6: own } : { ipv4: own }),
    httpPort: values["http-port"] as number,
  };
}

/** The mesh addresses of each service, from the DNS names of its shadow Service. */
function meshAddresses(entries: readonly MeshDnsEntry[]): MeshAddresses {
  return new Map(entries.map((e) => [`${e.namespace}/${e.name}`, e]));
}

/** Resolves once `cond()` holds, checking every 50 ms, or when `until` settles. */
function waitUntil(cond: () => boolean, until: Promise<unknown>): Promise<void> {
  return new Promise((resolve) => {
    let done = false;
    until.then(() => done = true);
    const tick = () => {
      if (done || cond()) resolve();
      else setTimeout(tick, 50);
    };
    tick();
  });
}

/**
 * How long a draining meshd waits for the answer to a UDP datagram it forwarded: a protocol
 * that never answers (syslog, say) holds a drain no longer than this after its last datagram.
 */
const UDP_ANSWER_WAIT_MS = 5_000;

/** The token this node proves itself with: the token file, else the kubeconfig's token. */
async function nodeToken(file: string, kapi: KubeApi): Promise<string> {
  try {
    return (await Deno.readTextFile(file)).trim();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return kapi.kc.getCurrentUser()?.token ?? "";
}

function registerNodeMetrics(registry: Registry, client: DistributionClient): void {
  registry.collect(
    "meshd_distribution_connected",
    "1 while this node holds a config stream to the leader.",
    [],
    () => [[[], client.connected ? 1 : 0]],
  );
  registry.collect(
    "meshd_distribution_updates_total",
    "Config updates this node received from the leader: snapshot, delta, or failed to apply.",
    ["kind"],
    () => [
      [["snapshot"], client.stats.snapshots],
      [["delta"], client.stats.deltas],
      [["failed"], client.stats.failures],
    ],
  );
  registry.collect(
    "meshd_distribution_connects_total",
    "Config streams this node opened to a leader.",
    [],
    () => [[[], client.stats.connects]],
  );
}
