import { DEFAULT_CONFIG_LIMITS, type SourceFile } from "./config_limits.ts";
import { compareNames } from "../topology/mod.ts";

const EXTENSIONS = [".yaml", ".yml", ".json"];

/** A file found under the config directory: its text, why it could not be read, or skipped. */
export type FoundFile = SourceFile & {
  /** Not read, with no objects and no error: a FIFO, socket or device named `*.yaml`. */
  skipped?: string;
};

/** Options for {@linkcode readConfigFiles}. */
export interface ReadConfigFilesOptions {
  /** Larger files are not read: they come back with `error` set. Default 4 MiB. */
  maxFileBytes?: number;
  /** Called before each file is read, so a caller can name the file a read is stuck on. */
  onFile?: (path: string) => void;
}

/**
 * Reads every config file (`*.yaml`, `*.yml`, `*.json`) under `dir`, recursively, in a stable
 * order. Hidden files and folders (editor swap files, the `..data` folders of a mounted
 * ConfigMap) are left out. Only regular files are opened, so a FIFO named `x.yaml` never
 * blocks a read; a file too large, unreadable or not UTF-8 comes back with `error` set. Throws
 * only when `dir` itself cannot be listed.
 */
export async function readConfigFiles(
  dir: string,
  options: ReadConfigFilesOptions = {},
): Promise<FoundFile[]> {
  const max = options.maxFileBytes ?? DEFAULT_CONFIG_LIMITS.maxFileBytes;
  const out: FoundFile[] = [];
  const root = dir.replace(/\/+$/, "") || "/";
  // Folders already read, by device and inode: a symbolic link to a folder above (`ln -s .
  // loop`) made the walk read everything again at each of 40 levels, until the kernel's
  // ELOOP, and two such links failed the whole read.
  const folders = new Set([folderId(await Deno.stat(root))]);
  const walk = async (d: string, rel: string): Promise<void> => {
    const entries: Deno.DirEntry[] = [];
    for await (const e of Deno.readDir(d)) entries.push(e);
    entries.sort((a, b) => compareNames(a.name, b.name));
    for (const e of entries) {
      if (e.name.startsWith(".")) continue;
      const path = `${d}/${e.name}`;
      const relPath = rel ? `${rel}/${e.name}` : e.name;
      let info: Deno.FileInfo;
      try {
        info = await Deno.stat(path); // follows symlinks, as a ConfigMap mount needs
      } catch (err) {
        if (err instanceof Deno.errors.NotFound) continue; // removed meanwhile, or dangling
        if (EXTENSIONS.some((x) => e.name.endsWith(x))) {
          out.push({ path: relPath, text: "", error: readError(err) });
        }
        continue;
      }
      if (info.isDirectory) {
        if (folders.has(folderId(info))) {
          out.push({
            path: relPath,
            text: "",
            skipped: "a link to a folder already read (a loop, or a second path to it)",
          });
        } else {
          folders.add(folderId(info));
          await walk(path, relPath);
        }
        continue;
      }
      if (!EXTENSIONS.some((x) => e.name.endsWith(x))) continue;
      if (!info.isFile) {
        out.push({
          path: relPath,
          text: "",
          skipped: "not a regular file (a FIFO, socket or device)",
        });
        continue;
      }
      options.onFile?.(relPath);
      const read = await readRegularFile(path, max);
      if (read === null) continue; // removed between listing and reading
      out.push({ path: relPath, ...read });
    }
  };
  await walk(root, "");
  return out;
}

/** Why a file could not be read, as its error says it. */
function readError(err: unknown): string {
  // The reading thread may read the config directory alone; Deno's own message would say to
  // run again with --allow-read, which is no advice to a user of meshd.
  if (err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied) {
    return "it leads outside the config directory (a link to a file elsewhere?), " +
      "where meshd does not read";
  }
  return (err as Error).message;
}

/** A folder's identity, whatever path (or link) reaches it. */
export function folderId(info: Deno.FileInfo): string {
  return `${info.dev}:${info.ino}`;
}

async function readRegularFile(
  path: string,
  max: number,
): Promise<{ text: string; error?: string } | null> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    return { text: "", error: readError(err) };
  }
  try {
    // Checked again on the open file: it may have been swapped since the directory was listed.
    const info = await file.stat();
    if (!info.isFile) return { text: "", error: "not a regular file" };
    if (info.size > max) {
      return {
        text: "",
        error: `it is ${info.size} bytes, more than the limit of ${max} (--config-max-file-size)`,
      };
    }
    // Read at most one byte past the limit: a file that grows meanwhile is still bounded.
    const buf = new Uint8Array(Math.min(info.size, max) + 1);
    let n = 0;
    while (n < buf.length) {
      const got = await file.read(buf.subarray(n));
      if (got === null) break;
      n += got;
    }
    if (n > max) {
      return {
        text: "",
        error: `it is more than the limit of ${max} bytes (--config-max-file-size)`,
      };
    }
    try {
      return { text: new TextDecoder("utf-8", { fatal: true }).decode(buf.subarray(0, n)) };
    } catch {
      return { text: "", error: "it is not valid UTF-8" };
    }
  } catch (err) {
    return { text: "", error: readError(err) };
  } finally {
    file.close();
  }
}
