import type { KubeApi } from "../kube/mod.ts";

/** A failure the user can act on: printed as one line, exit code 1, no stack trace. */
export class CliError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CliError";
  }
}

/**
 * A message as the clause after `error:`: an ordinary first word loses its capital ("Unknown
 * flag" reads "unknown flag"); a name such as CoreDNS, TLS or a quoted value keeps its case.
 */
export function clause(message: string): string {
  const first = /^[A-Z][a-z]+\b/.exec(message)?.[0];
  return first && !/^[A-Z][a-z]+[A-Z]/.test(message) && !PROPER_NOUNS.has(first)
    ? message[0]!.toLowerCase() + message.slice(1)
    : message;
}

/** Names that keep their capital at the start of a clause. */
const PROPER_NOUNS = new Set(["Kubernetes", "Deno", "Linux", "Prometheus", "Helm", "Traefik"]);

/**
 * The one line a failed command prints, the same for every command:
 * `meshd <command>: error: <message>[; <hint>]`. Exit code 2 goes with wrong usage, 1 with a
 * failure.
 */
export function errorLine(who: string, message: string, hint?: string): string {
  return `${who}: error: ${clause(message)}${hint ? `; ${hint}` : ""}\n`;
}

/** A warning line, in the same shape: `meshd <command>: warning: <message>`. */
export function warningLine(who: string, message: string): string {
  return `${who}: warning: ${clause(message)}\n`;
}

/** Where the CLI writes and reads; tests swap these. */
export interface CliIo {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
  env: (name: string) => string | undefined;
}

/** The kube room, loaded on demand, and a client from `kubeconfig` or the defaults. */
export async function kubeClientFor(
  kubeconfig: string | undefined,
  io: CliIo,
): Promise<{ kube: typeof import("../kube/mod.ts"); kapi: KubeApi }> {
  const kube = await import("../kube/mod.ts");
  try {
    const kapi = new kube.KubeApi(kube.loadKubeConfig(kubeconfig, io.env));
    return { kube, kapi };
  } catch (e) {
    throw new CliError((e as Error).message);
  }
}

/** `--config-dir`, checked: set, and a directory that can be read. */
export async function needDir(dir: string | undefined): Promise<string> {
  if (!dir) throw new CliError("--config-dir (or MESHD_CONFIG_DIR) is required");
  const stat = await Deno.stat(dir).catch((e) => {
    throw new CliError(`Cannot read config directory "${dir}": ${(e as Error).message}`);
  });
  if (!stat.isDirectory) {
    throw new CliError(`Cannot use "${dir}" as config directory: not a directory`);
  }
  return dir;
}
