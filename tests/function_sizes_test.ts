import assert from "node:assert/strict";
import { functionSizes, sourceFiles } from "./tools/function_sizes.ts";

Deno.test("functions in src/ over 80 lines each have a comment that says why", () => {
  const root = new URL("../", import.meta.url).pathname;
  const long = sourceFiles(`${root}src`)
    .flatMap((f) => functionSizes(f.slice(root.length), Deno.readTextFileSync(f)))
    .filter((f) => f.lines > 80 && !f.explained)
    .map((f) => `${f.name} (${f.file}:${f.line}, ${f.lines} lines)`);
  assert.deepEqual(long, []);
});
