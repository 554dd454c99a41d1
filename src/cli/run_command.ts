import denoJson from "../../deno.json" with { type: "json" };
import { ConfigStore } from "../node/mod.ts";
import { Logger, registerBuildInfo, Registry, startWatchdog } from "../observability/mod.ts";
import { CliError, type CliIo, needDir } from "./common.ts";
import { drain } from "./drain.ts";
import { fileMode } from "./file_mode.ts";
import type { KubeSetup } from "./kube_mode.ts";
import type { Assembly, RunContext } from "./node_services.ts";
import type { RunConfig } from "./run_config.ts";
import { ServiceStack } from "./service_stack.ts";
import { LINEAR_REGEX_FLAGS } from "../topology/mod.ts";
import { buildInfo } from "./version.ts";

/**
 * `meshd run`: checks what can be checked before anything starts, makes the logger and the
 * metrics registry, has the provider's assembler list the services, starts them in order,
 * waits for a signal, drains, and stops them in reverse.
 */
export async function runCommand(config: RunConfig, io: CliIo): Promise<number> {
  // The kube provider's module (and the DNS, controller and leader-lookup code only it uses)
  // loads on demand: a file-mode meshd never runs it, and every module loaded stays in the
  // process's heaps for good (issue 21).
  const km = config.provider === "kube" ? await import("./kube_mode.ts") : null;
  const dir = km ? undefined : await needDir(config.configDir);
  const setup: KubeSetup | null = km ? await km.kubeSetup(config, io) : null;
  const logger = new Logger({
    level: config.log.level,
    format: config.log.format,
    write: (line) => io.stderr(line + "\n"),
  });
  const caCerts = await readBackendCa(config.proxy.backendCa);
  const advertise = km && setup ? km.advertiseAddress(config, io) : "";
  const store = setup ? await configStore(config.distribution.stateDir) : undefined;
  logger.info("meshd starting", {
    version: denoJson.version,
    provider: config.provider,
    ...(dir ? { configDir: dir } : { server: setup!.kapi.server, identity: setup!.identity }),
  });
  if (!LINEAR_REGEX_FLAGS) {
    logger.warn(
      "regular expressions of HTTPRouteGroups backtrack: run meshd with --v8-flags=--enable-experimental-regexp-engine, as its launches do, so that no request can stall it",
    );
  }
  const registry = new Registry();
  registerBuildInfo(registry, buildInfo(denoJson.version));
  const ctx: RunContext = { config, logger, registry, stopped: signals() };
  const assembly = km && setup
    ? km.kubeMode(ctx, setup, { caCerts, advertise, store })
    : fileMode(ctx, { dir: dir!, caCerts });
  const stack = new ServiceStack();
  // Started before any service and stopped after all: a main thread stuck at any point says so.
  const watchdog = startWatchdog({
    stallMs: config.watchdogMs,
    level: config.log.level,
    format: config.log.format,
  });
  try {
    await stack.start(assembly.services);
    const first = await assembly.untilReady();
    if (!first) logger.info("meshd ready", assembly.readyFields());
    const sig = first ?? await ctx.stopped;
    logger.info("meshd stopping", { signal: sig });
    await drain(sig, drainParts(ctx, assembly));
    return 0;
  } finally {
    await stack.stop();
    watchdog.stop();
  }
}

function drainParts(ctx: RunContext, a: Assembly): Parameters<typeof drain>[1] {
  const { proxy, agent, servers } = a.node;
  const { drainMs } = ctx.config;
  return { agent, proxy, servers, dnsPort: a.dnsPort, drainMs, logger: ctx.logger };
}

/** Resolves with the signal's name on the first SIGINT or SIGTERM. */
function signals(): Promise<string> {
  return new Promise<string>((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(sig, () => resolve(sig));
    }
  });
}

/** `--backend-ca`'s certificates, checked to be PEM. */
async function readBackendCa(file: string | undefined): Promise<string[] | undefined> {
  if (!file) return undefined;
  const pem = await Deno.readTextFile(file).catch((e) => {
    throw new CliError(`Cannot read --backend-ca "${file}": ${(e as Error).message}`);
  });
  if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
    throw new CliError(`--backend-ca "${file}" holds no PEM certificate`);
  }
  return [pem];
}

/** Where the applied config is kept (`--state-dir`), made if missing; none when empty. */
async function configStore(stateDir: string): Promise<ConfigStore | undefined> {
  if (!stateDir) return undefined;
  try {
    await Deno.mkdir(stateDir, { recursive: true });
  } catch (e) {
    throw new CliError(
      `Cannot use --state-dir "${stateDir}" for the saved config: ${(e as Error).message}; ` +
        'pass another, or --state-dir "" to keep nothing',
    );
  }
  return new ConfigStore(`${stateDir}/config.json`);
}
