/**
 * The command line: `meshd run`, `prepare`, `cleanup`, `check`, `config dump`, `version`.
 *
 * @module
 */
export { CliError, main, VERSION } from "./main.ts";
export type { CliIo } from "./main.ts";
export { envName, parseFlags, UsageError } from "./flags.ts";
export type { FlagSpec, FlagValue } from "./flags.ts";
