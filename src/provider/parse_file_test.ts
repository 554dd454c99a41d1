import assert from "node:assert/strict";
import { parseFile } from "./parse_file.ts";

const DUPLICATES: { name: string; text: string; error: RegExp | null }[] = [
  // YAML 1.2 §3.2.1.1: the keys of a mapping are unique.
  {
    name: "a nested block map",
    text: "a: 1\nb:\n  c: 1\n  c: 2\n",
    error: /document 1, as YAML: Map keys must be unique at line 4, column 3$/,
  },
  {
    name: "a flow map, one key quoted",
    text: "{x: 1, 'x': 2}\n",
    error: /Map keys must be unique at line 1, column 8$/,
  },
  {
    name: "a map inside a list inside a map",
    text: "a: [1, {b: 1, c: {d: 1, d: 2}}]\n",
    error: /Map keys must be unique at line 1, column 25$/,
  },
  {
    name: "the second document",
    text: "---\nok: 1\n---\nb: 1\nb: 2\n",
    error: /document 2, as YAML: Map keys must be unique at line 5, column 1$/,
  },
  { name: "two empty keys", text: ": a\n: b\n", error: /Map keys must be unique at line 2/ },
  // Different values to YAML (an integer and a string), as the library took them too.
  { name: "1 and '1'", text: "1: a\n'1': b\n", error: null },
];

Deno.test("parseFile() refuses a map with a repeated key, naming where it repeats", () => {
  for (const c of DUPLICATES) {
    const r = parseFile({ path: "f.yaml", text: c.text });
    if (c.error === null) assert.equal(r.error, undefined, `${c.name}: ${r.error?.message}`);
    else assert.match(r.error?.message ?? "(no error)", c.error, c.name);
  }
});

Deno.test("parseFile() reads a map of 80,000 keys in bounded time, not one pairwise check per key", () => {
  // 1.1 MB, under the 4 MiB file limit. Checking each key against every earlier one of its
  // map (the YAML library's uniqueKeys) took 50 s here, and a map that fills the limit
  // minutes; a set per map takes about a second. The bound leaves room for a loaded machine.
  let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  annotations:\n";
  for (let i = 0; i < 80_000; i++) text += `    k${i}: v\n`;
  const started = performance.now();
  const r = parseFile({ path: "big.yaml", text });
  const ms = performance.now() - started;
  assert.equal(r.error, undefined, r.error?.message ?? "");
  assert.ok(ms < 15_000, `took ${Math.round(ms)} ms`);
  // And a repeat at the very end is still found.
  const repeated = parseFile({ path: "big.yaml", text: `${text}    k0: w\n` });
  assert.match(repeated.error?.message ?? "(no error)", /Map keys must be unique at line 80006,/);
});

Deno.test("parseFile() refuses a file of more than 20,000 documents or List items, early", () => {
  // 4 MiB of `--- {}` is 500,000 documents: it took 30 s and 800 MB of the reading thread,
  // past the DaemonSet's memory limit. The count stops the parse at the limit.
  const cases: [string, string, string][] = [
    ["documents", "--- {}\n".repeat(500_000), "f.yaml"],
    ["empty documents", "---\n".repeat(500_000), "f.yaml"],
    ["YAML List items", `kind: List\nitems:\n${"- {}\n".repeat(20_001)}`, "f.yaml"],
    ["JSON List items", JSON.stringify({ kind: "List", items: Array(20_001).fill({}) }), "f.json"],
  ];
  for (const [name, text, path] of cases) {
    const started = performance.now();
    const r = parseFile({ path, text });
    const ms = performance.now() - started;
    assert.match(
      r.error?.message ?? "(no error)",
      new RegExp(`^Cannot parse file "${path}": it holds more than 20000 documents and List items`),
      name,
    );
    assert.ok(ms < 10_000, `${name}: took ${Math.round(ms)} ms`);
  }
  // 20,000 is still fine.
  assert.equal(parseFile({ path: "f.yaml", text: "--- {}\n".repeat(20_000) }).docs?.length, 20_000);
});
