import type { Logger } from "../observability/mod.ts";
import { ConfigError, type LoadResult } from "../topology/mod.ts";
import { decodeDecodedFile, type DecodedFile, ObjectLoader } from "./object_loader.ts";
import { type ConfigLimits, DEFAULT_CONFIG_LIMITS } from "./config_limits.ts";
import type { ParseReply, ParseRequest } from "./parse_worker.ts";
import { folderId } from "./read_config_files.ts";

/** Options for {@linkcode FileProvider}. */
export interface FileProviderOptions {
  /** The directory to read, recursively. */
  dir: string;
  logger: Logger;
  /** Called with every load, the first one included. */
  onLoad: (result: LoadResult) => void | Promise<void>;
  /** Bounds on each file; a file past them is an error naming it. */
  limits?: ConfigLimits;
  /**
   * How long one read of the directory may take before the reading thread is stopped and the
   * file it was on is reported. Default 60 s.
   */
  readTimeoutMs?: number;
  /**
   * How often the directory's listing (names, sizes, times and inodes; no file is opened) is
   * compared with the one the last read started from. Default 250 ms. The directory is
   * polled, not watched: Deno's file watcher opens a FIFO created in the directory, blocks on
   * it for good, delivers no event again and keeps the process from exiting.
   */
  pollMs?: number;
  /**
   * How long a changed listing must hold still before it is read. Default 200 ms: an editor
   * or `kubectl` writing a file in several writes is not caught half-way, which would log an
   * error for a file that is fine a moment later. A directory that keeps changing is read
   * after {@linkcode MAX_SETTLE_MS} all the same.
   */
  settleMs?: number;
}

/** The longest a change waits for the directory to hold still. */
export const MAX_SETTLE_MS = 2_000;

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
  #worker: Worker | null = null;
  #requests = 0;
  #poller: ReturnType<typeof setInterval> | undefined;
  /** The listing the last read started from. */
  #seen = "";
  /** A listing that differs from `#seen`: when it was first seen, and since when it holds. */
  #pending: { listing: string; first: number; since: number } | null = null;
  #polling = false;
  /** Ends the read under way, if any. */
  #abort: (() => void) | undefined;
  #loading: Promise<void> = Promise.resolve();
  #again = false;

  constructor(options: FileProviderOptions) {
    this.#opts = options;
  }

  /** Reads the directory once, then polls it. Throws if the directory cannot be read. */
  async start(): Promise<void> {
    const stat = await Deno.stat(this.#opts.dir).catch((e) => {
      throw new Deno.errors.NotFound(
        `Cannot read config directory "${this.#opts.dir}": ${(e as Error).message}`,
      );
    });
    if (!stat.isDirectory) {
      throw new Error(`Cannot use "${this.#opts.dir}" as config directory: not a directory`);
    }
    await this.reload();
    this.#poller = setInterval(() => void this.#poll(), this.#opts.pollMs ?? 250);
  }

  async #poll(): Promise<void> {
    if (this.#polling || this.#again) return;
    this.#polling = true;
    try {
      const now = await listing(this.#opts.dir);
      if (now === this.#seen) {
        this.#pending = null;
        return;
      }
      // Changed. Read once it has held still for settleMs, so a file being written is read
      // whole; a listing that keeps changing is read after MAX_SETTLE_MS anyway.
      const t = Date.now();
      const p = this.#pending;
      if (p?.listing !== now) {
        this.#pending = { listing: now, first: p?.first ?? t, since: t };
        if (t - (p?.first ?? t) < MAX_SETTLE_MS) return;
      } else if (t - p.since < (this.#opts.settleMs ?? 200)) return;
      this.#pending = null;
      await this.reload();
    } catch (e) {
      this.#opts.logger.debug("cannot list the config directory", { error: String(e) });
    } finally {
      this.#polling = false;
    }
  }

  /** Reads every file again and reports the result. Concurrent calls are coalesced. */
  reload(): Promise<void> {
    if (this.#again) return this.#loading;
    this.#again = true;
    this.#loading = this.#loading.then(async () => {
      this.#again = false;
      let result: LoadResult;
      try {
        // Taken before the read: a change made during it shows at the next poll.
        this.#seen = await listing(this.#opts.dir).catch(() => "");
        const files = await this.#read().finally(() => {
          // A new thread for each read: the parser's heap (hundreds of MB for a large file)
          // goes back with it instead of staying in the process.
          this.#worker?.terminate();
          this.#worker = null;
        });
        result = this.#loader.merge(files);
      } catch (e) {
        result = this.#loader.keep(
          e instanceof ConfigError ? e : new ConfigError(String((e as Error)?.message ?? e)),
        );
      }
      await this.#opts.onLoad(result);
    }).catch((e) => {
      // Whatever failed, the next change must still be read: the chain never stays rejected.
      this.#opts.logger.error("config reload failed", { error: String(e) });
    });
    return this.#loading;
  }

  /** Stops polling, and the reading thread once the read under way is done. */
  async stop(): Promise<void> {
    clearInterval(this.#poller);
    this.#abort?.();
    await this.#loading;
    this.#worker?.terminate();
    this.#worker = null;
  }

  /**
   * One read of the directory on the reading thread. The serving thread only waits: parsing a
   * large file there would stop every answer. A read past the deadline stops the thread (a new
   * one starts next time) and fails naming the file it was on.
   */
  #read(): Promise<DecodedFile[]> {
    const worker = this.#worker ??= this.#spawn();
    const id = ++this.#requests;
    const timeoutMs = this.#opts.readTimeoutMs ?? 60_000;
    return new Promise<DecodedFile[]>((resolve, reject) => {
      let current: string | undefined;
      this.#abort = () => {
        done();
        restart();
        reject(new ConfigError("Stopped while reading the config directory"));
      };
      const done = (): void => {
        this.#abort = undefined;
        clearTimeout(timer);
        worker.removeEventListener("message", onMessage);
        worker.removeEventListener("error", onError);
      };
      const restart = (): void => {
        worker.terminate();
        if (this.#worker === worker) this.#worker = null;
      };
      const timer = setTimeout(() => {
        done();
        restart();
        const where = current ? `file "${current}"` : `directory "${this.#opts.dir}"`;
        reject(
          new ConfigError(
            `Cannot read ${where}: reading took longer than ${timeoutMs / 1000} s`,
            current ? { source: { file: current, doc: 0 } } : {},
          ),
        );
      }, timeoutMs);
      const onMessage = ({ data }: MessageEvent<ParseReply>): void => {
        if (data.id !== id) return;
        if (data.type === "file") {
          current = data.path;
          return;
        }
        done();
        if (data.type === "done") resolve(data.files.map(decodeDecodedFile));
        else {
          reject(
            new ConfigError(`Cannot read config directory "${this.#opts.dir}": ${data.message}`),
          );
        }
      };
      const onError = (e: ErrorEvent): void => {
        e.preventDefault();
        done();
        restart();
        const where = current ? ` at file "${current}"` : "";
        reject(
          new ConfigError(
            `Cannot read config directory "${this.#opts.dir}"${where}: ${e.message}`,
            {
              ...(current ? { source: { file: current, doc: 0 } } : {}),
            },
          ),
        );
      };
      worker.addEventListener("message", onMessage);
      worker.addEventListener("error", onError);
      worker.postMessage(
        {
          id,
          dir: this.#opts.dir,
          limits: this.#opts.limits ?? DEFAULT_CONFIG_LIMITS,
        } satisfies ParseRequest,
      );
    });
  }

  #spawn(): Worker {
    // The thread reads the config directory and nothing else; the YAML library reads two
    // variables of its own, when this process may. (deno.json enables the worker-options
    // feature this needs.)
    const env = ["LOG_TOKENS", "LOG_STREAM"].filter((variable) =>
      Deno.permissions.querySync({ name: "env", variable }).state === "granted"
    );
    return new Worker(new URL("./parse_worker.ts", import.meta.url), {
      type: "module",
      deno: {
        permissions: {
          read: [this.#opts.dir],
          env: env.length > 0 ? env : false,
          net: false,
          run: false,
          write: false,
          ffi: false,
          sys: false,
          import: false,
        },
      },
    } as WorkerOptions);
  }
}

/**
 * The directory's config files with their size, change time and inode, as one string: it
 * differs when a file was added, removed, replaced or written. Only `stat`, so a FIFO is never
 * opened.
 */
async function listing(dir: string): Promise<string> {
  const parts: string[] = [];
  // Each folder once, as readConfigFiles() reads them: a link to a folder above is no loop.
  const folders = new Set([folderId(await Deno.stat(dir))]);
  const walk = async (d: string): Promise<void> => {
    for await (const e of Deno.readDir(d)) {
      if (e.name.startsWith(".")) continue;
      const path = `${d}/${e.name}`;
      const info = await Deno.stat(path).catch(() => null);
      if (!info) continue;
      if (info.isDirectory) {
        if (!folders.has(folderId(info))) {
          folders.add(folderId(info));
          await walk(path);
        }
      } else {
        parts.push(
          `${path}:${info.size}:${info.mtime?.getTime()}:${info.ctime?.getTime()}:${info.ino}`,
        );
      }
    }
  };
  await walk(dir);
  return parts.sort().join("\n");
}
