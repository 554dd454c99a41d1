/**
 * The README's "Layout" section against the tree: every path it names exists, every folder of
 * the repository's top level, of `src/` and of `tests/` is named, and the per-file table of
 * `src/datapath/` names each of its modules. A folder added or removed without the README
 * fails here.
 */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url).pathname;

/** The Layout section's tables: the backticked paths of each row's first cell, per table. */
function layoutTables(): { intro: string; paths: string[] }[] {
  const readme = Deno.readTextFileSync(`${ROOT}README.md`);
  const start = readme.indexOf("\n## Layout\n");
  assert.ok(start >= 0, "README has a Layout section");
  const end = readme.indexOf("\n## ", start + 1);
  const section = readme.slice(start, end < 0 ? undefined : end);
  const tables: { intro: string; paths: string[] }[] = [];
  let intro = "";
  let current: string[] | null = null;
  for (const line of section.split("\n")) {
    if (!line.startsWith("|")) {
      if (line.trim()) intro = line;
      current = null;
      continue;
    }
    if (!current) tables.push({ intro, paths: current = [] });
    const first = line.split("|")[1] ?? "";
    for (const [, p] of first.matchAll(/`([^`]+)`/g)) current.push(p!);
  }
  return tables;
}

const dirs = (path: string) =>
  [...Deno.readDirSync(`${ROOT}${path}`)].filter((e) => e.isDirectory && !e.name.startsWith("."))
    .map((e) => e.name);

Deno.test("README layout: every path named exists, and every folder of the tree is named", () => {
  const [main, ...rest] = layoutTables();
  assert.ok(main && main.paths.length > 10, "the layout table");
  for (const p of main.paths) {
    const path = p.replace(/\/$/, "");
    assert.ok(
      (() => {
        try {
          Deno.statSync(`${ROOT}${path}`);
          return true;
        } catch {
          return false;
        }
      })(),
      `the README's layout names ${p}, which is not in the tree`,
    );
  }
  const named = new Set(main.paths.map((p) => p.replace(/\/$/, "")));
  // Build output and local results are not part of the tree a checkout has.
  const ignored = new Set(["dist", "bench-results", "node_modules"]);
  for (const d of dirs("").filter((d) => !ignored.has(d))) {
    if (d === "src" || d === "tests") continue; // named by their sub-folders
    assert.ok(
      [...named].some((n) => n === d || n.startsWith(`${d}/`)),
      `the top-level folder ${d}/ is not in the README's layout`,
    );
  }
  for (const top of ["src", "tests"]) {
    for (const d of dirs(top)) {
      assert.ok(
        named.has(`${top}/${d}`),
        `${top}/${d}/ is not in the README's layout`,
      );
    }
  }
  // Per-folder file tables ("Inside `src/x/` ..."): each module of that folder is named.
  for (const t of rest) {
    const folder = /Inside `([^`]+)`/.exec(t.intro)?.[1];
    assert.ok(folder, `a table after the layout without an "Inside \`folder/\`" line: ${t.intro}`);
    const files = [...Deno.readDirSync(`${ROOT}${folder}`)].filter((e) =>
      e.isFile && e.name.endsWith(".ts") && !e.name.endsWith("_test.ts") && e.name !== "mod.ts"
    ).map((e) => e.name);
    for (const f of files) assert.ok(t.paths.includes(f), `${folder}${f} is not in its table`);
    for (const p of t.paths) assert.ok(files.includes(p), `${folder}${p} is named but missing`);
  }
});
