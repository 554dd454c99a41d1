import type { MeshEndpoint } from "../topology/mod.ts";

/**
 * Round-robin over the ready endpoints of each service port. The position is kept per port
 * across config versions, so a reload does not send the next requests back to the first
 * endpoint.
 */
export class RoundRobin {
  #next = new Map<string, number>();

  /** Picks the next ready endpoint of the port `key`, or `null` when none is ready. */
  pick(key: string, endpoints: readonly MeshEndpoint[]): MeshEndpoint | null {
    const ready = endpoints.filter((e) => e.ready);
    if (ready.length === 0) return null;
    const i = (this.#next.get(key) ?? 0) % ready.length;
    this.#next.set(key, i + 1);
    return ready[i]!;
  }

  /** Forgets ports that are gone. */
  retain(keys: Set<string>): void {
    for (const k of this.#next.keys()) if (!keys.has(k)) this.#next.delete(k);
  }
}
