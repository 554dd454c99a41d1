/**
 * The order of endpoint addresses in a MeshConfig.
 *
 * @module
 */

// IPv4 and IPv6 addresses as they appear: digits, ".", ":" and lower-case hex letters. English
// numeric collation orders such strings by their primary weights alone (no case, no accents):
// ":" before ".", both before any number, a run of digits as one number (its value: leading
// zeros do not count), numbers before letters, "a" before "b" and so on. So they need no
// collator (issue 21: the first one made costs about 3 MiB of ICU code and data).
const ADDRESS = new Uint8Array(128);
for (const c of "0123456789abcdef.:") ADDRESS[c.charCodeAt(0)] = 1;

// ICU encodes a run of digits as one weight up to 254 significant digits and splits longer
// ones; no address has such a run, so those strings go to the collator.
const MAX_RUN = 254;

let numeric: Intl.Collator["compare"] | undefined;

/**
 * Orders `a` and `b` as `Intl.Collator("en", { numeric: true }).compare` does, so that
 * `127.0.0.9` comes before `127.0.0.10`. Addresses of digits, `.`, `:` and `a`-`f` are compared
 * without a collator; one is made, once, for the first pair with anything else.
 *
 * @example
 * ```ts
 * ["10.0.0.10", "10.0.0.9"].sort(compareAddresses); // ["10.0.0.9", "10.0.0.10"]
 * ```
 */
export function compareAddresses(a: string, b: string): number {
  if (a === b) return 0;
  if (isAddress(a) && isAddress(b)) {
    const r = compareNumeric(a, b);
    if (r !== undefined) return r;
  }
  numeric ??= new Intl.Collator("en", { numeric: true }).compare;
  return numeric(a, b);
}

function isAddress(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (ADDRESS[s.charCodeAt(i)] !== 1) return false;
  return true;
}

const ZERO = 48;
const NINE = 57;
const COLON = 58;

/** A class per primary weight: ":" 0, "." 1, a number 2, a letter its code (97 and up). */
function weightClass(c: number): number {
  return c === COLON ? 0 : c === 46 ? 1 : c <= NINE ? 2 : c;
}

/** Numeric collation of two strings of `[0-9a-f.:]`; undefined for a run of digits too long. */
function compareNumeric(a: string, b: string): number | undefined {
  let i = 0;
  let j = 0;
  for (;;) {
    if (i === a.length || j === b.length) return i < a.length ? 1 : j < b.length ? -1 : 0;
    const ka = weightClass(a.charCodeAt(i));
    const kb = weightClass(b.charCodeAt(j));
    if (ka !== kb) return ka < kb ? -1 : 1;
    if (ka !== 2) {
      i++;
      j++;
      continue;
    }
    // Two numbers: skip leading zeros (keeping one digit), then the longer is the larger, then
    // the first differing digit decides.
    const ea = runEnd(a, i);
    const eb = runEnd(b, j);
    if (ea - i > MAX_RUN || eb - j > MAX_RUN) return undefined;
    while (i < ea - 1 && a.charCodeAt(i) === ZERO) i++;
    while (j < eb - 1 && b.charCodeAt(j) === ZERO) j++;
    if (ea - i !== eb - j) return ea - i < eb - j ? -1 : 1;
    for (; i < ea; i++, j++) {
      const d = a.charCodeAt(i) - b.charCodeAt(j);
      if (d !== 0) return d < 0 ? -1 : 1;
    }
  }
}

function runEnd(s: string, from: number): number {
  let k = from;
  while (k < s.length && s.charCodeAt(k) >= ZERO && s.charCodeAt(k) <= NINE) k++;
  return k;
}
