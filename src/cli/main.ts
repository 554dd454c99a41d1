import denoJson from "../../deno.json" with { type: "json" };
import { decodeFiles, ObjectLoader, readConfigFiles } from "../provider/mod.ts";
import { compileMeshConfig, ConfigError, unreadableObjects } from "../topology/mod.ts";
import { buildInfo, formatBuildInfo } from "./version.ts";
import { completionScript, type Shell, SHELLS } from "./completion.ts";
import {
  type FlagGroup,
  type FlagSpec,
  type FlagValue,
  FlagValues,
  formatFlagGroups,
  HELP_WIDTH,
  parseFlags,
  UsageError,
  wrap,
} from "./flags.ts";
import {
  CHECK_FLAGS,
  CLEANUP_FLAGS,
  compileOptions,
  configLimits,
  DUMP_FLAGS,
  PREPARE_FLAGS,
  RUN_FLAGS,
  RUN_GROUPS,
  STAT_FLAGS,
  STATUS_FLAGS,
} from "./options.ts";
import { runConfig } from "./run_config.ts";
import { runCommand } from "./run_command.ts";
// The cluster and ops commands load on demand: `meshd run`, which stays up, never needs their
// modules in its heap and pages (about 1 MiB of RSS).
const clusterCommands = () => import("./cluster_commands.ts");
const opsCommands = () => import("./ops_commands.ts");
import { CliError, type CliIo, errorLine, needDir, warningLine } from "./common.ts";

export { CliError, type CliIo };

/** meshd's version, from deno.json. */
export const VERSION: string = denoJson.version;

/** Failures of the cluster commands that are the cluster's state, not a bug in meshd. */
const KNOWN_ERRORS = new Set(["KubeApiError", "PrepareError", "CorefileError"]);

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
    run: (v, io) => runCommand(runConfig(new FlagValues(v)), io),
  },
  prepare: {
    usage: "meshd prepare [flags]",
    summary: "Add the mesh domain and its aliases to CoreDNS: a Corefile server block " +
      "forwarding them to meshd",
    flags: PREPARE_FLAGS,
    run: async (v, io) => (await clusterCommands()).prepareCommand(v, io),
  },
  cleanup: {
    usage: "meshd cleanup [flags]",
    summary: "Remove what prepare added to CoreDNS, and the shadow Services",
    flags: CLEANUP_FLAGS,
    run: async (v, io) => (await clusterCommands()).cleanupCommand(v, io),
  },
  check: {
    usage: "meshd check [--pre] [--wait DURATION] [-o json] [flags]",
    summary: "Check a cluster for meshd, grouped with a hint per problem: --pre before " +
      "install (API version, RBAC, CoreDNS, SMI CRDs, kernels); after it also the DaemonSet, " +
      "the leader and each node's config and data path. Exit 1 when something fails",
    flags: CHECK_FLAGS,
    run: async (v, io) => (await clusterCommands()).checkCommand(v, io),
  },
  status: {
    usage: "meshd status [-o json] [flags]",
    summary: "One screen on the installed mesh: version, leader, nodes ready, config version " +
      "skew, data path per node, last errors. Exit 1 when not every node has a ready meshd",
    flags: STATUS_FLAGS,
    run: async (v, io) => (await opsCommands()).statusCommand(v, io),
  },
  stat: {
    usage: "meshd stat [NAMESPACE[/SERVICE]] [--window 30s] [-o json] [flags]",
    summary: "Golden signals per service port over a window, from every node's metrics " +
      "through the API server: success rate, requests/s, p50, p95, p99",
    flags: STAT_FLAGS,
    positionals: 1,
    run: async (v, io, positionals) => (await opsCommands()).statCommand(v, io, positionals),
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
 * The error line for an argument `cmd` has no place for. After a bare `bool-or-auto` flag
 * (`--l4-worker auto`) it says that the value follows "=": alone, the flag is on.
 */
function unexpectedArgument(
  name: string,
  cmd: Command,
  argv: readonly string[],
  extra: string,
): string {
  const before = argv[argv.indexOf(extra) - 1];
  const sw = cmd.flags.find((f) => f.kind === "bool-or-auto" && before === `--${f.name}`);
  return errorLine(
    `meshd ${name}`,
    `unexpected argument "${extra}"`,
    sw
      ? `--${sw.name} takes its value after "=", as in --${sw.name}=${extra}`
      : `run "meshd ${name} --help"`,
  );
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
    io.stderr(unexpectedArgument(name, cmd, rest, parsed.positionals[cmd.positionals ?? 0]!));
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

async function dumpCommand(record: Record<string, FlagValue>, io: CliIo): Promise<number> {
  const values = new FlagValues(record);
  const dir = await needDir(values.optionalString("config-dir"));
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
