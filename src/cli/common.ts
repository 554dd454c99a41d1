import type { FlagValue } from "./flags.ts";
import type { KubeApi } from "../kube/mod.ts";

/** A failure the user can act on: printed as one line, exit code 1, no stack trace. */
export class CliError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CliError";
  }
}

/** Where the CLI writes and reads; tests swap these. */
export interface CliIo {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
  env: (name: string) => string | undefined;
}

/** The kube room, loaded on demand, and a client from --kubeconfig or the defaults. */
export async function kubeClient(
  values: Record<string, FlagValue>,
  io: CliIo,
): Promise<{ kube: typeof import("../kube/mod.ts"); kapi: KubeApi }> {
  const kube = await import("../kube/mod.ts");
  try {
    const kapi = new kube.KubeApi(
      kube.loadKubeConfig(values["kubeconfig"] as string | undefined, io.env),
    );
    return { kube, kapi };
  } catch (e) {
    throw new CliError((e as Error).message);
  }
}
