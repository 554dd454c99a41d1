/**
 * The entry of one proxy worker (a Deno Worker, `meshd run --workers N`): a
 * {@linkcode NodeProxy} of its own, bound with SO_REUSEPORT beside the other workers', driven by
 * {@linkcode ProxyPool} over messages. It applies its share of each config the main isolate
 * compiled (see {@linkcode workerShare}), answers for its metrics, and reports its listeners.
 *
 * @module
 */
import { Logger } from "../observability/mod.ts";
import { NodeProxy } from "./node_proxy.ts";
import { useFdLedger } from "../engine/fd_ledger.ts";
import { libcNet } from "../../ffi/libc_net.ts";
import { type OwnPorts, siblingPorts, workerShare, type WorkerSlot } from "./worker_share.ts";
import type { ToWorker, WorkerState } from "./proxy_pool.ts";

// deno-lint-ignore no-explicit-any
const scope = self as any as {
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
  postMessage(m: unknown): void;
};

let proxy: NodeProxy | null = null;
let slot: WorkerSlot = { index: 0, count: 1 };
let udpWaitMs = 5_000;
/** Applies run one at a time, in the order they came. */
let chain: Promise<unknown> = Promise.resolve();
let lastState = "";
/** This meshd's ports that proxies of other roles serve (see {@linkcode siblingPorts}). */
let siblings: OwnPorts = { tcp: new Set(), udp: new Set() };
let httpPort = 0;

function state(): WorkerState {
  const p = proxy!;
  return {
    version: p.version,
    httpAddress: p.httpAddress,
    listening: p.listening(),
    bindErrors: p.bindErrors(),
    inFlight: p.inFlight,
    udpAwaiting: p.udpAwaitingAnswer(udpWaitMs),
  };
}

/**
 * The state to send the pool, remembered as the last one it got: a report sends only what
 * differs from whatever went last, reply or report (one that differed from the last report
 * alone could leave the pool with a reply's older figures).
 */
function sent(): WorkerState {
  const s = state();
  lastState = JSON.stringify(s);
  return s;
}

/** Tells the pool what changed: listeners bound on a retry, connections opened or closed. */
function report(): void {
  if (!proxy) return;
  const s = state();
  const text = JSON.stringify(s);
  if (text === lastState) return;
  lastState = text;
  scope.postMessage({ t: "state", state: s });
}

/**
 * An error nothing caught: the pool is told, and ends this worker, logs it in one line and
 * starts it again. Prevented here, so Deno does not print it on meshd's stderr as well, with its
 * stack in lines of its own (in colour): the pool's handler runs only after Deno printed it.
 */
function fatal(e: Event, what: string, error: unknown): void {
  e.preventDefault();
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  scope.postMessage({ t: "fatal", message: `${what} ${text}` });
}
self.addEventListener("error", (e) => fatal(e, "Uncaught", (e as ErrorEvent).error));
self.addEventListener(
  "unhandledrejection",
  (e) => fatal(e, "Uncaught (in promise)", (e as PromiseRejectionEvent).reason),
);

scope.onmessage = (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  const reply = (body: Record<string, unknown>) => scope.postMessage({ id: m.id, ...body });
  const fail = (err: unknown) =>
    reply({ t: "error", message: err instanceof Error ? err.message : String(err) });
  switch (m.t) {
    case "start": {
      slot = { index: m.index, count: m.count, role: m.role };
      if (m.fdLedger) useFdLedger(m.fdLedger);
      udpWaitMs = m.udpWaitMs;
      const logger = new Logger({ level: m.log.level, format: m.log.format })
        .with({ room: "proxy", worker: m.index });
      // start() can throw before its first await (a port in use): that is the pool's refused
      // start, answered as such, not an uncaught error that prints the worker's stack.
      const starting = Promise.resolve().then(() => {
        httpPort = m.options.httpPort;
        proxy = new NodeProxy({ ...m.options, logger, siblingPorts: () => siblings });
        return proxy.start();
      });
      // What comes while it starts (a config the pool applies while it starts this worker
      // again) waits for the start: an apply before it bound the L4 worker's ports on Deno's
      // I/O, the engine not loaded yet; a failed start fails them too.
      chain = starting;
      starting.then(() => {
        // The L4 worker's thread: the pool closes its engine's descriptors once it has ended.
        reply({ t: "ok", state: sent(), ...(m.fdLedger ? { tid: libcNet().call.gettid() } : {}) });
        // Bind retries and connection counts change with no message in: report them.
        setInterval(report, 100);
      }, fail);
      return;
    }
    case "apply":
      chain = chain.then(() => {
        siblings = siblingPorts(m.config, slot.role ?? "all", httpPort);
        return proxy!.apply(workerShare(m.config, slot));
      }).then(
        () => reply({ t: "ok", state: sent() }),
        fail,
      );
      return;
    case "metrics":
      reply({ t: "ok", metrics: proxy?.registry.snapshot() ?? [] });
      return;
    case "drain":
      chain = chain.then(() => proxy!.drain()).then(() => reply({ t: "ok", state: sent() }), fail);
      return;
    case "stop":
      // After a start or apply under way: stopped before, the engine it went on to make stayed.
      chain.catch(() => {}).then(() => proxy?.stop()).then(() => reply({ t: "ok" }), fail);
      return;
    case "ping":
      reply({ t: "ok" });
      return;
  }
};
