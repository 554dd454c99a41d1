/**
 * meshd: a sidecar-less service mesh for Kubernetes. This file only hands the arguments to
 * the CLI.
 *
 * @module
 */
import { main } from "./src/cli/mod.ts";

if (import.meta.main) Deno.exit(await main(Deno.args));
