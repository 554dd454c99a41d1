import {
  Composer,
  type CST,
  type Document,
  isScalar,
  LineCounter,
  type Node,
  Parser,
  visit,
} from "yaml";
import { abbreviate, ConfigError, type SourceRef } from "../topology/mod.ts";
import { type ConfigLimits, DEFAULT_CONFIG_LIMITS, type SourceFile } from "./config_limits.ts";

/** One raw object of a file and where it came from. */
export interface RawDocument {
  raw: unknown;
  source: SourceRef;
}

/** A parsed file: its raw objects, or why it cannot be used. */
export type ParsedFile =
  | { error: ConfigError; docs?: undefined }
  | { error?: undefined; docs: RawDocument[] };

/**
 * Parses a YAML or JSON file into raw objects, within `limits`. Never throws: whatever goes
 * wrong (a syntax error, an undefined alias, an alias bomb, nesting past the limit, a stack
 * overflow) is a {@linkcode ConfigError} naming the file.
 */
export function parseFile(
  file: SourceFile,
  limits: ConfigLimits = DEFAULT_CONFIG_LIMITS,
): ParsedFile {
  const fail = (message: string, doc = 0, cause?: unknown): ParsedFile => ({
    error: new ConfigError(message, { source: { file: file.path, doc }, cause }),
  });
  if (file.error !== undefined) return fail(`Cannot read file "${file.path}": ${file.error}`);
  // Characters are at least a byte each: a quick bound before counting bytes.
  if (file.text.length > limits.maxFileBytes) return tooLarge(file, limits, fail);
  const json = file.path.endsWith(".json");
  try {
    const docs = json ? [JSON.parse(file.text) as unknown] : null;
    if (docs) {
      const depth = depthOf(docs[0], limits.maxDepth);
      if (depth > limits.maxDepth) {
        return fail(
          `Cannot parse file "${file.path}" as JSON: nesting deeper than ${limits.maxDepth} levels`,
        );
      }
      return counted(toDocs(file.path, docs), file, limits, fail);
    }
    return parseYaml(file, limits, fail);
  } catch (e) {
    // JSON syntax errors, and anything the YAML library throws that is not a document error
    // (its stack overflowing, say): the file's error, never the loader's.
    const what = json ? "JSON" : "YAML";
    return fail(
      `Cannot parse file "${file.path}" as ${what}: ${firstLine(e)}`,
      0,
      e,
    );
  }
}

function tooLarge(
  file: SourceFile,
  limits: ConfigLimits,
  fail: (m: string) => ParsedFile,
): ParsedFile {
  return fail(
    `Cannot read file "${file.path}": it is more than ${limits.maxFileBytes} bytes, the limit (--config-max-file-size)`,
  );
}

/** Says why a file cannot be used, naming document `doc` (0-based). */
type Fail = (m: string, doc?: number, cause?: unknown) => ParsedFile;

/** What turning one YAML document into a plain object needs. */
interface YamlContext {
  file: SourceFile;
  limits: ConfigLimits;
  lines: LineCounter;
  fail: Fail;
}

function parseYaml(file: SourceFile, limits: ConfigLimits, fail: Fail): ParsedFile {
  const ctx: YamlContext = { file, limits, lines: new LineCounter(), fail };
  // One document at a time, from text to tokens to a Document to plain objects: the tokens and
  // the Document of a document are garbage once its objects are out. Holding every token and
  // Document of a file at once took about 170 MB of heap for a 1 MB file of 2,000 documents,
  // on a thread whose freed pages the process keeps for a while.
  // Duplicate keys are found by repeatedKey, in linear time: the library's own check
  // (uniqueKeys) compares each key with every earlier one of its map, which took 8.8 s for a
  // map of 40,000 keys (550 kB), and minutes for one that fills the file size limit.
  const composer = new Composer({ uniqueKeys: false, prettyErrors: false });
  const raws: unknown[] = [];
  let docIndex = -1;
  let aliases = 0;
  const take = (documents: Iterable<Document.Parsed>): ParsedFile | null => {
    for (const d of documents) {
      const r = yamlObject(d, raws.length, ctx);
      if (!("raw" in r)) return r;
      raws.push(r.raw);
    }
    return null;
  };
  // The lexer and parser keep their own stacks; only the composer and toJS recurse, so each
  // token of the concrete syntax tree is checked for depth and aliases before either sees it.
  for (const token of new Parser(ctx.lines.addNewLine).parse(file.text)) {
    if (token.type === "document" && ++docIndex >= limits.maxDocuments) {
      return tooManyDocuments(file, limits, fail);
    }
    const scan = scanToken(token, limits.maxDepth);
    aliases += scan.aliases;
    if (scan.depth > limits.maxDepth) {
      return fail(
        `Cannot parse file "${file.path}", document ${
          Math.max(docIndex, 0) + 1
        }, as YAML: nesting deeper than ${limits.maxDepth} levels`,
        Math.max(docIndex, 0),
      );
    }
    if (aliases > limits.maxAliases) {
      return fail(
        `Cannot parse file "${file.path}" as YAML: more than ${limits.maxAliases} aliases`,
        Math.max(docIndex, 0),
      );
    }
    const failed = take(composer.next(token));
    if (failed) return failed;
  }
  return take(composer.end()) ?? counted(toDocs(file.path, raws), file, limits, fail);
}

/** The file's documents, or its error when they (with `List` items) are too many. */
function counted(
  docs: RawDocument[],
  file: SourceFile,
  limits: ConfigLimits,
  fail: Fail,
): ParsedFile {
  return docs.length > limits.maxDocuments ? tooManyDocuments(file, limits, fail) : { docs };
}

function tooManyDocuments(file: SourceFile, limits: ConfigLimits, fail: Fail): ParsedFile {
  return fail(
    `Cannot parse file "${file.path}": it holds more than ${limits.maxDocuments} documents ` +
      "and List items; split it into several files",
  );
}

/** Document `i` of a file as a plain object, or why the file cannot be used. */
function yamlObject(
  d: Document.Parsed,
  i: number,
  { file, limits, lines, fail }: YamlContext,
): { raw: unknown } | ParsedFile {
  const err = d.errors[0];
  if (err) {
    const { line, col } = lines.linePos(err.pos[0]);
    return fail(
      `Cannot parse file "${file.path}", document ${
        i + 1
      }, as YAML: ${err.message} at line ${line}, column ${col}`,
      i,
      err,
    );
  }
  const repeated = repeatedKey(d);
  if (repeated !== null) {
    const { line, col } = lines.linePos(repeated);
    return fail(
      `Cannot parse file "${file.path}", document ${
        i + 1
      }, as YAML: Map keys must be unique at line ${line}, column ${col}`,
      i,
    );
  }
  // An empty document (a stray `---`) has no contents and is fine; an explicit `~` or
  // `null` is a document that is not an object.
  const c = d.contents as { source?: unknown } | null;
  if (c === null || (isScalar(c) && c.value === null && c.source === "")) return { raw: EMPTY };
  let raw: unknown;
  try {
    // maxAliasCount also bounds what aliases expand to (an alias bomb).
    raw = d.toJS({ maxAliasCount: limits.maxAliases });
  } catch (e) {
    return fail(
      `Cannot parse file "${file.path}", document ${i + 1}, as YAML: ${firstLine(e)}`,
      i,
      e,
    );
  }
  // Aliases can nest what they point to deeper than the text does.
  if (depthOf(raw, limits.maxDepth) > limits.maxDepth) {
    return fail(
      `Cannot parse file "${file.path}", document ${
        i + 1
      }, as YAML: nesting deeper than ${limits.maxDepth} levels`,
      i,
    );
  }
  return { raw };
}

/**
 * Where the first key that repeats an earlier key of its map starts, or `null`: keys are the
 * same as the YAML library's `uniqueKeys` takes them (equal scalar values, `a` and `"a"` alike,
 * but not `1` and `"1"`), found with a set per map rather than a pairwise comparison.
 */
function repeatedKey(d: Document.Parsed): number | null {
  let at: number | null = null;
  visit(d, {
    Map(_, map) {
      const seen = new Set<unknown>();
      for (const pair of map.items) {
        const key = pair.key as Node | null;
        const id = isScalar(key) ? key.value : key;
        if (seen.has(id)) {
          at = key?.range?.[0] ?? (pair.value as Node | null)?.range?.[0] ?? 0;
          return visit.BREAK;
        }
        seen.add(id);
      }
    },
  });
  return at;
}

/** Aliases in a token, and how deep its collections nest (stopping past `maxDepth`). */
function scanToken(root: CST.Token, maxDepth: number): { aliases: number; depth: number } {
  let aliases = 0;
  let deepest = 0;
  const stack: [CST.Token, number][] = [[root, 0]];
  while (stack.length > 0) {
    const [t, depth] = stack.pop()!;
    if (depth > deepest) deepest = depth;
    if (deepest > maxDepth) break;
    switch (t.type) {
      case "alias":
        aliases++;
        break;
      case "document":
        if (t.value) stack.push([t.value, depth]);
        break;
      case "block-map":
      case "block-seq":
      case "flow-collection":
        for (const item of t.items) {
          if ("key" in item && item.key) stack.push([item.key, depth + 1]);
          if (item.value) stack.push([item.value, depth + 1]);
        }
        break;
    }
  }
  return { aliases, depth: deepest };
}

/** How deep `v` nests, counted without recursion; stops once past `max`. */
function depthOf(v: unknown, max: number): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[v, 0]];
  while (stack.length > 0) {
    const [x, depth] = stack.pop()!;
    if (typeof x !== "object" || x === null) continue;
    if (depth + 1 > deepest) deepest = depth + 1;
    if (deepest > max) return deepest;
    for (const child of Array.isArray(x) ? x : Object.values(x)) stack.push([child, depth + 1]);
  }
  return deepest;
}

/** Stands for an empty YAML document, which holds no object. */
const EMPTY = Symbol("empty document");

function toDocs(path: string, raws: unknown[]): RawDocument[] {
  const docs: RawDocument[] = [];
  for (const [doc, raw] of raws.entries()) {
    if (raw === EMPTY) continue;
    const list = asList(raw);
    if (list) {
      list.forEach((item, i) => docs.push({ raw: item, source: { file: path, doc, item: i } }));
    } else docs.push({ raw, source: { file: path, doc } });
  }
  return docs;
}

/** `kind: List` (and `ServiceList` and the like, as `kubectl get -o yaml` writes) hold items. */
function asList(raw: unknown): unknown[] | null {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    return Array.isArray(raw) ? raw : null;
  }
  const o = raw as Record<string, unknown>;
  if (typeof o["kind"] === "string" && o["kind"].endsWith("List") && Array.isArray(o["items"])) {
    return o["items"];
  }
  return null;
}

function firstLine(e: unknown): string {
  const m = e instanceof Error ? e.message : String(e);
  return abbreviate(m.split("\n")[0]!.replace(/:\s*$/, ""), 200);
}
