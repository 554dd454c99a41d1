/**
 * The config reader's thread: lists, reads, parses and decodes the config files, so a large or
 * hostile file never holds up the thread that proxies. `FileProvider` starts it with read
 * access to the config directory and nothing else.
 *
 * @module
 */
import type { ConfigLimits } from "./config_limits.ts";
import { decodeFile } from "./decode_file.ts";
import { encodeDecodedFile } from "./object_loader.ts";
import { readConfigFiles } from "./read_config_files.ts";

/** What the provider asks: one complete read of `dir`. */
export interface ParseRequest {
  id: number;
  dir: string;
  limits: ConfigLimits;
}

/** What the thread answers: the file it is on, then every file decoded, or why it could not. */
export type ParseReply =
  | { id: number; type: "file"; path: string }
  | { id: number; type: "done"; files: unknown[] }
  | { id: number; type: "failed"; message: string };

// Typed by hand: this file is checked with the main program, whose lib is not the worker's.
const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<ParseRequest>) => void) | null;
  postMessage(reply: ParseReply): void;
};

scope.onmessage = async ({ data: { id, dir, limits } }) => {
  try {
    const files = await readConfigFiles(dir, {
      maxFileBytes: limits.maxFileBytes,
      onFile: (path) => scope.postMessage({ id, type: "file", path }),
    });
    const decoded: unknown[] = [];
    for (const f of files) {
      scope.postMessage({ id, type: "file", path: f.path });
      decoded.push(encodeDecodedFile(decodeFile(f, limits)));
    }
    scope.postMessage({ id, type: "done", files: decoded });
  } catch (e) {
    scope.postMessage({ id, type: "failed", message: (e as Error)?.message ?? String(e) });
  }
};
