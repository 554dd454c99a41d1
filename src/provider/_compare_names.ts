/**
 * The order of config files: by name within a folder, by path when their objects are merged.
 *
 * @module
 */

// Lower-case letters, digits, "-", "." and "/": English (ICU's root) collation orders strings
// of these exactly as their UTF-16 code units: one primary weight each, in code order ("-" <
// "." < "/" < digits < letters), and no contraction among them. So such names need no
// collator: the first collator made in the process costs it about 3 MiB of the deno file's
// pages, ICU's collation code and data (issue 21).
const PLAIN = /^[a-z0-9./-]*$/;

let english: Intl.Collator["compare"] | undefined;

/**
 * Orders `a` and `b` as `a.localeCompare(b, "en")` does, in every locale: the process's own
 * (`LANG`) must not decide which of two files defining the same object wins (in Danish
 * collation "aa" comes after "z").
 *
 * @example
 * ```ts
 * ["b.yaml", "a.yaml"].sort(compareNames); // ["a.yaml", "b.yaml"]
 * ```
 */
export function compareNames(a: string, b: string): number {
  if (PLAIN.test(a) && PLAIN.test(b)) return a < b ? -1 : a > b ? 1 : 0;
  english ??= new Intl.Collator("en").compare;
  return english(a, b);
}
