/**
 * The proxy worker, with faults for `proxy_pool_test.ts`: worker 1 refuses a config of version
 * 13, dies (an uncaught error) on version 66, and 1 s after it took version 77 its thread
 * gets stuck in a loop for good. 1 s after it took version 88 it is stuck for 12 s, then writes
 * `zombie\n` to every descriptor its engine held when it got stuck (as an engine ended for not
 * answering would use them if its task went on). Everything else goes to the real worker.
 *
 * @module
 */
import "../proxy_worker.ts";
import { libcNet } from "../../../ffi/libc_net.ts";

// deno-lint-ignore no-explicit-any
const scope = self as any as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
};
const real = scope.onmessage!;
let index = -1;
let ledger: Uint8Array | null = null;
let applies = 0;
scope.onmessage = (e: MessageEvent) => {
  const m = e.data;
  if (m.t === "start") {
    index = m.index;
    if (m.fdLedger) ledger = new Uint8Array(m.fdLedger);
  }
  if (m.t === "apply") applies++;
  // Not on a start again with version 88 in force: its first config.
  if (m.t === "apply" && index === 1 && m.config.version === 88 && applies > 1) {
    real(e);
    setTimeout(() => {
      const held = ledger ? [...ledger.keys()].filter((fd) => ledger![fd] === 1) : [];
      const until = Date.now() + 12_000;
      while (Date.now() < until) { /* stuck */ }
      const bytes = new TextEncoder().encode("zombie\n");
      for (const fd of held) libcNet().call.write(fd, bytes, BigInt(bytes.length));
    }, 1000);
    return;
  }
  if (m.t === "apply" && index === 1 && m.config.version === 13) {
    scope.postMessage({ id: m.id, t: "error", message: "refused by the test" });
    return;
  }
  if (m.t === "apply" && index === 1 && m.config.version === 66) {
    setTimeout(() => {
      throw new Error("crashed by the test");
    });
    return;
  }
  if (m.t === "apply" && index === 1 && m.config.version === 77) {
    real(e);
    setTimeout(() => {
      while (Date.now() > 0) { /* stuck */ }
    }, 1000);
    return;
  }
  real(e);
};
