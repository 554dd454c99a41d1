import type { Logger } from "../observability/mod.ts";
import type { LeaseHolder, RawObject } from "../kube/mod.ts";
import type { LeaderAddress } from "../distribution/mod.ts";

/** Annotations the leader writes on the Lease: where its config stream is, and its certificate. */
export const LEASE_ADDRESS_ANNOTATION = "meshd.io/distribution-address";
export const LEASE_CERT_ANNOTATION = "meshd.io/distribution-cert";

/** Options for {@linkcode LeaderLookup}. */
export interface LeaderLookupOptions {
  /** The Lease the controllers elect on, as the watch of it has it now (absent: none yet). */
  lease: () => RawObject | undefined;
  /** Reads the holder of a Lease (the kube room's `leaseHolderOf`). */
  holderOf: (lease: RawObject | undefined) => LeaseHolder | null;
  /** Told when the leader's address or certificate changed. */
  onChange: (leader: LeaderAddress | null) => void;
  logger: Logger;
}

/**
 * Who leads, from the watched Lease: its holder, and where its config stream is. Every node,
 * the leader's too, takes its config from whoever holds the Lease.
 *
 * @example
 * ```ts
 * const lookup = new LeaderLookup({ lease, holderOf: kube.leaseHolderOf, onChange, logger });
 * // on each change of the Lease's watch:
 * lookup.changed();
 * ```
 */
export class LeaderLookup {
  readonly #o: LeaderLookupOptions;
  #last = "";

  constructor(options: LeaderLookupOptions) {
    this.#o = options;
  }

  /** The Lease's holder now, or null. */
  holder(): LeaseHolder | null {
    return this.#o.holderOf(this.#o.lease());
  }

  /** Where the leader's config stream is, and its certificate; null while unknown. */
  address(): LeaderAddress | null {
    const h = this.holder();
    const address = h?.annotations[LEASE_ADDRESS_ANNOTATION];
    const certPem = h?.annotations[LEASE_CERT_ANNOTATION];
    return address && certPem ? { address, certPem } : null;
  }

  /** The Lease changed: says so, once per new leader address or certificate. */
  changed(): void {
    const now = this.address();
    const key = now ? `${now.address}|${now.certPem}` : "";
    if (key === this.#last) return;
    this.#last = key;
    this.#o.logger.info("leader found", {
      room: "node",
      leader: this.holder()?.identity ?? null,
      address: now?.address ?? null,
    });
    this.#o.onChange(now);
  }
}
