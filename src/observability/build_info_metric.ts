import type { Registry } from "./metrics.ts";

/** What `meshd_build_info` labels: the facts `meshd version` prints. */
export interface BuildLabels {
  version: string;
  /** The git commit, or `unknown`. */
  commit: string;
  /** The Deno release meshd runs on. */
  deno: string;
}

/**
 * Registers `meshd_build_info{version,commit,deno} 1`, the usual build-info series, so a
 * scrape (and `meshd status`, through the pod proxy) tells which meshd a node runs whatever
 * its image tag says.
 *
 * @example
 * ```ts
 * registerBuildInfo(registry, { version: "0.1.0", commit: "5867a54…", deno: "2.9.6" });
 * ```
 */
export function registerBuildInfo(registry: Registry, labels: BuildLabels): void {
  registry.collect(
    "meshd_build_info",
    "1, labelled with meshd's version, git commit and the Deno release it runs on.",
    ["version", "commit", "deno"],
    () => [[[labels.version, labels.commit, labels.deno], 1]],
    // Proxy workers do not register it; should one, the series stays 1.
    { merge: "max" },
  );
}
