import type { MeshConfig } from "../topology/mod.ts";
import { diffConfigs, type MeshDelta } from "./config_delta.ts";

/** What a node that applied some version needs next. */
export type ConfigUpdate =
  | { kind: "none" }
  | { kind: "delta"; delta: MeshDelta }
  | { kind: "snapshot"; config: MeshConfig };

/**
 * The leader's recent configs, so a node is sent a delta from the version it last applied
 * when that version is still known, and the whole config when it is not (a new node, one that
 * fell too far behind, or one that applied a version of an earlier leader). Deltas are made
 * once per starting version and shared by every node that asks. Pure: no I/O, no clock.
 */
export class ConfigHistory {
  readonly limit: number;
  #configs = new Map<number, MeshConfig>();
  #deltas = new Map<number, MeshDelta>();
  #current: MeshConfig | null = null;

  /** Keeps the last `limit` versions (default 32). */
  constructor(limit = 32) {
    if (limit < 1) throw new RangeError(`ConfigHistory limit must be >= 1, not ${limit}`);
    this.limit = limit;
  }

  /** The newest config. */
  get current(): MeshConfig | null {
    return this.#current;
  }

  /** Adds a newer config; an older or equal version is refused. */
  push(config: MeshConfig): void {
    if (this.#current && config.version <= this.#current.version) {
      throw new RangeError(
        `Cannot add version ${config.version} after ${this.#current.version}: versions only grow`,
      );
    }
    this.#current = config;
    this.#configs.set(config.version, config);
    this.#deltas.clear(); // every delta ended at the old current
    while (this.#configs.size > this.limit) {
      this.#configs.delete(this.#configs.keys().next().value!);
    }
  }

  /** What a node that applied `applied` (null: nothing) needs to reach the current version. */
  updateFor(applied: number | null): ConfigUpdate {
    const current = this.#current;
    if (!current) return { kind: "none" };
    if (applied === current.version) return { kind: "none" };
    const base = applied === null ? undefined : this.#configs.get(applied);
    if (!base) return { kind: "snapshot", config: current };
    let delta = this.#deltas.get(applied!);
    if (!delta) {
      delta = diffConfigs(base, current);
      this.#deltas.set(applied!, delta);
    }
    return { kind: "delta", delta };
  }
}
