import {
  compareNames,
  ConfigError,
  type DecodeResult,
  describeSource,
  type LoadResult,
  type MeshObject,
  objectKey,
  type SourceRef,
} from "../topology/mod.ts";
import { type ConfigLimits, DEFAULT_CONFIG_LIMITS, type SourceFile } from "./config_limits.ts";

export type { SourceFile };

/**
 * One file, parsed and decoded: the part of a load that costs time, and that runs off the
 * serving thread (see `FileProvider`). Plain data once {@linkcode encodeDecodedFile} made it so.
 */
export interface DecodedFile {
  path: string;
  /**
   * Why the file as a whole cannot be used: it does not read or parse, or a document in it is
   * not a Kubernetes object meshd can identify. The file keeps its last good objects.
   */
  fileErrors: ConfigError[];
  /** Each document's outcome, and where it came from. */
  results: (DecodeResult & { source: SourceRef })[];
  /** Set when the file was skipped (not a regular file): a warning, and no objects. */
  skipped?: string;
}

/**
 * Parses and decodes files on this thread. The YAML library is loaded on the first call, so a
 * process that only merges files decoded by the reading thread never loads it.
 */
export async function decodeFiles(
  files: readonly (SourceFile & { skipped?: string })[],
  limits: ConfigLimits = DEFAULT_CONFIG_LIMITS,
): Promise<DecodedFile[]> {
  const { decodeFile } = await import("./decode_file.ts");
  return files.map((f) => decodeFile(f, limits));
}

/** A {@linkcode ConfigError} as plain data, to cross to another thread. */
interface WireError {
  message: string;
  source?: SourceRef;
  field?: string;
  key?: string;
}

const toWire = (e: ConfigError): WireError => ({
  message: e.message,
  ...(e.source ? { source: e.source } : {}),
  ...(e.field ? { field: e.field } : {}),
  ...(e.key ? { key: e.key } : {}),
});
const fromWire = (w: WireError): ConfigError =>
  new ConfigError(w.message, { source: w.source, field: w.field, key: w.key });

/** A {@linkcode DecodedFile} as structured-clonable data (errors lose their class). */
export function encodeDecodedFile(f: DecodedFile): unknown {
  return {
    path: f.path,
    fileErrors: f.fileErrors.map(toWire),
    results: f.results.map((r) => r.status === "invalid" ? { ...r, error: toWire(r.error) } : r),
    ...(f.skipped !== undefined ? { skipped: f.skipped } : {}),
  };
}

/** The inverse of {@linkcode encodeDecodedFile}. */
export function decodeDecodedFile(data: unknown): DecodedFile {
  const w = data as {
    path: string;
    fileErrors: WireError[];
    results: (
      | DecodedFile["results"][number]
      | { status: "invalid"; error: WireError; key?: string; source: SourceRef }
    )[];
    skipped?: string;
  };
  return {
    path: w.path,
    fileErrors: w.fileErrors.map(fromWire),
    results: w.results.map((r) =>
      r.status === "invalid"
        ? {
          status: "invalid",
          error: fromWire(r.error as WireError),
          source: r.source,
          ...(r.key ? { key: r.key } : {}),
        }
        : r as DecodedFile["results"][number]
    ),
    ...(w.skipped !== undefined ? { skipped: w.skipped } : {}),
  };
}

/**
 * Turns files of Kubernetes-style YAML or JSON into domain objects. It remembers the last good
 * version of every file and object, so bad input never loses config that was running: a file
 * that no longer parses, or holds a document that is not an object, keeps its previous
 * objects, and an object that no longer decodes keeps its previous version. No I/O: the caller
 * reads the files.
 *
 * @example
 * ```ts
 * const loader = new ObjectLoader();
 * const { objects, errors } = loader.merge(await decodeFiles([{ path: "svc.yaml", text }]));
 * ```
 */
export class ObjectLoader {
  /**
   * The objects of each file as last read, as JSON text, parsed again only when a later read
   * of the file fails: the objects themselves took three times as much heap (about 5 MiB
   * against 1.7 MB at 1,000 services of ten endpoints), for as long as meshd runs, beside the
   * config compiled from them.
   */
  #goodFiles = new Map<string, string>();
  /** The file each object in force came from, by `Kind/namespace/name`. */
  #goodObjects = new Map<string, string>();

  /** The last good objects of `path`, parsed once per merge (`parsed` holds them). */
  #revive(path: string, parsed: Map<string, MeshObject[]>): MeshObject[] {
    let objects = parsed.get(path);
    if (!objects) {
      const text = this.#goodFiles.get(path);
      objects = text === undefined ? [] : JSON.parse(text) as MeshObject[];
      parsed.set(path, objects);
    }
    return objects;
  }

  /** The last good version of the object `key`, if there is one. */
  #lastGood(key: string, parsed: Map<string, MeshObject[]>): MeshObject | undefined {
    const path = this.#goodObjects.get(key);
    // The last of its key in the file: a later duplicate wins, as in merge.
    return path === undefined
      ? undefined
      : this.#revive(path, parsed).findLast((o) => objectKey(o) === key);
  }

  /**
   * Merges a complete set of decoded files (see {@linkcode decodeFiles}, or the reading thread
   * of `FileProvider`); files absent from `files` are gone.
   */
  merge(files: readonly DecodedFile[]): LoadResult {
    const errors: ConfigError[] = [];
    const warnings: string[] = [];
    const notes: string[] = [];
    const byKey = new Map<string, MeshObject>();
    const fileOf = new Map<string, string>();
    const nextFiles = new Map<string, string>();
    const parsed = new Map<string, MeshObject[]>();

    for (const file of [...files].sort((a, b) => compareNames(a.path, b.path))) {
      if (file.skipped !== undefined) {
        warnings.push(`Skipping "${file.path}": ${file.skipped}`);
        continue;
      }
      let objects: MeshObject[];
      let text: string | undefined;
      if (file.fileErrors.length > 0) {
        errors.push(...file.fileErrors);
        for (const r of file.results) {
          if (r.status === "invalid" && r.key !== undefined) errors.push(r.error);
        }
        objects = this.#revive(file.path, parsed);
        text = this.#goodFiles.get(file.path);
        if (objects.length > 0) {
          warnings.push(
            `Keeping the ${objects.length} object(s) last read from "${file.path}" until it is fixed`,
          );
        }
      } else {
        objects = [];
        for (const r of file.results) {
          if (r.status === "ok") {
            objects.push(r.object);
          } else if (r.status === "skipped") {
            (r.quiet ? notes : warnings).push(`Skipping ${describeSource(r.source)}: ${r.reason}`);
          } else {
            errors.push(r.error);
            const old = r.key ? this.#lastGood(r.key, parsed) : undefined;
            if (old) {
              warnings.push(`Keeping the last good version of ${r.key} until it is fixed`);
              objects.push(old);
            }
          }
        }
      }
      nextFiles.set(file.path, text ?? JSON.stringify(objects));
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
        fileOf.set(key, file.path);
      }
    }
    this.#goodFiles = nextFiles;
    this.#goodObjects = fileOf;
    return { objects: [...byKey.values()], errors, warnings, ...(notes.length ? { notes } : {}) };
  }

  /**
   * The objects in force with `error`, when no file could be read at all (the reading thread
   * died or took too long): everything last good stays.
   */
  keep(error: ConfigError): LoadResult {
    const parsed = new Map<string, MeshObject[]>();
    const objects: MeshObject[] = [];
    for (const k of this.#goodObjects.keys()) {
      const o = this.#lastGood(k, parsed);
      if (o) objects.push(o);
    }
    return {
      objects,
      errors: [error],
      warnings: [`Keeping the ${this.#goodObjects.size} object(s) last read until it is fixed`],
    };
  }
}
