/**
 * Lists the longest functions in `src/` (declarations, methods, constructors, arrow functions
 * and function expressions, nested ones counted on their own), longest first, and says whether
 * a comment right above explains the length: a comment with "long" or "lines" in it.
 *
 * Usage: deno run --allow-read tests/tools/function_sizes.ts [--over N] [--top N] [--json]
 *
 * @module
 */
import ts from "typescript";

export interface FunctionSize {
  file: string;
  line: number;
  name: string;
  lines: number;
  /** A comment above the function says why it is long. */
  explained: boolean;
}

function nameOf(node: ts.Node, sf: ts.SourceFile): string {
  const n = (node as { name?: ts.Node }).name;
  if (n) return n.getText(sf);
  if (ts.isConstructorDeclaration(node)) {
    const cls = node.parent as ts.ClassDeclaration;
    return `${cls.name?.getText(sf) ?? "class"}.constructor`;
  }
  const p = node.parent;
  if (p && ts.isVariableDeclaration(p)) return p.name.getText(sf);
  if (p && ts.isPropertyAssignment(p)) return p.name.getText(sf);
  if (p && ts.isPropertyDeclaration(p)) return p.name.getText(sf);
  return "(anonymous)";
}

/** The functions of one file with their sizes. */
export function functionSizes(file: string, text: string): FunctionSize[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const out: FunctionSize[] = [];
  const visit = (node: ts.Node) => {
    if (
      ts.isFunctionDeclaration(node) || ts.isMethodDeclaration(node) ||
      ts.isConstructorDeclaration(node) || ts.isArrowFunction(node) ||
      ts.isFunctionExpression(node) || ts.isGetAccessorDeclaration(node) ||
      ts.isSetAccessorDeclaration(node)
    ) {
      const body = (node as ts.FunctionLikeDeclaration).body;
      if (body) {
        const start = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line;
        const end = sf.getLineAndCharacterOfPosition(node.getEnd()).line;
        // The comment above the statement that holds the function (a const, a property).
        let holder: ts.Node = node;
        while (
          holder.parent && !ts.isSourceFile(holder.parent) && !ts.isBlock(holder.parent) &&
          !ts.isClassLike(holder.parent) && !ts.isObjectLiteralExpression(holder.parent)
        ) holder = holder.parent;
        const comments = ts.getLeadingCommentRanges(text, holder.getFullStart()) ?? [];
        const said = comments.map((c) => text.slice(c.pos, c.end)).join("\n");
        out.push({
          file,
          line: start + 1,
          name: nameOf(node, sf),
          lines: end - start + 1,
          explained: /\blong\b|\blines\b/i.test(said),
        });
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

/** Every non-test module under `dir`, recursively. */
export function sourceFiles(dir: string): string[] {
  const files: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) files.push(...sourceFiles(path));
    else if (e.name.endsWith(".ts") && !e.name.endsWith("_test.ts")) files.push(path);
  }
  return files;
}

if (import.meta.main) {
  const arg = (name: string, fallback: number) => {
    const i = Deno.args.indexOf(`--${name}`);
    return i >= 0 ? Number(Deno.args[i + 1]) : fallback;
  };
  const root = new URL("../../", import.meta.url).pathname;
  const all = sourceFiles(`${root}src`).flatMap((f) =>
    functionSizes(f.slice(root.length), Deno.readTextFileSync(f))
  ).sort((a, b) => b.lines - a.lines);
  const over = arg("over", 80);
  const shown = all.filter((f) => f.lines > over).slice(0, arg("top", 1000));
  if (Deno.args.includes("--json")) console.log(JSON.stringify(shown, null, 2));
  else {
    for (const f of shown) {
      console.log(
        `${String(f.lines).padStart(5)}  ${
          f.explained ? "explained  " : "           "
        }${f.name}  ${f.file}:${f.line}`,
      );
    }
    console.log(
      `${shown.length} functions over ${over} lines (${
        shown.filter((f) => !f.explained).length
      } without a comment saying why), of ${all.length}`,
    );
  }
}
