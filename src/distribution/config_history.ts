import type { MeshConfig } from "../topology/mod.ts";
import { diffConfigs, type MeshDelta } from "./config_delta.ts";

/**
 * A config as it travels between leader and nodes: its version and the epoch it was made in.
 * Each leadership term has its own epoch, so two leaders' version 7 are never taken for one.
 */
export interface StampedConfig {
  epoch: string;
  config: MeshConfig;
}

/** Which config a node has: an epoch and a version. */
export interface ConfigRef {
  epoch: string;
  version: number;
}

/** What a node that applied some version needs next. */
export type ConfigUpdate =
  | { kind: "none" }
  | { kind: "delta"; epoch: string; delta: MeshDelta }
  | { kind: "snapshot"; epoch: string; config: MeshConfig };

const key = (epoch: string, version: number) => `${epoch}/${version}`;

/**
 * The leader's recent configs, so a node is sent a delta from the config it last applied when
 * the leader still has that config (same epoch and version), and the whole config when not (a
 * new node, one that fell too far behind, or one that applied a config the leader never had).
 * A new leader seeds it with the config its own node applied, so nodes that have it too get a
 * delta across the change of leader. Deltas are made once per starting config and shared by
 * every node that asks. Pure: no I/O, no clock.
 */
export class ConfigHistory {
  readonly limit: number;
  #configs = new Map<string, MeshConfig>();
  #deltas = new Map<string, MeshDelta>();
  #current: StampedConfig | null = null;

  /** Keeps the last `limit` versions (default 32). */
  constructor(limit = 32) {
    if (limit < 1) throw new RangeError(`ConfigHistory limit must be >= 1, not ${limit}`);
    this.limit = limit;
  }

  /** The newest config. */
  get current(): StampedConfig | null {
    return this.#current;
  }

  /** Adds a newer config; an older or equal version is refused, whatever its epoch. */
  push(config: MeshConfig, epoch: string): void {
    if (this.#current && config.version <= this.#current.config.version) {
      throw new RangeError(
        `Cannot add version ${config.version} after ${this.#current.config.version}: ` +
          "versions only grow",
      );
    }
    this.#current = { epoch, config };
    this.#configs.set(key(epoch, config.version), config);
    this.#deltas.clear(); // every delta ended at the old current
    while (this.#configs.size > this.limit) {
      this.#configs.delete(this.#configs.keys().next().value!);
    }
  }

  /** What a node that applied `applied` (null: nothing) needs to reach the current config. */
  updateFor(applied: ConfigRef | null): ConfigUpdate {
    const current = this.#current;
    if (!current) return { kind: "none" };
    if (applied?.epoch === current.epoch && applied.version === current.config.version) {
      return { kind: "none" };
    }
    const k = applied ? key(applied.epoch, applied.version) : "";
    const base = applied ? this.#configs.get(k) : undefined;
    if (!base || base === current.config) {
      return { kind: "snapshot", epoch: current.epoch, config: current.config };
    }
    let delta = this.#deltas.get(k);
    if (!delta) {
      delta = diffConfigs(base, current.config);
      this.#deltas.set(k, delta);
    }
    return { kind: "delta", epoch: current.epoch, delta };
  }
}
