import assert from "node:assert/strict";
import { sameJson } from "./same_json.ts";

const cases: { name: string; a: unknown; b: unknown; same: boolean }[] = [
  { name: "equal scalars", a: 1, b: 1, same: true },
  { name: "a number and its text", a: 1, b: "1", same: false },
  { name: "null and an object", a: null, b: {}, same: false },
  { name: "property order does not matter", a: { x: 1, y: 2 }, b: { y: 2, x: 1 }, same: true },
  { name: "an undefined property is absent", a: { x: 1, y: undefined }, b: { x: 1 }, same: true },
  { name: "a null property is not absent", a: { x: 1, y: null }, b: { x: 1 }, same: false },
  { name: "one more property", a: { x: 1 }, b: { x: 1, y: 2 }, same: false },
  { name: "array order matters", a: [1, 2], b: [2, 1], same: false },
  { name: "an array is not an object", a: [], b: {}, same: false },
  {
    name: "nested difference",
    a: { p: [{ e: "10.0.0.1" }] },
    b: { p: [{ e: "10.0.0.2" }] },
    same: false,
  },
  {
    name: "nested equal",
    a: { p: [{ e: "10.0.0.1" }] },
    b: { p: [{ e: "10.0.0.1" }] },
    same: true,
  },
];

for (const c of cases) {
  Deno.test(`sameJson() ${c.name}`, () => {
    assert.equal(sameJson(c.a, c.b), c.same);
  });
}
