/** How one check came out: passed, a warning (meshd runs, degraded), failed, or not run. */
export type CheckLevel = "ok" | "warn" | "fail" | "skip";

/** One check of `meshd check`. */
export interface CheckResult {
  /** The heading it is shown under, such as "CoreDNS". */
  group: string;
  /** A stable short name, for `-o json` readers and tests: `api`, `rbac`, `coredns`, ... */
  name: string;
  level: CheckLevel;
  message: string;
  /** What to do about a warning or a failure. */
  hint?: string;
}

const MARK: Record<CheckLevel, string> = { ok: "✔", warn: "‼", fail: "✘", skip: "-" };

/** Counts of each level. */
export function tally(results: readonly CheckResult[]): Record<CheckLevel, number> {
  const t: Record<CheckLevel, number> = { ok: 0, warn: 0, fail: 0, skip: 0 };
  for (const r of results) t[r.level]++;
  return t;
}

/**
 * The checks as `meshd check` prints them: a heading per group (in the order first seen),
 * a line per check marked ✔ ‼ ✘ or -, a hint under each warning and failure, and a total.
 *
 * @example
 * ```ts
 * formatChecks([{ group: "CoreDNS", name: "coredns", level: "fail", message: "no block", hint: "run meshd prepare" }]);
 * ```
 */
export function formatChecks(results: readonly CheckResult[]): string {
  const groups = new Map<string, CheckResult[]>();
  for (const r of results) {
    let g = groups.get(r.group);
    if (!g) groups.set(r.group, g = []);
    g.push(r);
  }
  const out: string[] = [];
  for (const [title, rs] of groups) {
    out.push(title, "-".repeat(title.length));
    for (const r of rs) {
      out.push(`${MARK[r.level]} ${r.message}`);
      if (r.hint && (r.level === "fail" || r.level === "warn")) out.push(`    hint: ${r.hint}`);
    }
    out.push("");
  }
  const t = tally(results);
  const parts = [
    `${t.ok} passed`,
    ...(t.warn ? [`${t.warn} warning${t.warn === 1 ? "" : "s"}`] : []),
    ...(t.fail ? [`${t.fail} failed`] : []),
    ...(t.skip ? [`${t.skip} skipped`] : []),
  ];
  out.push(`${t.fail ? "✘" : "✔"} ${parts.join(", ")}`);
  return out.join("\n") + "\n";
}

/** The checks as `meshd check -o json` prints them. */
export function checksJson(results: readonly CheckResult[]): string {
  return JSON.stringify(
    { ok: !results.some((r) => r.level === "fail"), summary: tally(results), checks: results },
    null,
    2,
  ) + "\n";
}
