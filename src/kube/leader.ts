import type { Logger } from "../observability/mod.ts";
import { type KubeApi, KubeApiError, type RawObject } from "./api.ts";

/** Options for {@linkcode LeaderElector}. */
export interface LeaderElectionOptions {
  api: KubeApi;
  logger: Logger;
  namespace: string;
  /** Name of the Lease. */
  name: string;
  /** Who this process is; unique among the candidates (the Pod name in a DaemonSet). */
  identity: string;
  /** How long others wait after the last renewal they saw before taking over. */
  leaseDurationMs: number;
  /** How long the leader keeps trying to renew before it stops leading. */
  renewDeadlineMs: number;
  /** How often candidates try to acquire, and the leader renews. */
  retryPeriodMs: number;
  /**
   * Annotations the leader sets on the Lease while it holds it, and removes when it gives it
   * up: how the other pods find and trust it.
   */
  annotations?: Record<string, string>;
  onStartedLeading?: () => void;
  onStoppedLeading?: () => void;
  /** Monotonic clock in ms; default `performance.now`. */
  now?: () => number;
}

/** Checks the timing options; returns a message for the first problem, or null. */
export function checkElectionTiming(
  o: Pick<LeaderElectionOptions, "leaseDurationMs" | "renewDeadlineMs" | "retryPeriodMs">,
): string | null {
  if (o.leaseDurationMs < 1000) return "the lease duration must be at least 1s";
  if (o.renewDeadlineMs >= o.leaseDurationMs) {
    return "the renew deadline must be shorter than the lease duration, or two could lead at once";
  }
  if (o.retryPeriodMs >= o.renewDeadlineMs) {
    return "the retry period must be shorter than the renew deadline";
  }
  if (o.retryPeriodMs <= 0) return "the retry period must be positive";
  return null;
}

/** RFC 3339 with microseconds, as the Lease's MicroTime fields want. */
function microTime(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
}

interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

/**
 * Leader election on a `coordination.k8s.io/v1` Lease, with the semantics of client-go's:
 * candidates take the Lease only after seeing it unchanged for a whole lease duration (timed on
 * their own monotonic clock, so clocks need not agree), and writes are guarded by the Lease's
 * resourceVersion, so two candidates can never both win. The leader counts itself leader only
 * until its last successful renewal (timed from when that request was sent) plus the renew
 * deadline, which is shorter than the lease duration: it stops acting before anyone else can
 * start. {@linkcode LeaderElector.stop} gives the Lease up at once.
 */
export class LeaderElector {
  readonly #o: LeaderElectionOptions;
  readonly #now: () => number;
  /** When the last successful acquire or renew request was sent; -Infinity when not leading. */
  #renewedAt = -Infinity;
  #leading = false;
  /** The Lease as last read, and when its content last changed on our clock. */
  #observed: { key: string; at: number } | null = null;
  #stopped = false;
  #wake: (() => void) | null = null;
  #loop: Promise<void> = Promise.resolve();
  #checkTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(options: LeaderElectionOptions) {
    const bad = checkElectionTiming(options);
    if (bad) throw new Error(`Leader election: ${bad}`);
    this.#o = options;
    this.#now = options.now ?? (() => performance.now());
  }

  /** True while this process may act as leader: its lease is held and fresh. */
  get isLeader(): boolean {
    return this.#leading && this.#now() < this.#renewedAt + this.#o.renewDeadlineMs;
  }

  get identity(): string {
    return this.#o.identity;
  }

  /** Starts campaigning in the background. */
  start(): void {
    this.#loop = this.#run();
  }

  /** Stops campaigning; a leader gives the Lease up so another takes over at once. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    await this.#loop;
    if (this.#leading) {
      this.#setLeading(false, "shutting down");
      await this.#release().catch((e) =>
        this.#o.logger.warn("could not release the lease", { error: String(e) })
      );
    }
  }

  async #run(): Promise<void> {
    const log = this.#o.logger;
    while (!this.#stopped) {
      const sentAt = this.#now();
      try {
        const won = await this.#tryAcquireOrRenew();
        if (won) {
          this.#renewedAt = sentAt;
          if (!this.#leading) this.#setLeading(true, "acquired the lease");
          this.#armCheck();
        }
      } catch (e) {
        log.warn("lease update failed", { lease: this.#leaseRef(), error: String(e) });
      }
      if (this.#leading && !this.isLeader) {
        this.#setLeading(false, "could not renew the lease before the renew deadline");
      }
      await this.#sleep(this.#o.retryPeriodMs);
    }
  }

  /** Stops leading the moment the renew deadline passes, even while a request hangs. */
  #armCheck(): void {
    clearTimeout(this.#checkTimer);
    const left = this.#renewedAt + this.#o.renewDeadlineMs - this.#now();
    this.#checkTimer = setTimeout(() => {
      if (this.#leading && !this.isLeader) {
        this.#setLeading(false, "could not renew the lease before the renew deadline");
      }
    }, Math.max(0, left) + 1);
  }

  #setLeading(on: boolean, why: string): void {
    if (this.#leading === on) return;
    this.#leading = on;
    if (!on) {
      this.#renewedAt = -Infinity;
      clearTimeout(this.#checkTimer);
    }
    this.#o.logger.info(on ? "started leading" : "stopped leading", {
      lease: this.#leaseRef(),
      identity: this.#o.identity,
      reason: why,
      // Wall-clock ms, so the leading intervals of several processes can be compared.
      at: Date.now(),
    });
    if (on) this.#o.onStartedLeading?.();
    else this.#o.onStoppedLeading?.();
  }

  #leaseRef(): string {
    return `${this.#o.namespace}/${this.#o.name}`;
  }

  #path(name = true): string {
    return `/apis/coordination.k8s.io/v1/namespaces/${this.#o.namespace}/leases` +
      (name ? `/${this.#o.name}` : "");
  }

  #spec(old: LeaseSpec | null, acquiring: boolean): LeaseSpec {
    const now = microTime(new Date());
    return {
      holderIdentity: this.#o.identity,
      leaseDurationSeconds: Math.ceil(this.#o.leaseDurationMs / 1000),
      acquireTime: acquiring ? now : old?.acquireTime ?? now,
      renewTime: now,
      leaseTransitions: (old?.leaseTransitions ?? 0) +
        (acquiring && old?.holderIdentity && old.holderIdentity !== this.#o.identity ? 1 : 0),
    };
  }

  async #tryAcquireOrRenew(): Promise<boolean> {
    const api = this.#o.api;
    let lease: RawObject;
    try {
      lease = await api.request("GET", this.#path(), undefined, {
        timeoutMs: this.#o.retryPeriodMs,
      });
    } catch (e) {
      if (!(e instanceof KubeApiError && e.status === 404)) throw e;
      try {
        await api.request("POST", this.#path(false), {
          apiVersion: "coordination.k8s.io/v1",
          kind: "Lease",
          metadata: {
            name: this.#o.name,
            namespace: this.#o.namespace,
            ...(this.#o.annotations ? { annotations: this.#o.annotations } : {}),
          },
          spec: this.#spec(null, true),
        }, { timeoutMs: this.#o.retryPeriodMs });
        return true;
      } catch (e2) {
        if (e2 instanceof KubeApiError && e2.status === 409) return false; // another was first
        throw e2;
      }
    }
    const spec = (lease["spec"] ?? {}) as LeaseSpec;
    const meta = lease["metadata"] as { resourceVersion: string };
    const key = `${spec.holderIdentity ?? ""}|${spec.renewTime ?? ""}|${meta.resourceVersion}`;
    if (this.#observed?.key !== key) this.#observed = { key, at: this.#now() };
    const holder = spec.holderIdentity ?? "";
    const mine = holder === this.#o.identity;
    if (!mine && holder !== "") {
      const durationMs = (spec.leaseDurationSeconds ?? 0) * 1000;
      const expired = this.#now() > this.#observed.at + durationMs;
      if (!expired) {
        if (this.#leading) this.#setLeading(false, `the lease is held by ${holder}`);
        return false;
      }
    }
    if (!mine && this.#leading) this.#setLeading(false, "the lease changed hands");
    try {
      await api.request("PUT", this.#path(), {
        ...lease,
        metadata: this.#annotate(lease, true),
        spec: this.#spec(spec, !mine),
      }, { timeoutMs: this.#o.retryPeriodMs });
      return true;
    } catch (e) {
      if (e instanceof KubeApiError && e.status === 409) return false; // someone wrote first
      throw e;
    }
  }

  async #release(): Promise<void> {
    const lease = await this.#o.api.request("GET", this.#path());
    const spec = (lease["spec"] ?? {}) as LeaseSpec;
    if (spec.holderIdentity !== this.#o.identity) return;
    await this.#o.api.request("PUT", this.#path(), {
      ...lease,
      metadata: this.#annotate(lease, false),
      spec: {
        ...spec,
        holderIdentity: "",
        leaseDurationSeconds: 1,
        renewTime: microTime(new Date()),
      },
    });
    this.#o.logger.info("released the lease", { lease: this.#leaseRef() });
  }

  /** The Lease's metadata with this process's annotations set, or removed. */
  #annotate(lease: RawObject, set: boolean): Record<string, unknown> {
    const meta = { ...(lease["metadata"] as Record<string, unknown>) };
    const mine = this.#o.annotations ?? {};
    const annotations = { ...(meta["annotations"] as Record<string, string> | undefined) };
    for (const [k, v] of Object.entries(mine)) {
      if (set) annotations[k] = v;
      else delete annotations[k];
    }
    meta["annotations"] = annotations;
    return meta;
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.#wake = null;
        resolve();
      }, ms);
      this.#wake = () => {
        clearTimeout(t);
        this.#wake = null;
        resolve();
      };
    });
  }
}

/** Who holds a Lease now, as the other pods see it. */
export interface LeaseHolder {
  /** The holder's identity. */
  identity: string;
  /** The Lease's annotations (the holder's address and certificate, for meshd). */
  annotations: Record<string, string>;
}

/** The holder of a Lease object, or null when nobody holds it. */
export function leaseHolderOf(lease: RawObject | undefined): LeaseHolder | null {
  if (!lease) return null;
  const identity = ((lease["spec"] ?? {}) as LeaseSpec).holderIdentity ?? "";
  if (!identity) return null;
  const meta = (lease["metadata"] ?? {}) as { annotations?: Record<string, string> };
  return { identity, annotations: { ...meta.annotations } };
}
