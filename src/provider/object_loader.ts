import {
  abbreviate,
  ConfigError,
  decodeObject,
  type DecodeResult,
  describeSource,
  type MeshObject,
  objectKey,
  type SourceRef,
} from "../topology/mod.ts";
import {
  type ConfigLimits,
  DEFAULT_CONFIG_LIMITS,
  parseFile,
  type SourceFile,
} from "./parse_file.ts";

export type { SourceFile };

/** What one load produced. */
export interface LoadResult {
  /** The objects in force: new where they decoded, the last good version where they did not. */
  objects: MeshObject[];
  /** Bad input, each naming the file, the document and, where it can, the field. */
  errors: ConfigError[];
  /** Skipped documents (unknown kinds) and objects kept from an earlier load. */
  warnings: string[];
  /**
   * Documents skipped without a warning, for the debug log: kinds any application manifest
   * carries (ServiceAccount, Deployment, ...).
   */
  notes?: string[];
}

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
 * Parses and decodes one file. Never throws: anything that goes wrong is an error naming the
 * file.
 */
export function decodeFile(
  file: SourceFile & { skipped?: string },
  limits: ConfigLimits = DEFAULT_CONFIG_LIMITS,
): DecodedFile {
  if (file.skipped !== undefined) {
    return { path: file.path, fileErrors: [], results: [], skipped: file.skipped };
  }
  const parsed = parseFile(file, limits);
  if (parsed.error) return { path: file.path, fileErrors: [parsed.error], results: [] };
  const fileErrors: ConfigError[] = [];
  const results: DecodedFile["results"] = [];
  for (const { raw, source } of parsed.docs) {
    let r: DecodeResult;
    try {
      r = decodeObject(raw, source);
    } catch (e) {
      // A bug in a decoder, or a stack overflow: this object's error, never the load's.
      r = {
        status: "invalid",
        error: new ConfigError(
          `Cannot read object in ${describeSource(source)}: ${
            abbreviate(e instanceof Error ? e.message : String(e), 200)
          }`,
          { source, cause: e },
        ),
      };
    }
    // An object whose kind, API version or name cannot be read is not an object to drop: it
    // is the file gone wrong (cut short, a scalar, a list of scalars), so the file keeps the
    // objects it last had.
    if (r.status === "invalid" && r.key === undefined) fileErrors.push(r.error);
    results.push({ ...r, source });
  }
  // One line for a broken file, however many documents it breaks in.
  const first = fileErrors[0];
  if (first && fileErrors.length > 1) {
    fileErrors.splice(
      0,
      fileErrors.length,
      new ConfigError(`${first.message} (and ${fileErrors.length - 1} more like it)`, {
        source: first.source,
        field: first.field,
        cause: first,
      }),
    );
  }
  return { path: file.path, fileErrors, results };
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
 * const { objects, errors } = loader.load([{ path: "svc.yaml", text }]);
 * ```
 */
export class ObjectLoader {
  #goodFiles = new Map<string, MeshObject[]>();
  #goodObjects = new Map<string, MeshObject>();

  /** Loads a complete set of files; files absent from `files` are gone. */
  load(files: readonly SourceFile[], limits: ConfigLimits = DEFAULT_CONFIG_LIMITS): LoadResult {
    return this.merge(files.map((f) => decodeFile(f, limits)));
  }

  /** Like {@linkcode ObjectLoader.load}, from files decoded already (by another thread). */
  merge(files: readonly DecodedFile[]): LoadResult {
    const errors: ConfigError[] = [];
    const warnings: string[] = [];
    const notes: string[] = [];
    const byKey = new Map<string, MeshObject>();
    const nextFiles = new Map<string, MeshObject[]>();

    for (const file of [...files].sort((a, b) => a.path.localeCompare(b.path))) {
      if (file.skipped !== undefined) {
        warnings.push(`Skipping "${file.path}": ${file.skipped}`);
        continue;
      }
      let objects: MeshObject[];
      if (file.fileErrors.length > 0) {
        errors.push(...file.fileErrors);
        for (const r of file.results) {
          if (r.status === "invalid" && r.key !== undefined) errors.push(r.error);
        }
        objects = this.#goodFiles.get(file.path) ?? [];
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
    return { objects: [...byKey.values()], errors, warnings, ...(notes.length ? { notes } : {}) };
  }

  /**
   * The objects in force with `error`, when no file could be read at all (the reading thread
   * died or took too long): everything last good stays.
   */
  keep(error: ConfigError): LoadResult {
    return {
      objects: [...this.#goodObjects.values()],
      errors: [error],
      warnings: [`Keeping the ${this.#goodObjects.size} object(s) last read until it is fixed`],
    };
  }
}
