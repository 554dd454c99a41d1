import type { Logger } from "../observability/mod.ts";
import { type LoadResult, ObjectLoader, type SourceFile } from "./object_loader.ts";

/** Options for {@linkcode FileProvider}. */
export interface FileProviderOptions {
  /** The directory to read, recursively. */
  dir: string;
  logger: Logger;
  /** Called with every load, the first one included. */
  onLoad: (result: LoadResult) => void | Promise<void>;
  /** How long to wait for a burst of file events to settle. Default 100 ms. */
  debounceMs?: number;
}

const EXTENSIONS = [".yaml", ".yml", ".json"];

/**
 * The embedded provider: Kubernetes-style objects from `*.yaml`, `*.yml` and `*.json` files
 * under a directory, reloaded when the directory changes. Bad files are reported and the
 * last good objects stay in force (see {@linkcode ObjectLoader}).
 *
 * @example
 * ```ts
 * const p = new FileProvider({ dir: "./config", logger, onLoad: (r) => apply(r.objects) });
 * await p.start();
 * ```
 */
export class FileProvider {
  readonly #opts: FileProviderOptions;
  readonly #loader = new ObjectLoader();
  #watcher: Deno.FsWatcher | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #loading: Promise<void> = Promise.resolve();
  #again = false;
  #watchDone: Promise<void> = Promise.resolve();

  constructor(options: FileProviderOptions) {
    this.#opts = options;
  }

  /** Reads the directory once, then watches it. Throws if the directory cannot be read. */
  async start(): Promise<void> {
    const stat = await Deno.stat(this.#opts.dir).catch((e) => {
      throw new Deno.errors.NotFound(
        `Cannot read config directory "${this.#opts.dir}": ${(e as Error).message}`,
      );
    });
    if (!stat.isDirectory) {
      throw new Error(`Cannot use "${this.#opts.dir}" as config directory: not a directory`);
    }
    // Watch before the first read, so a change made during that read is not missed.
    this.#watcher = Deno.watchFs(this.#opts.dir, { recursive: true });
    this.#watchDone = this.#watch(this.#watcher);
    await this.reload();
  }

  /** Reads every file again and reports the result. Concurrent calls are coalesced. */
  reload(): Promise<void> {
    if (this.#again) return this.#loading;
    this.#again = true;
    this.#loading = this.#loading.then(async () => {
      this.#again = false;
      const files = await readConfigFiles(this.#opts.dir, this.#opts.logger);
      await this.#opts.onLoad(this.#loader.load(files));
    });
    return this.#loading;
  }

  /** Stops watching. */
  async stop(): Promise<void> {
    clearTimeout(this.#timer);
    this.#watcher?.close();
    this.#watcher = null;
    await this.#watchDone;
    await this.#loading;
  }

  async #watch(watcher: Deno.FsWatcher): Promise<void> {
    try {
      for await (const ev of watcher) {
        if (ev.kind === "access") continue;
        clearTimeout(this.#timer);
        this.#timer = setTimeout(() => {
          this.reload().catch((e) =>
            this.#opts.logger.error("config reload failed", { error: String(e) })
          );
        }, this.#opts.debounceMs ?? 100);
      }
    } catch (e) {
      if (this.#watcher) {
        this.#opts.logger.error("config watch stopped", { dir: this.#opts.dir, error: String(e) });
      }
    }
  }
}

/**
 * Reads every config file under `dir`, recursively, in a stable order. Hidden files and
 * folders (editor swap files, the `..data` folders of a mounted ConfigMap) are skipped.
 */
export async function readConfigFiles(dir: string, logger?: Logger): Promise<SourceFile[]> {
  const out: SourceFile[] = [];
  const walk = async (d: string, rel: string): Promise<void> => {
    const entries: Deno.DirEntry[] = [];
    for await (const e of Deno.readDir(d)) entries.push(e);
    entries.sort((a, b) => a.name.localeCompare(b.name));
    for (const e of entries) {
      if (e.name.startsWith(".")) continue;
      const path = `${d}/${e.name}`;
      const relPath = rel ? `${rel}/${e.name}` : e.name;
      let isDir = e.isDirectory;
      let isFile = e.isFile;
      if (e.isSymlink) {
        const s = await Deno.stat(path).catch(() => null);
        isDir = s?.isDirectory ?? false;
        isFile = s?.isFile ?? false;
      }
      if (isDir) await walk(path, relPath);
      else if (isFile && EXTENSIONS.some((x) => e.name.endsWith(x))) {
        try {
          out.push({ path: relPath, text: await Deno.readTextFile(path) });
        } catch (err) {
          // Removed between listing and reading: the next event reloads again.
          logger?.debug("config file vanished while reading", {
            file: relPath,
            error: String(err),
          });
        }
      }
    }
  };
  await walk(dir.replace(/\/+$/, "") || "/", "");
  return out;
}
