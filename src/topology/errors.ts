import type { SourceRef } from "./objects.ts";

/** A Kubernetes-style object that cannot be turned into a domain object. */
export class ConfigError extends Error {
  /** Where the object came from, when known. */
  readonly source?: SourceRef;
  /** The offending field as a dotted path, such as `spec.ports[0].port`. */
  readonly field?: string;

  constructor(
    message: string,
    options: { source?: SourceRef; field?: string; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "ConfigError";
    this.source = options.source;
    this.field = options.field;
  }
}

/** Formats where an object came from: `file "a.yaml", document 2` (counted from 1). */
export function describeSource(source: SourceRef | undefined): string {
  if (!source) return "";
  if (source.doc < 0) return source.file; // not from a file, e.g. an object in the API
  const item = source.item === undefined ? "" : `, item ${source.item + 1}`;
  return `file "${source.file}", document ${source.doc + 1}${item}`;
}
