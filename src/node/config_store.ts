import type { MeshConfig } from "../topology/mod.ts";

/** A config and the epoch it was made in (see the distribution room): what is saved. */
export interface AppliedConfig {
  epoch: string;
  config: MeshConfig;
}

/** A saved config that cannot be used, and why. */
export class ConfigStoreError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ConfigStoreError";
  }
}

/** The format tag of the saved file; a new layout gets a new tag. */
export const CONFIG_STORE_FORMAT = "meshd.config/v1";

/**
 * Replaces `path` with `text` so that a crash at any moment leaves either the old file or the
 * new one, whole: writes a temporary file beside it, syncs it, renames it over `path`, and
 * syncs the folder so the rename reaches the disk too. The temporary file is removed on failure.
 */
export async function writeFileAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  const data = new TextEncoder().encode(text);
  try {
    const f = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
    try {
      for (let off = 0; off < data.length;) off += await f.write(data.subarray(off));
      await f.sync();
    } finally {
      f.close();
    }
    await Deno.rename(tmp, path);
    const slash = path.lastIndexOf("/");
    const folder = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
    const dir = await Deno.open(folder, { read: true });
    try {
      await dir.sync();
    } finally {
      dir.close();
    }
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * The last applied MeshConfig on disk, so a restarted node routes before it reaches any
 * controller. Saves go through {@linkcode writeFileAtomic}.
 */
export class ConfigStore {
  readonly path: string;

  constructor(path: string) {
    this.path = path;
  }

  /** Saves `config` and its epoch, replacing what was saved. */
  async save({ epoch, config }: AppliedConfig): Promise<void> {
    const data = JSON.stringify({ format: CONFIG_STORE_FORMAT, epoch, config }) + "\n";
    try {
      await writeFileAtomic(this.path, data);
    } catch (e) {
      throw new ConfigStoreError(
        `Cannot save the config to "${this.path}": ${(e as Error).message}`,
        { cause: e },
      );
    }
  }

  /** The saved config, or null when none was saved. */
  async load(): Promise<AppliedConfig | null> {
    const parsed = await readStateFile(this.path, "the saved config", CONFIG_STORE_FORMAT);
    if (!parsed) return null;
    const c = parsed["config"] as Partial<MeshConfig> | undefined;
    if (
      !c || typeof c.version !== "number" || !Array.isArray(c.services) ||
      typeof c.domain !== "string" || typeof c.identities !== "object"
    ) {
      throw new ConfigStoreError(
        `Cannot use the saved config "${this.path}": it is not a MeshConfig`,
      );
    }
    const epoch = parsed["epoch"];
    return { epoch: typeof epoch === "string" ? epoch : "", config: c as MeshConfig };
  }
}

/**
 * Reads a state file meshd wrote: its JSON object, or null when there is none. Throws
 * {@linkcode ConfigStoreError} naming `what` when it cannot be read, is not JSON, or carries
 * another `format` tag than `format`.
 */
export async function readStateFile(
  path: string,
  what: string,
  format: string,
): Promise<Record<string, unknown> | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new ConfigStoreError(`Cannot read ${what} "${path}": ${(e as Error).message}`, {
      cause: e,
    });
  }
  let parsed: Record<string, unknown> | null;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new ConfigStoreError(
      `Cannot use ${what} "${path}": not JSON (${(e as Error).message})`,
    );
  }
  if (parsed?.["format"] !== format) {
    throw new ConfigStoreError(
      `Cannot use ${what} "${path}": format is ${
        JSON.stringify(parsed?.["format"])
      }, expected "${format}"`,
    );
  }
  return parsed;
}
