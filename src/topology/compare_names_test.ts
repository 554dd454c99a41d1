import assert from "node:assert/strict";
import { seededRandom as random } from "../_testing.ts";
import { compareNames } from "./compare_names.ts";

const english = new Intl.Collator("en").compare;

/**
 * Fails on the first pair of `names` that `compareNames` orders otherwise than `english`; two
 * different strings `english` finds equal must be in code-unit order.
 */
function assertSameOrder(names: string[]): void {
  for (const a of names) {
    for (const b of names) {
      const got = Math.sign(compareNames(a, b));
      const collated = Math.sign(english(a, b));
      const want = collated !== 0 || a === b ? collated : a < b ? -1 : 1;
      if (got !== want) {
        assert.fail(
          `compareNames(${JSON.stringify(a)}, ${
            JSON.stringify(b)
          }) is ${got}, English collation ${want}`,
        );
      }
    }
  }
}

Deno.test("compareNames() orders names as English collation does", () => {
  // Every name of up to two characters from the alphabet compared without a collator, and
  // names with what it does not cover: upper case, "_", a non-ASCII letter.
  const plain = "abcdefghijklmnopqrstuvwxyz0123456789-./".split("");
  const names = ["", ...plain, ...plain.flatMap((a) => plain.map((b) => a + b))];
  names.push("B.yaml", "a.yaml", "A", "_x", "a_b", "é.yaml", "e.yaml", "svc-10", "svc-9", "Z");
  names.push("l\u00b7a", "la", "lb", "L\u00b7", "ch", "cz", "aa", "z");
  assertSameOrder(names);
});

Deno.test("compareNames() orders every ASCII string as English collation does", () => {
  // Every ASCII character (controls, punctuation, case) alone and after "a" and "A", then
  // strings drawn from all of ASCII, and from a few characters, so that many pairs share a
  // prefix and differ only in case, an ignorable control or punctuation.
  const ascii = Array.from({ length: 128 }, (_, c) => String.fromCharCode(c));
  const names = ["", ...ascii, ...ascii.map((c) => `a${c}`), ...ascii.map((c) => `A${c}b`)];
  const next = random(21);
  const pick = (alphabet: string) => alphabet[Math.floor(next() * alphabet.length)]!;
  const few = 'aAbB_-.\u0000\u0001\t =",{}09Zz\u007f';
  for (let i = 0; i < 600; i++) {
    const alphabet = i % 2 ? ascii.join("") : few;
    let s = "";
    for (let n = Math.floor(next() * 9); n > 0; n--) s += pick(alphabet);
    names.push(s);
  }
  // Metric series keys as the registry sorts them: label values joined by U+0000, and
  // rendered label sets.
  names.push(
    "GET\u0000200\u0000default/web",
    "get\u0000200\u0000default/web",
    "GET\u0000201\u0000default/web",
    'code="200",method="GET",service="default/web"',
    'code="200",method="get",service="default/web"',
    'code="200",method="GET",service="default/Web"',
    'code="200",service="default/web"',
    "2026-11-30T03:45:14Z",
    "2026-11-30T03:45:14.5Z",
  );
  assertSameOrder(names);
});

Deno.test("compareNames() tells apart two different names English collation finds equal", () => {
  // An ignorable control character or soft hyphen, é precomposed and decomposed: without an
  // order between them, sorting keeps the order they came in (a directory listing's).
  const pairs: [string, string][] = [
    ["web.yaml", "web\u0001.yaml"],
    ["web.yaml", "we\u00adb.yaml"],
    ["caf\u00e9.yaml", "cafe\u0301.yaml"],
  ];
  for (const [a, b] of pairs) {
    assert.equal(english(a, b), 0, `the collation tells ${JSON.stringify([a, b])} apart`);
    const ab = compareNames(a, b);
    assert.notEqual(ab, 0, `compareNames(${JSON.stringify(a)}, ${JSON.stringify(b)}) is 0`);
    assert.equal(Math.sign(compareNames(b, a)), -Math.sign(ab), `${JSON.stringify([a, b])}`);
    assert.deepEqual([b, a].sort(compareNames), [a, b].sort(compareNames));
  }
});
