/**
 * Parsing and decoding one config file: the part of a load that needs the YAML library. The
 * reading thread imports it; the serving thread only through `decodeFiles`' lazy
 * import.
 *
 * @module
 */
import {
  abbreviate,
  ConfigError,
  decodeObject,
  type DecodeResult,
  describeSource,
} from "../topology/mod.ts";
import { type ConfigLimits, DEFAULT_CONFIG_LIMITS, type SourceFile } from "./config_limits.ts";
import type { DecodedFile } from "./object_loader.ts";
import { parseFile } from "./parse_file.ts";

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
