/**
 * What `meshd version` says: the release, the commit and build date, whether this is the
 * binary `deno compile` made or the source run by `deno run`, and the Deno it runs on.
 *
 * @module
 */

/** Written next to the compiled binary's sources by `scripts/build-info` and embedded with it. */
export const BUILD_INFO_PATH = "dist/build-info.json";

/** The facts `meshd version` prints. */
export interface BuildInfo {
  version: string;
  /** The git commit, or `unknown`. */
  commit: string;
  /** When `deno compile` ran (UTC, ISO 8601), or `null` for a run from source. */
  built: string | null;
  compiled: boolean;
  deno: string;
  v8: string;
  typescript: string;
}

/**
 * A compiled binary's modules live under a virtual `<tmp>/deno-compile-<binary name>/` root
 * (Deno ≥ 1.45); a module run from source has its real path.
 */
export function isCompiled(moduleUrl: string): boolean {
  return /\/deno-compile-[^/]+\//.test(moduleUrl);
}

/** Reads a text file, or `null` when it is not there or not allowed. */
export type ReadText = (path: string) => string | null;

const readText: ReadText = (path) => {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return null;
  }
};

/**
 * The commit a checkout at `root` is on, from `.git` without running git (a worktree's `.git`
 * is a file naming its git dir; refs may be loose or packed).
 */
export function gitCommit(root: string, read: ReadText = readText): string | null {
  let gitDir = `${root}.git`;
  const pointer = read(gitDir)?.trim();
  if (pointer?.startsWith("gitdir: ")) {
    const to = pointer.slice(8);
    gitDir = to.startsWith("/") ? to : `${root}${to}`;
  }
  const head = read(`${gitDir}/HEAD`)?.trim();
  if (!head) return null;
  if (/^[0-9a-f]{40}$/.test(head)) return head;
  const ref = /^ref: (\S+)$/.exec(head)?.[1];
  if (!ref) return null;
  // A worktree keeps its HEAD but shares the refs of the main git dir.
  const common = read(`${gitDir}/commondir`)?.trim();
  const refsDir = common ? (common.startsWith("/") ? common : `${gitDir}/${common}`) : gitDir;
  const loose = read(`${refsDir}/${ref}`)?.trim();
  if (loose && /^[0-9a-f]{40}$/.test(loose)) return loose;
  for (const line of (read(`${refsDir}/packed-refs`) ?? "").split("\n")) {
    const [sha, name] = line.split(" ");
    if (name === ref && /^[0-9a-f]{40}$/.test(sha ?? "")) return sha!;
  }
  return null;
}

/**
 * The build facts of the meshd whose `src/cli/version.ts` is at `moduleUrl`: a compiled
 * binary reads the build info embedded with it, a run from source reads its checkout's git.
 */
export function buildInfo(
  version: string,
  moduleUrl: string = import.meta.url,
  read: ReadText = readText,
): BuildInfo {
  const root = new URL("../../", moduleUrl).pathname;
  const compiled = isCompiled(moduleUrl);
  let commit: string | null = null;
  let built: string | null = null;
  if (compiled) {
    try {
      const info = JSON.parse(read(`${root}${BUILD_INFO_PATH}`) ?? "{}");
      if (typeof info.commit === "string" && info.commit) commit = info.commit;
      if (typeof info.built === "string" && info.built) built = info.built;
    } catch { /* no usable build info: say unknown */ }
  } else {
    commit = gitCommit(root, read);
  }
  return {
    version,
    commit: commit ?? "unknown",
    built,
    compiled,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    typescript: Deno.version.typescript,
  };
}

/** The lines `meshd version` prints. */
export function formatBuildInfo(b: BuildInfo): string {
  const rows: [string, string][] = [
    ["commit", b.commit],
    ["built", b.built ?? "not built (run from source)"],
    ["binary", b.compiled ? "compiled (deno compile)" : "from source (deno run)"],
    ["deno", `${b.deno} (v8 ${b.v8}, typescript ${b.typescript})`],
  ];
  return `meshd ${b.version}\n${rows.map(([k, v]) => `  ${k.padEnd(8)}${v}`).join("\n")}\n`;
}
