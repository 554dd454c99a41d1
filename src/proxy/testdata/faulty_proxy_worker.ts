/**
 * The proxy worker, with faults for `proxy_pool_test.ts`: worker 1 refuses a config of version
 * 13, dies (an uncaught error) on version 66, and 1 s after it took version 77 its thread
 * gets stuck in a loop for good; everything else goes to the real worker.
 *
 * @module
 */
import "../proxy_worker.ts";

// deno-lint-ignore no-explicit-any
const scope = self as any as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
};
const real = scope.onmessage!;
let index = -1;
scope.onmessage = (e: MessageEvent) => {
  const m = e.data;
  if (m.t === "start") index = m.index;
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
