import type { Logger } from "../observability/mod.ts";
import type { MeshDnsEntry, MeshZone } from "../dns/mod.ts";
import type { ZoneStore } from "../node/mod.ts";

/** Options for {@linkcode DnsFeed}. */
export interface DnsFeedOptions {
  /** The names the responder answers; null when mesh DNS is off (`--dns-port 0`). */
  zone: MeshZone | null;
  /** Where the names are kept for the next start; null to keep nothing. */
  store: ZoneStore | null;
  /** The names of the shadow Services seen now. */
  names: () => MeshDnsEntry[];
  /** Given every new set of names (the eBPF path's addresses of each service). */
  onNames: (entries: readonly MeshDnsEntry[]) => void;
  /** Binds the responder, once; throws when it cannot. */
  startResponder: () => void;
  /** While this pod leads: it reconciles the shadow Services when they change. */
  isLeader: () => boolean;
  /** Reconciles the shadow Services with the config. */
  resync: () => void;
  logger: Logger;
  /** Runs `fn` after `ms`; a test seam (default `setTimeout`). */
  schedule?: (fn: () => void, ms: number) => Timer;
}

/** A task {@linkcode DnsFeedOptions.schedule} set. */
export interface Timer {
  cancel(): void;
}

function schedule(fn: () => void, ms: number): Timer {
  const id = setTimeout(fn, ms);
  return { cancel: () => clearTimeout(id) };
}

/** How long a burst of shadow Service changes is gathered before the zone is rebuilt. */
export const ZONE_BATCH_MS = 20;
/** How long a burst of shadow Service changes is gathered before the leader resyncs. */
export const RESYNC_BATCH_MS = 100;

/**
 * Feeds the mesh DNS from the shadow Services every node watches: the leader to reconcile them
 * without listing them all on each change, every node to answer DNS from them. A burst of
 * changes (thousands of shadows at start) rebuilds the zone once, and makes the leader look
 * once. The names are saved, so a node restarted while the API server is away still resolves
 * them.
 *
 * @example
 * ```ts
 * const feed = new DnsFeed({ zone, store, names, onNames, startResponder, isLeader, resync, logger });
 * await feed.restore();
 * // on each change of the shadow Services' watch:
 * feed.changed();
 * ```
 */
export class DnsFeed {
  readonly #o: DnsFeedOptions;
  #fed = false;
  readonly #schedule: (fn: () => void, ms: number) => Timer;
  #zoneTimer: Timer | undefined;
  #resyncTimer: Timer | undefined;

  constructor(options: DnsFeedOptions) {
    this.#o = options;
    this.#schedule = options.schedule ?? schedule;
  }

  /**
   * Loads the saved names, and binds the responder when there are any. It binds only once it
   * has names to give (saved ones, or the API's): bound earlier, it would answer NXDOMAIN for
   * every mesh name, and resolvers cache that. Until then the meshd it replaces (--reuse-port)
   * or no one answers, and clients try again. Throws when the responder cannot bind.
   */
  async restore(): Promise<void> {
    const { zone, store, logger } = this.#o;
    if (zone && store) {
      try {
        const saved = await store.load();
        if (saved) {
          zone.replace(saved);
          this.#o.onNames(saved);
          logger.info("DNS names restored", { from: "disk", names: saved.length });
        }
      } catch (e) {
        logger.warn("not using the saved DNS names", { error: (e as Error).message });
      }
    }
    if (zone && zone.size > 0) this.#o.startResponder();
  }

  /** The shadow Services changed: the zone is rebuilt soon, and the leader looks again. */
  changed(): void {
    this.#feedZone();
    // The leader reconciles from this watch: when the shadows change (its own writes
    // arriving, or someone else's edit), it looks again, so nothing waits for the next
    // config. A burst of changes makes one pass.
    if (this.#o.isLeader() && this.#resyncTimer === undefined) {
      this.#resyncTimer = this.#schedule(() => {
        this.#resyncTimer = undefined;
        this.#o.resync();
      }, RESYNC_BATCH_MS);
    }
  }

  /** Stops both timers and waits for the names to be saved. */
  async stop(): Promise<void> {
    this.#zoneTimer?.cancel();
    this.#resyncTimer?.cancel();
    this.#zoneTimer = this.#resyncTimer = undefined;
    await this.#o.store?.flush();
  }

  #feedZone(): void {
    const { zone, logger } = this.#o;
    if (!zone || this.#zoneTimer !== undefined) return;
    this.#zoneTimer = this.#schedule(() => {
      this.#zoneTimer = undefined;
      const entries = this.#o.names();
      zone.replace(entries);
      this.#o.onNames(entries);
      if (!this.#fed) logger.info("DNS names loaded", { from: "api", names: entries.length });
      this.#fed = true;
      try {
        this.#o.startResponder();
      } catch (e) {
        // Tried again on the next change of the shadow Services.
        logger.error((e as Error).message);
      }
      this.#o.store?.save(entries);
    }, this.#fed ? ZONE_BATCH_MS : 0);
  }
}
