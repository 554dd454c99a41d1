import { type Logger, Registry, renderSnapshots } from "../observability/mod.ts";
import type { FamilySnapshot } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import { defaultLimits, FALLBACK_FD_LIMIT, type ProxyLimits, readFdLimit } from "./limits.ts";
import type { BindError, ListenerState, NodeProxyOptions } from "./node_proxy.ts";
import { releaseColumn, sharedCountsBuffer } from "./shared_counts.ts";
import { AF_UNIX, libcNet, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK } from "../../ffi/libc_net.ts";

/**
 * The node proxy options a worker can be given: plain data, no logger, registry or seam. (The
 * pool sets `sharedCaps` itself.)
 */
export type WorkerProxyOptions = Omit<
  NodeProxyOptions,
  "logger" | "registry" | "connect" | "random" | "accessLogWrite" | "siblingPorts"
>;

/** Options for {@linkcode ProxyPool}. */
export interface ProxyPoolOptions {
  /**
   * Proxy workers, 2 or more; with `l4Worker`, HTTP workers, 0 or more (0: HTTP is served
   * elsewhere, by a {@linkcode SplitPlane}'s proxy in the main isolate).
   */
  workers: number;
  /**
   * One more worker serves every TCP and UDP service port on meshd's own event loop
   * (`--l4-worker`); the `workers` others serve HTTP alone.
   */
  l4Worker?: boolean;
  /** What each worker's proxy is made with. Listeners are always bound with SO_REUSEPORT. */
  proxy: WorkerProxyOptions;
  logger: Logger;
  /**
   * The window {@linkcode ProxyPool.udpAwaitingAnswer} counts UDP flows in (workers report it
   * for this window alone). Default 5 s.
   */
  udpWaitMs?: number;
  /** The worker's module; a test seam. Default `proxy_worker.ts` beside this file. */
  entry?: URL;
  /**
   * A worker that has not answered a message within this time is taken for dead: ended and
   * started again (a busy loop would otherwise hold up every config and /metrics). Default 30 s.
   */
  callTimeoutMs?: number;
  /**
   * Each running worker is asked to answer this often, so that one whose loop is stuck is
   * found (after `callTimeoutMs`) and started again even when no config or /metrics call
   * comes: a stuck L4 worker would otherwise hold the node's TCP and UDP ports unserved while
   * the probes, answered by the main thread, pass. Default 5 s.
   */
  pingEveryMs?: number;
  /** Where the pool's own metrics go, and what `/metrics` renders first; a new one if absent. */
  registry?: Registry;
  /**
   * The connection counts the workers share (see `shared_counts.ts`), when an isolate outside
   * the pool counts in them too (a {@linkcode SplitPlane}'s): the workers count in
   * {@linkcode poolColumns} columns from `firstColumn` on. Made by the pool when absent.
   */
  sharedCaps?: { buffer: SharedArrayBuffer; firstColumn: number };
}

/**
 * The columns of shared connection counts a pool of `workers` (and an L4 worker with
 * `l4Worker`) counts in: two per worker, one for each start in turn, so that a worker started
 * again counts apart from the dead one, whose column is cleared as it dies and again before
 * its next use (a thread ended in a call may still count once as it stops).
 */
export function poolColumns(workers: number, l4Worker = false): number {
  return 2 * (workers + (l4Worker ? 1 : 0));
}

/** A message to a proxy worker. */
export type ToWorker = WorkerRequest & { id: number };

/** A message to a proxy worker, before its id. */
export type WorkerRequest =
  | {
    t: "start";
    index: number;
    count: number;
    role: SlotRole;
    options: WorkerProxyOptions;
    log: { level: Logger["level"]; format: Logger["format"] };
    udpWaitMs: number;
    /** The L4 worker's: where its engine marks the descriptors it holds (see fd_ledger.ts). */
    fdLedger?: SharedArrayBuffer;
  }
  | { t: "apply"; config: MeshConfig }
  | { t: "metrics" }
  | { t: "drain" }
  | { t: "stop" }
  | { t: "ping" };

/** What a worker reports of its proxy. */
export interface WorkerState {
  version: number;
  httpAddress: string;
  listening: { tcp: number[]; udp: number[] };
  bindErrors: BindError[];
  inFlight: number;
  udpAwaiting: number;
}

interface Reply {
  id?: number;
  /** `fatal`: an error nothing caught in the worker (`message`); it is taken for dead. */
  t: "ok" | "error" | "state" | "fatal";
  message?: string;
  state?: WorkerState;
  metrics?: FamilySnapshot[];
  /** An L4 worker's answer to `start`: its thread's id. */
  tid?: number;
}

/** What a worker serves: see {@linkcode WorkerSlot.role}. */
export type SlotRole = "all" | "http" | "l4";

interface Slot {
  index: number;
  role: SlotRole;
  worker: Worker | null;
  state: WorkerState | null;
  pending: Map<
    number,
    {
      resolve: (r: Reply) => void;
      reject: (e: Error) => void;
      timer: ReturnType<typeof setTimeout>;
    }
  >;
  /** When it last died, and how many times in a row it died soon after a start. */
  failures: number;
  startedAt: number;
  /** Its metrics as last reported, kept when it dies. */
  reported: FamilySnapshot[] | null;
  /** The L4 worker's descriptors, by number (its engine opens them outside Deno's resources). */
  fdLedger: SharedArrayBuffer | null;
  /** The L4 worker's thread id (from its start), or null. */
  tid: number | null;
  /** A liveness ping is waiting for its answer. */
  pinging: boolean;
  /** Starts so far: the column of shared counts it counts in alternates between two. */
  starts: number;
  /** The column of shared counts of its current (or last) start. */
  column: number;
}

/** Summed series by family name, then by labels. */
type Retired = Map<string, { f: FamilySnapshot; series: Map<string, FamilySnapshot["series"][0]> }>;

/**
 * Adds the counters and histograms of `set` (a dead worker's last report) to `into`; gauges and
 * states are what is open now, so a dead worker's are dropped.
 */
function retire(into: Retired, set: readonly FamilySnapshot[]): void {
  for (const f of set) {
    if (f.type === "gauge" || f.merge === "max") continue;
    let have = into.get(f.name);
    if (!have) into.set(f.name, have = { f, series: new Map() });
    for (const [labels, value, buckets, sum] of f.series) {
      const s = have.series.get(labels);
      if (!s) {
        have.series.set(labels, [labels, value, buckets && [...buckets], sum]);
        continue;
      }
      s[1] += value;
      if (sum !== undefined) s[3] = (s[3] ?? 0) + sum;
      if (s[2] && buckets) { for (let i = 0; i < s[2].length; i++) s[2][i]! += buckets[i] ?? 0; }
    }
  }
}

/** The first wait before a dead worker is started again; it doubles up to 5 s. */
const RESTART_MIN_MS = 100;
const RESTART_MAX_MS = 5_000;
/** How long {@linkcode ProxyPool.stop} waits for the workers to close their connections. */
const STOP_WAIT_MS = 5_000;
/** A worker that lived this long before dying starts again at once. */
const HEALTHY_MS = 60_000;
/**
 * How long after ending a worker its descriptors are closed, or, while its thread still runs,
 * given up (see {@linkcode ProxyPool}'s `#closeLedger`).
 */
const DEAD_WORKER_CLOSE_MS = 100;
/** How often the numbers a dead worker's thread may still use are checked for its end. */
const DEAD_THREAD_POLL_MS = 1_000;

/**
 * The limits one of `n` workers of `role` gets: the connection caps are the process's, held
 * over the counts the workers share. The L4 worker holds every UDP flow. Otherwise the flows
 * in all and per source are divided among the workers (`ceil(limit / n)`); a port's cap is
 * not, as one worker alone binds each UDP port (see `workerShare`), bounded by that
 * worker's share of the flows in all. Pure.
 */
export function workerLimits(all: ProxyLimits, n: number, role: SlotRole): Partial<ProxyLimits> {
  const limits = {
    maxConnections: all.maxConnections,
    maxConnectionsPerSource: all.maxConnectionsPerSource,
  };
  if (role === "l4") {
    return {
      ...limits,
      maxUdpFlows: all.maxUdpFlows,
      maxUdpFlowsPerListener: all.maxUdpFlowsPerListener,
      maxUdpFlowsPerSource: all.maxUdpFlowsPerSource,
    };
  }
  const share = (v: number) => Math.max(1, Math.ceil(v / n));
  const maxUdpFlows = share(all.maxUdpFlows);
  return {
    ...limits,
    maxUdpFlows,
    maxUdpFlowsPerListener: Math.min(maxUdpFlows, all.maxUdpFlowsPerListener),
    maxUdpFlowsPerSource: share(all.maxUdpFlowsPerSource),
  };
}

/** A proxy worker failed to start or to apply a config. */
export class ProxyWorkerError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ProxyWorkerError";
  }
}

/** The L4 worker (`--l4-worker`) could not start: FFI not permitted, say. */
export class L4WorkerError extends ProxyWorkerError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "L4WorkerError";
  }
}

/**
 * The node proxy spread over several cores (`meshd run --workers N`): N Deno Workers, each with
 * a {@linkcode NodeProxy} of its own bound with SO_REUSEPORT on the same ports, so the kernel
 * spreads connections over them. The main isolate keeps the providers, distribution, DNS, API
 * and eBPF; it compiles each config once and this pool hands the same version to every worker.
 * It answers as one NodeProxy does: {@linkcode version} is a version every worker routes by,
 * {@linkcode apply} fails (and the workers that took the config go back) when one worker
 * fails, and {@linkcode metrics} sums the workers' series. A worker that dies is logged and
 * started again.
 *
 * @example
 * ```ts
 * const pool = new ProxyPool({ workers: 2, proxy: { hostname: "127.0.0.1", httpPort: 5000 }, logger });
 * await pool.start();
 * await pool.apply(config);
 * ```
 */
export class ProxyPool {
  readonly #opts: ProxyPoolOptions;
  readonly #slots: Slot[];
  readonly registry: Registry;
  readonly #restarts;
  #nextId = 1;
  #config: MeshConfig | null = null;
  #httpPort = 0;
  #stopping = false;
  #draining = false;
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();
  #pinger: ReturnType<typeof setInterval> | undefined;
  /**
   * The counters of workers that died, as they last reported them: a worker started again
   * counts from 0, and without these the sums /metrics shows would go back.
   */
  readonly #retired: Retired = new Map();
  /**
   * Ledgers of L4 workers ended whose descriptors are still to be closed, with their index and
   * thread id.
   */
  readonly #unclosed = new Map<SharedArrayBuffer, { index: number; tid: number | null }>();
  /** Descriptor numbers held for dead workers' threads that still run (see #closeLedger). */
  readonly #heldNumbers = new Set<number>();
  /** What those numbers point at meanwhile (a socket of no use), and its name in /proc. */
  #placeholder = -1;
  #placeholderLink = "";
  /** The process's caps. */
  readonly #limits: ProxyLimits;
  /** The connection counts every worker (and a SplitPlane's proxy) shares. */
  readonly #caps: { buffer: SharedArrayBuffer; firstColumn: number };

  constructor(options: ProxyPoolOptions) {
    // An L4 worker alone (0 HTTP workers) serves beside a proxy in the main isolate (SplitPlane).
    const least = options.l4Worker ? 0 : 2;
    if (!(Number.isSafeInteger(options.workers) && options.workers >= least)) {
      throw new RangeError(
        `A proxy pool takes ${least} ${options.l4Worker ? "HTTP " : ""}worker${
          least > 1 ? "s" : ""
        } or more, not ${options.workers}`,
      );
    }
    this.#opts = options;
    this.registry = options.registry ?? new Registry();
    const http: SlotRole = options.l4Worker ? "http" : "all";
    const roles: SlotRole[] = Array.from({ length: options.workers }, () => http);
    if (options.l4Worker) roles.push("l4");
    this.#slots = roles.map((role, index) => ({
      index,
      role,
      worker: null,
      state: null,
      pending: new Map(),
      failures: 0,
      startedAt: 0,
      reported: null,
      fdLedger: null,
      tid: null,
      pinging: false,
      starts: 0,
      column: 0,
    }));
    this.#limits = defaultLimits(readFdLimit() ?? FALLBACK_FD_LIMIT, options.proxy.limits);
    this.#caps = options.sharedCaps ?? {
      buffer: sharedCountsBuffer({
        max: this.#limits.maxConnections,
        perSource: this.#limits.maxConnectionsPerSource,
        columns: poolColumns(options.workers, options.l4Worker),
      }),
      firstColumn: 0,
    };
    this.registry.collect(
      "meshd_proxy_workers",
      "Proxy workers (--workers) running now.",
      [],
      () => [[[], this.#slots.filter((s) => s.state !== null).length]],
    );
    this.#restarts = this.registry.counter(
      "meshd_proxy_worker_restarts_total",
      "Proxy workers that died and were started again.",
    ).with();
  }

  #workerLimits(role: SlotRole): Partial<ProxyLimits> {
    return workerLimits(this.#limits, this.#slots.length, role);
  }

  /** Whether `slot`'s worker serves `protocol`'s ports. */
  #serves(slot: Slot, protocol: "http" | "tcp" | "udp"): boolean {
    return slot.role === "all" || (slot.role === "http") === (protocol === "http");
  }

  /**
   * Starts the workers: the first binds the HTTP entrypoint (port 0 picks one), the others
   * bind the same port. Throws if one cannot.
   */
  async start(): Promise<void> {
    const [first, ...rest] = this.#slots;
    // An L4 worker alone (beside an entrypoint of the main isolate's) is given that port.
    this.#httpPort = this.#opts.proxy.httpPort;
    if (first!.role === "l4") rest.unshift(first!);
    else {
      await this.#startSlot(first!, this.#opts.proxy.httpPort);
      this.#httpPort = Number(first!.state!.httpAddress.split(":").pop());
    }
    await Promise.all(rest.map((s) =>
      this.#startSlot(s, this.#httpPort).catch((e) => {
        if (s.role !== "l4") throw e;
        throw new L4WorkerError(
          `--l4-worker cannot start its event loop: ${(e as Error).message}`,
          { cause: e },
        );
      })
    ));
    this.#opts.logger.info("proxy workers started", {
      workers: this.#slots.length,
      l4Worker: this.#opts.l4Worker ?? false,
    });
    this.#pinger = setInterval(() => this.#ping(), this.#opts.pingEveryMs ?? 5000);
    Deno.unrefTimer(this.#pinger); // never keeps the process alive on its own
  }

  /** Asks each running worker to answer; one that does not within the call timeout has died. */
  #ping(): void {
    for (const s of this.#slots) {
      if (s.worker === null || s.state === null || s.pinging) continue;
      s.pinging = true;
      this.#call(s, { t: "ping" }).catch(() => {}).finally(() => s.pinging = false);
    }
  }

  async #startSlot(slot: Slot, httpPort: number): Promise<void> {
    const entry = this.#opts.entry ?? new URL("./proxy_worker.ts", import.meta.url);
    const worker = new Worker(entry, { type: "module", name: `proxy-${slot.index}` });
    slot.worker = worker;
    slot.startedAt = Date.now();
    worker.onmessage = (e: MessageEvent<Reply>) =>
      e.data.t === "fatal"
        ? this.#died(slot, worker, e.data.message ?? "an uncaught error")
        : this.#received(slot, e.data);
    worker.onerror = (e: ErrorEvent) => {
      // Handled here: left alone, a worker's uncaught error would end the whole process.
      e.preventDefault();
      this.#died(slot, worker, e.message);
    };
    worker.onmessageerror = () => this.#died(slot, worker, "a message could not be read");
    const l4 = slot.role === "l4";
    // A ledger of its own per start: a dead worker's is closed while the next one runs.
    // Descriptors are numbered from the lowest free one: past 2^20, too many are open anyway.
    const fds = Math.min(readFdLimit() ?? FALLBACK_FD_LIMIT, 1 << 20);
    slot.fdLedger = l4 ? new SharedArrayBuffer(fds) : null;
    // Its column, cleared of whatever the start two before left (see poolColumns).
    slot.column = this.#caps.firstColumn + 2 * slot.index + (slot.starts++ & 1);
    releaseColumn(this.#caps.buffer, slot.column);
    const r = await this.#call(slot, {
      t: "start",
      index: slot.index,
      count: this.#opts.workers,
      role: slot.role,
      options: {
        ...this.#opts.proxy,
        httpPort,
        reusePort: true,
        limits: this.#workerLimits(slot.role),
        sharedCaps: { buffer: this.#caps.buffer, column: slot.column },
        ...(l4 ? { entrypoint: false, engine: true } : {}),
      },
      log: { level: this.#opts.logger.level, format: this.#opts.logger.format },
      udpWaitMs: this.#opts.udpWaitMs ?? 5_000,
      ...(slot.fdLedger ? { fdLedger: slot.fdLedger } : {}),
    });
    slot.state = r.state!;
    slot.tid = r.tid ?? null;
  }

  #received(slot: Slot, r: Reply): void {
    if (r.t === "state") {
      if (slot.state !== null) slot.state = r.state!;
      return;
    }
    const p = slot.pending.get(r.id!);
    if (!p) return;
    slot.pending.delete(r.id!);
    clearTimeout(p.timer);
    if (r.t === "ok") p.resolve(r);
    else p.reject(new ProxyWorkerError(r.message ?? "unknown error"));
  }

  #call(slot: Slot, msg: WorkerRequest): Promise<Reply> {
    const worker = slot.worker;
    if (!worker) {
      return Promise.reject(new ProxyWorkerError(`proxy worker ${slot.index} is not running`));
    }
    const id = this.#nextId++;
    const ms = this.#opts.callTimeoutMs ?? 30_000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this.#died(slot, worker, `it did not answer "${msg.t}" within ${ms} ms`),
        ms,
      );
      slot.pending.set(id, { resolve, reject, timer });
      worker.postMessage({ ...msg, id });
    });
  }

  /** A worker died: its calls fail, it is logged, and started again after a backoff. */
  #died(slot: Slot, worker: Worker, why: string): void {
    if (slot.worker !== worker) return;
    worker.terminate();
    if (slot.fdLedger) this.#closeHeld(slot.index, slot.tid, slot.fdLedger);
    // Its connections went with it: they no longer count against the caps.
    const connections = this.#giveBack(slot);
    slot.worker = null;
    slot.state = null;
    if (slot.reported) retire(this.#retired, slot.reported);
    slot.reported = null;
    for (const p of slot.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new ProxyWorkerError(`proxy worker ${slot.index} died: ${why}`));
    }
    slot.pending.clear();
    if (this.#stopping || this.#draining) {
      this.#opts.logger.error("proxy worker died", { worker: slot.index, error: why, connections });
      return;
    }
    slot.failures = Date.now() - slot.startedAt > HEALTHY_MS ? 0 : slot.failures + 1;
    const wait = slot.failures === 0
      ? 0
      : Math.min(RESTART_MIN_MS * 2 ** (slot.failures - 1), RESTART_MAX_MS);
    this.#opts.logger.error("proxy worker died; starting it again", {
      worker: slot.index,
      error: why,
      connections,
      restartInMs: wait,
    });
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      void this.#restart(slot);
    }, wait);
    this.#timers.add(timer);
  }

  /**
   * Takes a dead worker's connections off the shared counts, at once and again once its thread
   * has stopped (a call it was in may have counted one more); returns how many it held.
   */
  #giveBack(slot: Slot): number {
    const { buffer } = this.#caps;
    const column = slot.column;
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      // Unless a worker started again counts there already.
      if (slot.worker === null || slot.column !== column) releaseColumn(buffer, column);
    }, DEAD_WORKER_CLOSE_MS);
    this.#timers.add(timer);
    return releaseColumn(buffer, column);
  }

  /**
   * Closes the descriptors a dead L4 worker's engine held (Deno closes only its own resources):
   * its listening sockets would otherwise take their share of new connections and accept none.
   * Shortly after it was ended: a JavaScript call in flight (an FFI call) ends first. Until
   * then the ledger waits in `#unclosed`, which {@linkcode ProxyPool.stop} closes too.
   */
  #closeHeld(index: number, tid: number | null, ledger: SharedArrayBuffer): void {
    this.#unclosed.set(ledger, { index, tid });
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      void this.#closeLedger(ledger);
    }, DEAD_WORKER_CLOSE_MS);
    this.#timers.add(timer);
  }

  /**
   * Closes what `ledger` (one of `#unclosed`) lists, once; logs how many, or why it cannot.
   *
   * `Worker.terminate()` does not stop JavaScript that is running: a worker ended for not
   * answering (stuck in a long task) goes on with that task when it ends, and may read, write
   * or close the descriptor numbers it had. Closed, those numbers go to the next sockets the
   * process opens (another worker's connections), which that task would then use. So while its
   * thread runs, each number is pointed at an eventfd instead (`dup2`, which lets go of the
   * socket at once) and held until the thread has ended; `final` (the pool stopping) closes
   * them at once.
   */
  async #closeLedger(ledger: SharedArrayBuffer, final = false): Promise<void> {
    const dead = this.#unclosed.get(ledger);
    if (dead === undefined) return;
    this.#unclosed.delete(ledger);
    const { index, tid } = dead;
    try {
      const { closeHeld } = await import("../engine/fd_ledger.ts");
      const { call } = libcNet();
      if (final || threadEnded(tid)) {
        const n = closeHeld(ledger, (fd) => call.close(fd));
        this.#opts.logger.info("closed the sockets of a dead proxy worker", {
          worker: index,
          descriptors: n,
        });
        return;
      }
      if (this.#placeholder < 0) {
        // A socket of no use (unbound, nonblocking): every call the dead thread makes on it
        // fails or finds nothing. Its name in /proc tells a number still pointing at it.
        const fd = call.socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) throw new Error(`socket failed (errno ${libcNet().errno()})`);
        this.#placeholder = fd;
        this.#placeholderLink = Deno.readLinkSync(`/proc/self/fd/${fd}`);
      }
      const numbers: number[] = [];
      closeHeld(ledger, (fd) => {
        if (call.dup2(this.#placeholder, fd) >= 0) numbers.push(fd);
      });
      for (const fd of numbers) this.#heldNumbers.add(fd);
      this.#opts.logger.warn(
        "closed the sockets of a dead proxy worker; its thread still runs, so their numbers " +
          "are held until it ends",
        { worker: index, descriptors: numbers.length, thread: tid },
      );
      const poll = setInterval(() => {
        if (!threadEnded(tid) && !this.#stopping) return;
        clearInterval(poll);
        for (const fd of numbers) if (this.#heldNumbers.delete(fd)) this.#closeNumber(fd);
      }, DEAD_THREAD_POLL_MS);
      Deno.unrefTimer(poll);
    } catch (e) {
      this.#opts.logger.error("cannot close the sockets of a dead proxy worker", {
        worker: index,
        error: (e as Error).message,
      });
    }
  }

  /**
   * Closes a number held for a dead thread if it still points at the placeholder: the thread,
   * before it ended, may have closed it, and the process given the number to a socket since.
   */
  #closeNumber(fd: number): void {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${fd}`) !== this.#placeholderLink) return;
    } catch {
      return; // closed already
    }
    libcNet().call.close(fd);
  }

  async #restart(slot: Slot): Promise<void> {
    if (this.#stopping || this.#draining) return;
    try {
      await this.#startSlot(slot, this.#httpPort);
      // Counted once it runs: from here its state reports (version, listeners) reach the pool,
      // and may show it serving before the apply below has answered.
      this.#restarts.inc();
      const config = this.#config;
      if (config) await this.#call(slot, { t: "apply", config }).then((r) => slot.state = r.state!);
      this.#opts.logger.info("proxy worker started again", {
        worker: slot.index,
        version: slot.state?.version ?? 0,
      });
    } catch (e) {
      // Its error handler has scheduled the next try when it died; a refused start has not.
      if (slot.worker) this.#died(slot, slot.worker, (e as Error).message);
    }
  }

  /** `host:port` of the HTTP entrypoint. */
  get httpAddress(): string {
    return this.#slots[0]?.state?.httpAddress ?? "";
  }

  /** The version every worker routes by: the lowest of theirs; 0 while one is not running. */
  get version(): number {
    let v = Infinity;
    for (const s of this.#slots) v = Math.min(v, s.state?.version ?? 0);
    return v === Infinity ? 0 : v;
  }

  /**
   * Moves every worker to `config`, the same version for all. If one fails, those that took
   * it go back to the config before, and this throws: the node keeps the old version, as a
   * single proxy does.
   */
  async apply(config: MeshConfig): Promise<void> {
    const live = this.#slots.filter((s) => s.worker !== null);
    const results = await Promise.allSettled(
      live.map((s) => this.#call(s, { t: "apply", config }).then((r) => s.state = r.state!)),
    );
    const failed = results.findIndex((r) => r.status === "rejected");
    if (failed >= 0) {
      const cause = (results[failed] as PromiseRejectedResult).reason as Error;
      const previous = this.#config;
      const back = live.filter((_, i) => results[i]!.status === "fulfilled");
      if (previous) {
        await Promise.allSettled(
          back.map((s) =>
            this.#call(s, { t: "apply", config: previous }).then((r) => s.state = r.state!)
          ),
        );
      }
      throw new ProxyWorkerError(
        `Cannot apply config version ${config.version} in proxy worker ${
          live[failed]!.index
        }: ${cause.message}; every worker keeps version ${previous?.version ?? 0}`,
        { cause },
      );
    }
    this.#config = config;
    // A worker started again while this went on got the config before: bring it up to date.
    await Promise.allSettled(
      this.#slots.filter((s) => s.worker !== null && !live.includes(s)).map((s) =>
        this.#call(s, { t: "apply", config }).then((r) => s.state = r.state!)
      ),
    );
  }

  /** Where a client reaches a service port, and whether every worker that should serves it. */
  listener(protocol: string, listenPort: number | null): ListenerState {
    const serving = (p: "http" | "tcp" | "udp") =>
      this.#slots.filter((s) => this.#serves(s, p)).map((s) => s.state);
    if (protocol === "http") {
      return { address: this.httpAddress, served: serving("http").every((s) => s !== null) };
    }
    const address = `${this.#opts.proxy.hostname}:${listenPort}`;
    const udp = protocol === "udp";
    const states = serving(udp ? "udp" : "tcp");
    const holds = (s: WorkerState | null) =>
      s !== null && listenPort !== null && (udp ? s.listening.udp : s.listening.tcp)
        .includes(listenPort);
    // Every worker binds a TCP port; a UDP port is bound by one worker (see workerShare).
    if (udp ? states.some(holds) : states.every(holds)) return { address, served: true };
    const reason = this.bindErrors().find((e) => e.protocol === protocol && e.address === address)
      ?.error;
    return {
      address,
      served: false,
      reason: reason ??
        (states.some((s) => s === null) ? "a proxy worker is starting" : "not bound"),
    };
  }

  /** Service ports some worker could not bind; each is retried there. */
  bindErrors(): BindError[] {
    const out = new Map<string, BindError>();
    for (const s of this.#slots) {
      for (const e of s.state?.bindErrors ?? []) {
        const key = `${e.protocol} ${e.address}`;
        const had = out.get(key);
        if (!had || had.attempts < e.attempts) out.set(key, e);
      }
    }
    return [...out.values()];
  }

  /**
   * The ports bound now, and how many sockets this process holds on each (one per worker that
   * binds it), so a handover knows a successor by more sockets than that.
   */
  listening(): {
    tcp: number[];
    udp: number[];
    own: { tcp: Map<number, number>; udp: Map<number, number> };
  } {
    const own = { tcp: new Map<number, number>(), udp: new Map<number, number>() };
    for (const s of this.#slots) {
      for (const p of s.state?.listening.tcp ?? []) own.tcp.set(p, (own.tcp.get(p) ?? 0) + 1);
      for (const p of s.state?.listening.udp ?? []) own.udp.set(p, (own.udp.get(p) ?? 0) + 1);
    }
    return { tcp: [...own.tcp.keys()], udp: [...own.udp.keys()], own };
  }

  /** Client connections open over every worker, as last reported (every 100 ms at most). */
  get inFlight(): number {
    let n = 0;
    for (const s of this.#slots) n += s.state?.inFlight ?? 0;
    return n;
  }

  /**
   * UDP flows with a datagram unanswered within the `udpWaitMs` window given at construction
   * (the workers count for that window; `_ms` is taken to be it), as last reported.
   */
  udpAwaitingAnswer(_ms: number): number {
    let n = 0;
    for (const s of this.#slots) n += s.state?.udpAwaiting ?? 0;
    return n;
  }

  /**
   * `/metrics`: this pool's own families, then the workers' summed over the workers, with the
   * counters of workers that died as they last reported them (so no sum goes back).
   */
  async metrics(): Promise<string> {
    const sets = await this.workerMetrics();
    return this.registry.render() + renderSnapshots(sets);
  }

  /** The workers' series, one set per worker, and the counters of those that died. */
  async workerMetrics(): Promise<FamilySnapshot[][]> {
    const sets = await Promise.allSettled(
      this.#slots.filter((s) => s.worker !== null).map((s) =>
        this.#call(s, { t: "metrics" }).then((r) => s.reported = r.metrics ?? [])
      ),
    );
    const retired: FamilySnapshot[] = [];
    for (const { f, series } of this.#retired.values()) {
      retired.push({ ...f, series: [...series.values()] });
    }
    return [...sets.filter((r) => r.status === "fulfilled").map((r) => r.value), retired];
  }

  /** Every worker stops accepting, as {@linkcode NodeProxy.drain}; no worker is restarted. */
  async drain(): Promise<void> {
    this.#draining = true;
    await Promise.allSettled(
      this.#slots.filter((s) => s.worker !== null).map((s) =>
        this.#call(s, { t: "drain" }).then((r) => s.state = r.state!)
      ),
    );
  }

  /** Stops every worker's listeners and connections, then the workers. */
  async stop(): Promise<void> {
    this.#stopping = true;
    clearInterval(this.#pinger);
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    // A worker that does not answer in time (stuck in a loop, say) is ended all the same.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise((r) => timer = setTimeout(r, STOP_WAIT_MS));
    const stopped = new Set<Slot>();
    await Promise.race([
      late,
      Promise.allSettled(
        this.#slots.filter((s) => s.worker !== null).map((s) =>
          this.#call(s, { t: "stop" }).then(() => stopped.add(s))
        ),
      ),
    ]);
    clearTimeout(timer);
    for (const s of this.#slots) {
      s.worker?.terminate();
      // An L4 worker that did not stop its engine may hold its sockets still.
      if (s.worker && s.fdLedger && !stopped.has(s)) {
        this.#unclosed.set(s.fdLedger, { index: s.index, tid: s.tid });
      }
      s.worker = null;
      s.state = null;
      for (const p of s.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new ProxyWorkerError(`proxy worker ${s.index} was stopped`));
      }
      s.pending.clear();
    }
    // Dead L4 workers' sockets, their timers cleared above: closed once the threads stopped.
    if (this.#unclosed.size > 0) {
      await new Promise((r) => setTimeout(r, DEAD_WORKER_CLOSE_MS));
      await Promise.all([...this.#unclosed.keys()].map((l) => this.#closeLedger(l, true)));
    }
    if (this.#placeholder >= 0) {
      for (const fd of this.#heldNumbers) this.#closeNumber(fd);
      this.#heldNumbers.clear();
      libcNet().call.close(this.#placeholder);
      this.#placeholder = -1;
    }
  }
}

/**
 * Whether thread `tid` of this process has ended (no `/proc/self/task/TID`). An unknown thread
 * (null) counts as ended, as before thread ids were kept; so does one this process may not look
 * up (`/proc` not readable), which then behaves as before too.
 */
function threadEnded(tid: number | null): boolean {
  if (tid === null) return true;
  try {
    Deno.statSync(`/proc/self/task/${tid}`);
    return false;
  } catch (e) {
    return e instanceof Deno.errors.NotFound || e instanceof Deno.errors.PermissionDenied ||
      e instanceof Deno.errors.NotCapable;
  }
}
