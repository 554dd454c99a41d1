import type { SourceRef } from "./objects.ts";

/** A Kubernetes-style object that cannot be turned into a domain object. */
export class ConfigError extends Error {
  /** Where the object came from, when known. */
  readonly source?: SourceRef;
  /** The offending field as a dotted path, such as `spec.ports[0].port`. */
  readonly field?: string;
  /** `Kind/namespace/name` of the object, when that much could be read. */
  readonly key?: string;

  constructor(
    message: string,
    options: { source?: SourceRef; field?: string; key?: string; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "ConfigError";
    this.source = options.source;
    this.field = options.field;
    this.key = options.key;
  }
}

/** Formats where an object came from: `file "a.yaml", document 2` (counted from 1). */
export function describeSource(source: SourceRef | undefined): string {
  if (!source) return "";
  if (source.doc < 0) return source.file; // not from a file, e.g. an object in the API
  const item = source.item === undefined ? "" : `, item ${source.item + 1}`;
  return `file "${source.file}", document ${source.doc + 1}${item}`;
}

/**
 * `text` cut to `max` characters with an ellipsis, for quoting input in a one-line message:
 * a 20,000-term annotation or a binary file must not become a 20 kB log line.
 */
export function abbreviate(text: string, max = 80): string {
  // Control characters (a newline in binary garbage) would break the one line; C1 controls,
  // line and paragraph separators and bidirectional overrides (`\u202e` in a name) would make
  // it read as other than it is.
  const flat = text.replace(
    // deno-lint-ignore no-control-regex
    /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g,
    (c) => {
      const code = c.charCodeAt(0);
      return code <= 0xff
        ? `\\x${code.toString(16).padStart(2, "0")}`
        : `\\u${code.toString(16).padStart(4, "0")}`;
    },
  );
  return flat.length <= max ? flat : `${flat.slice(0, max)}… (${text.length} characters)`;
}
