import { parseAllDocuments } from "yaml";
import {
  ConfigError,
  decodeObject,
  describeSource,
  type MeshObject,
  objectKey,
  type SourceRef,
} from "../topology/mod.ts";

/** A file's path and text. */
export interface SourceFile {
  path: string;
  text: string;
}

/** What one load produced. */
export interface LoadResult {
  /** The objects in force: new where they decoded, the last good version where they did not. */
  objects: MeshObject[];
  /** Bad input, each naming the file, the document and, where it can, the field. */
  errors: ConfigError[];
  /** Skipped documents (unknown kinds) and objects kept from an earlier load. */
  warnings: string[];
}

/**
 * Turns files of Kubernetes-style YAML or JSON into domain objects. It remembers the last good
 * version of every file and object, so bad input never loses config that was running: a file
 * that no longer parses keeps its previous objects, and an object that no longer decodes keeps
 * its previous version. No I/O: the caller reads the files.
 *
 * @example
 * ```ts
 * const loader = new ObjectLoader();
 * const { objects, errors } = loader.load([{ path: "svc.yaml", text }]);
 * ```
 */
export class ObjectLoader {
  #goodFiles = new Map<string, MeshObject[]>();
  #goodObjects = new Map<string, MeshObject>();

  /** Loads a complete set of files; files absent from `files` are gone. */
  load(files: readonly SourceFile[]): LoadResult {
    const errors: ConfigError[] = [];
    const warnings: string[] = [];
    const byKey = new Map<string, MeshObject>();
    const nextFiles = new Map<string, MeshObject[]>();

    for (const file of [...files].sort((a, b) => a.path.localeCompare(b.path))) {
      const parsed = parseFile(file);
      let objects: MeshObject[];
      if (parsed.error) {
        errors.push(parsed.error);
        objects = this.#goodFiles.get(file.path) ?? [];
        if (objects.length > 0) {
          warnings.push(
            `Keeping the ${objects.length} object(s) last read from "${file.path}" until it parses again`,
          );
        }
      } else {
        objects = [];
        for (const { raw, source } of parsed.docs) {
          const r = decodeObject(raw, source);
          if (r.status === "ok") {
            objects.push(r.object);
          } else if (r.status === "skipped") {
            warnings.push(`Skipping ${describeSource(source)}: ${r.reason}`);
          } else {
            errors.push(r.error);
            const old = r.key ? this.#goodObjects.get(r.key) : undefined;
            if (old) {
              warnings.push(`Keeping the last good version of ${r.key} until it is fixed`);
              objects.push(old);
            }
          }
        }
      }
      nextFiles.set(file.path, objects);
      for (const o of objects) {
        const key = objectKey(o);
        const dup = byKey.get(key);
        if (dup) {
          warnings.push(
            `${key} is defined twice (${describeSource(dup.source)} and ${
              describeSource(o.source)
            }); the latter wins`,
          );
        }
        byKey.set(key, o);
      }
    }
    this.#goodFiles = nextFiles;
    this.#goodObjects = byKey;
    return { objects: [...byKey.values()], errors, warnings };
  }
}

type Parsed =
  | { error: ConfigError; docs?: undefined }
  | { error?: undefined; docs: { raw: unknown; source: SourceRef }[] };

function parseFile(file: SourceFile): Parsed {
  const docs: { raw: unknown; source: SourceRef }[] = [];
  const add = (raw: unknown, doc: number): void => {
    if (raw === null || raw === undefined) return; // an empty document
    const list = asList(raw);
    if (list) {
      list.forEach((item, i) =>
        docs.push({ raw: item, source: { file: file.path, doc, item: i } })
      );
    } else docs.push({ raw, source: { file: file.path, doc } });
  };
  if (file.path.endsWith(".json")) {
    try {
      add(JSON.parse(file.text), 0);
    } catch (e) {
      return {
        error: new ConfigError(
          `Cannot parse file "${file.path}" as JSON: ${(e as Error).message}`,
          { source: { file: file.path, doc: 0 }, cause: e },
        ),
      };
    }
    return { docs };
  }
  const all = parseAllDocuments(file.text, { prettyErrors: true, uniqueKeys: true });
  const documents = Array.isArray(all) ? all : [];
  for (const [i, d] of documents.entries()) {
    const err = d.errors[0];
    if (err) {
      // With prettyErrors the message reads "<what> at line L, column C:" and then a snippet.
      const firstLine = err.message.split("\n")[0]!.replace(/:\s*$/, "");
      return {
        error: new ConfigError(
          `Cannot parse file "${file.path}", document ${i + 1}, as YAML: ${firstLine}`,
          { source: { file: file.path, doc: i }, cause: err },
        ),
      };
    }
    add(d.toJS({ maxAliasCount: 100 }), i);
  }
  return { docs };
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
