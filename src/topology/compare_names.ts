/**
 * The order of names everywhere meshd sorts them for people or for files: config files, objects,
 * services, nodes, metric series.
 *
 * @module
 */

// Lower-case letters, digits, "-", "." and "/": English (ICU's root) collation orders strings
// of these exactly as their UTF-16 code units: one primary weight each, in code order ("-" <
// "." < "/" < digits < letters), and no contraction among them. So such names need no
// collator: the first collator made in the process costs it about 3 MiB of the deno file's
// pages, ICU's collation code and data (issue 21).
const PLAIN = new Uint8Array(128);
for (const c of "abcdefghijklmnopqrstuvwxyz0123456789./-") PLAIN[c.charCodeAt(0)] = 1;

// The rest of ASCII is still simple in English collation: each character has one primary
// weight, in the order below (CLDR root; an upper-case letter shares its lower-case letter's),
// or none (controls other than \t..\r, and DEL, are ignorable); accents (the secondary level)
// never occur; and at the tertiary level the only difference is case, lower before upper. No
// contraction starts and ends within ASCII, but some start in it (`l` + U+00B7), so a string
// with any other character goes to the collator whole.
const ASCII_ORDER = "\t\n\v\f\r _-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$0123456789" +
  "abcdefghijklmnopqrstuvwxyz";

/** Primary weight of each ASCII code, 0 for the ignorable ones. */
const PRIMARY = new Uint8Array(128);
for (let i = 0; i < ASCII_ORDER.length; i++) PRIMARY[ASCII_ORDER.charCodeAt(i)] = i + 1;
for (let c = 65; c <= 90; c++) PRIMARY[c] = PRIMARY[c + 32]!;

let english: Intl.Collator["compare"] | undefined;

/**
 * Orders `a` and `b` as `a.localeCompare(b, "en")` does, in every locale: the process's own
 * (`LANG`) must not decide which of two files defining the same object wins (in Danish
 * collation "aa" comes after "z"). ASCII strings are compared without a collator; one is made,
 * once, for the first pair with any other character. Two different strings the collation
 * finds equal (an ignorable character, é precomposed or not) are ordered by their code units:
 * never 0, or their order, and so which file wins, would be the order they came in.
 *
 * @example
 * ```ts
 * ["b.yaml", "a.yaml"].sort(compareNames); // ["a.yaml", "b.yaml"]
 * ```
 */
export function compareNames(a: string, b: string): number {
  if (a === b) return 0;
  const kind = Math.min(kindOf(a), kindOf(b));
  if (kind === PLAIN_NAME) return a < b ? -1 : 1;
  let order: number;
  if (kind === ASCII) order = compareAscii(a, b);
  else {
    english ??= new Intl.Collator("en").compare;
    order = english(a, b);
  }
  // Equal to the collation, yet different strings: code-unit order, never 0 (see above).
  return order !== 0 ? order : a < b ? -1 : 1;
}

const OTHER = 0;
const ASCII = 1;
const PLAIN_NAME = 2;

/** What a string holds: only plain name characters, only ASCII, or anything else. */
function kindOf(s: string): number {
  let kind = PLAIN_NAME;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 127) return OTHER;
    if (PLAIN[c] === 0) kind = ASCII;
  }
  return kind;
}

/** English collation of two ASCII strings: primary weights first, then case. */
function compareAscii(a: string, b: string): number {
  let i = 0;
  let j = 0;
  let tertiary = 0;
  for (;;) {
    while (i < a.length && PRIMARY[a.charCodeAt(i)] === 0) i++;
    while (j < b.length && PRIMARY[b.charCodeAt(j)] === 0) j++;
    if (i === a.length || j === b.length) {
      return i < a.length ? 1 : j < b.length ? -1 : tertiary;
    }
    const ca = a.charCodeAt(i++);
    const cb = b.charCodeAt(j++);
    const pa = PRIMARY[ca]!;
    const pb = PRIMARY[cb]!;
    if (pa !== pb) return pa < pb ? -1 : 1;
    // Same letter, different case: the upper-case one (the lower code) sorts after.
    if (tertiary === 0 && ca !== cb) tertiary = ca < cb ? 1 : -1;
  }
}
