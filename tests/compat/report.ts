/**
 * `deno run --allow-read --allow-run=git tests/compat/report.ts RESULTS_DIR` prints
 * docs/compatibility.md from what `scripts/compat` recorded in RESULTS_DIR.
 *
 * @module
 */
import {
  type CellResult,
  parseJunit,
  parseMeta,
  renderCompatibility,
  type Results,
} from "./render.ts";

function readText(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
}

function dirs(path: string): string[] {
  try {
    return [...Deno.readDirSync(path)].filter((e) => e.isDirectory).map((e) => e.name);
  } catch {
    return [];
  }
}

/** Reads RESULTS_DIR/<piece>/meta and RESULTS_DIR/<piece>/<cell>/{meta,*.xml,*.log,*.txt}. */
export function readResults(root: string): Results {
  const results: Results = { pieces: {}, cells: {} };
  for (const piece of dirs(root)) {
    const metaText = readText(`${root}/${piece}/meta`) ?? "";
    results.pieces[piece] = parseMeta(metaText);
    // A piece may be run in several invocations (a version at a time): its time is their sum.
    const times = [...metaText.matchAll(/^run\.seconds=(\d+)$/gm)].map((m) => Number(m[1]));
    if (times.length) results.pieces[piece]["run.seconds"] = String(times.reduce((a, b) => a + b));
    results.cells[piece] = {};
    for (const cell of dirs(`${root}/${piece}`)) {
      const dir = `${root}/${piece}/${cell}`;
      const r: CellResult = {
        meta: parseMeta(readText(`${dir}/meta`) ?? ""),
        reports: {},
        files: {},
      };
      for (const e of Deno.readDirSync(dir)) {
        if (!e.isFile) continue;
        const text = readText(`${dir}/${e.name}`) ?? "";
        if (e.name.endsWith(".xml")) r.reports[e.name.slice(0, -4)] = parseJunit(text);
        else if (/\.(log|txt)$|^release$/.test(e.name)) r.files[e.name] = text;
      }
      results.cells[piece]![cell] = r;
    }
  }
  return results;
}

if (import.meta.main) {
  const root = Deno.args[0];
  if (!root) {
    console.error("usage: report.ts RESULTS_DIR");
    Deno.exit(2);
  }
  const git = new Deno.Command("git", { args: ["rev-parse", "--short", "HEAD"], stdout: "piped" })
    .outputSync();
  const commit = new TextDecoder().decode(git.stdout).trim() || "unknown";
  const date = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  console.log(renderCompatibility(readResults(root), { date, commit }));
}
