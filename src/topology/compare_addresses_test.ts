import assert from "node:assert/strict";
import { seededRandom as random } from "../_testing.ts";
import { compareAddresses } from "./compare_addresses.ts";

const numeric = new Intl.Collator("en", { numeric: true }).compare;

Deno.test("compareAddresses() orders addresses as English numeric collation does", () => {
  const next = random(67);
  const int = (n: number) => Math.floor(next() * n);
  const zeros = () => "0".repeat(next() < 0.2 ? 1 + int(3) : 0);
  const octet = () => zeros() + String(next() < 0.3 ? int(10) : int(256));
  const hexGroup = () => zeros() + int(0x10000).toString(16).slice(0, 1 + int(4));
  const ipv4 = (parts = 4) => Array.from({ length: parts }, octet).join(".");
  const ipv6 = () => {
    const groups = Array.from({ length: 2 + int(7) }, hexGroup);
    if (next() < 0.5) groups.splice(int(groups.length + 1), 0, ""); // "::" somewhere
    let s = groups.join(":").replace(/:{3,}/, "::");
    if (s.startsWith(":") && !s.startsWith("::")) s = `:${s}`;
    if (s.endsWith(":") && !s.endsWith("::")) s = `${s}:`;
    return next() < 0.15 ? `${s}:${ipv4()}` : s;
  };
  const noise = () => {
    let s = "";
    for (let n = int(12); n > 0; n--) s += "0123456789abcdef.:"[int(18)];
    return s;
  };
  const names = [
    "",
    "0",
    "00",
    "1",
    "01",
    "::",
    "::1",
    "::ffff:127.0.0.1",
    "fe80::1",
    "fe80::a",
    "10.0.0.9",
    "10.0.0.10",
    "10.0.0.010",
    "9".repeat(300), // longer than one ICU number weight: the collator decides
    `1.${"0".repeat(260)}2`,
    `1${"0".repeat(260)}`, // ICU splits it after 254 digits: before 2 and 259 zeros
    `2${"0".repeat(259)}`,
    "10.0.0.1%eth0", // not an address of the covered alphabet
    "A::1",
  ];
  for (let i = 0; i < 500; i++) names.push(ipv4(3 + int(3)), ipv6(), noise());
  // Neighbours: one part changed, so that many pairs share all but a number.
  for (let i = 0; i < 200; i++) names.push(`127.0.${octet()}.${octet()}`, `fd00::${hexGroup()}`);
  let checked = 0;
  for (const a of names) {
    for (const b of names) {
      const got = Math.sign(compareAddresses(a, b));
      const want = Math.sign(numeric(a, b));
      if (got !== want) {
        assert.fail(`compareAddresses("${a}", "${b}") is ${got}, numeric collation ${want}`);
      }
      checked++;
    }
  }
  assert.equal(checked, names.length ** 2);
});
