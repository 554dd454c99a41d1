/**
 * The meshd CLI run in this process, with its output captured: for commands that run and
 * return (prepare, cleanup, check, config dump).
 *
 * @module
 */
import { main } from "../../src/cli/mod.ts";

/** Exit code and output of one run. */
export interface CliRun {
  code: number;
  out: string;
  err: string;
}

/** Runs `meshd <argv>` with an empty environment (flags only). */
export async function meshd(...argv: string[]): Promise<CliRun> {
  let out = "";
  let err = "";
  const code = await main(argv, {
    stdout: (s) => out += s,
    stderr: (s) => err += s,
    env: () => undefined,
  });
  return { code, out, err };
}
