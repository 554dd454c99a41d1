/**
 * A node's DistributionClient on its own thread, for tests that may leave its event loop
 * stuck: it says `beat` every 20 ms while its loop turns, and sends each log line it writes.
 *
 * @module
 */
import { DistributionClient } from "../distribution_client.ts";
import { Logger } from "../../observability/mod.ts";
import type { StampedConfig } from "../config_history.ts";

/** What the test sends, once. */
export interface SubscriberStart {
  address: string;
  certPem: string;
}

/** What the worker says. */
export type SubscriberEvent = { t: "beat" } | { t: "log"; line: string };

// Typed by hand: this file is checked with the main program, whose lib is not the worker's.
const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<SubscriberStart>) => void) | null;
  postMessage(m: SubscriberEvent): void;
};

scope.onmessage = ({ data }) => {
  scope.onmessage = null;
  setInterval(() => scope.postMessage({ t: "beat" }), 20);
  let current: StampedConfig | null = null;
  const client = new DistributionClient({
    node: "worker-node",
    leader: () => Promise.resolve({ address: data.address, certPem: data.certPem }),
    current: () => current,
    apply: (c) => {
      current = c;
      return Promise.resolve();
    },
    logger: new Logger({ level: "info", write: (line) => scope.postMessage({ t: "log", line }) }),
    backoffMs: { first: 20, max: 100 },
  });
  client.start();
};
