import type { MeshDnsEntry } from "../dns/mod.ts";
import { ConfigStoreError, readStateFile, writeFileAtomic } from "./config_store.ts";

/** The format tag of the saved names; a new layout gets a new tag. */
export const ZONE_STORE_FORMAT = "meshd.dns/v1";

/**
 * The mesh DNS names this node answered last, on disk beside the saved config: the names come
 * from the shadow Services' addresses in the API, so a node restarted while the API server is
 * unreachable would otherwise route `<svc>.<ns>.mesh` connections it could no longer resolve.
 * Saves are atomic ({@linkcode writeFileAtomic}) and coalesced: while one is on its way, only
 * the newest of the names given meanwhile is written after it.
 */
export class ZoneStore {
  readonly path: string;
  #pending: MeshDnsEntry[] | null = null;
  #writing: Promise<void> | null = null;
  #onError: (e: Error) => void;

  constructor(path: string, onError: (e: Error) => void = () => {}) {
    this.path = path;
    this.#onError = onError;
  }

  /** Saves `entries` in the background; failures go to the `onError` given. */
  save(entries: Iterable<MeshDnsEntry>): void {
    this.#pending = [...entries];
    if (!this.#writing) this.#writing = this.#drain();
  }

  /** Resolves once every save asked for so far is on disk (or failed). */
  async flush(): Promise<void> {
    while (this.#writing) await this.#writing;
  }

  async #drain(): Promise<void> {
    try {
      while (this.#pending) {
        const entries = this.#pending;
        this.#pending = null;
        const text = JSON.stringify({ format: ZONE_STORE_FORMAT, entries }) + "\n";
        await writeFileAtomic(this.path, text).catch((e) =>
          this.#onError(
            new ConfigStoreError(
              `Cannot save the DNS names to "${this.path}": ${(e as Error).message}`,
              { cause: e },
            ),
          )
        );
      }
    } finally {
      this.#writing = null;
    }
  }

  /** The saved names, or null when none were saved; throws ConfigStoreError when unusable. */
  async load(): Promise<MeshDnsEntry[] | null> {
    const parsed = await readStateFile(this.path, "the saved DNS names", ZONE_STORE_FORMAT);
    if (!parsed) return null;
    const strings = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === "string");
    const entries = parsed["entries"];
    if (
      !Array.isArray(entries) ||
      !entries.every((e) =>
        e && typeof e.namespace === "string" && typeof e.name === "string" &&
        strings(e.ipv4) && strings(e.ipv6)
      )
    ) {
      throw new ConfigStoreError(
        `Cannot use the saved DNS names "${this.path}": entries are not mesh DNS entries`,
      );
    }
    return entries as MeshDnsEntry[];
  }
}
