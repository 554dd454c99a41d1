import assert from "node:assert/strict";
import { closeHeld, held, released, useFdLedger } from "./fd_ledger.ts";

Deno.test("closeHeld closes what the ledger marks as held and not released, once", () => {
  const ledger = new SharedArrayBuffer(64);
  useFdLedger(ledger);
  held(5);
  held(9);
  held(12);
  released(9);
  held(200); // past the ledger's end: not recorded
  const closed: number[] = [];
  assert.equal(closeHeld(ledger, (fd) => closed.push(fd)), 2);
  assert.deepEqual(closed, [5, 12]);
  // Cleared: a second pass closes nothing (a number the process reuses is not closed again).
  assert.equal(closeHeld(ledger, (fd) => closed.push(fd)), 0);
  assert.deepEqual(closed, [5, 12]);
});
