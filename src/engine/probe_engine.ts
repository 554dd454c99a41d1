/**
 * Whether meshd's own event loop can run in this process, asked before an L4 worker is started
 * (`--l4-worker=auto`): FFI is permitted, the engine's libc loads (glibc's `libc.so.6`, through
 * the same loader the loop uses) and an epoll instance can be made. It is synchronous and cheap:
 * a permission query, one `dlopen` (kept, as the loop's is) and two system calls.
 *
 * @module
 */
import { type LibcNet, libcNet } from "../../ffi/libc_net.ts";

const EPOLL_CLOEXEC = 0o2000000;
/** Where `struct epoll_event`'s layout in `ffi/libc_net.ts` is known. */
const ARCHES: readonly string[] = ["x86_64", "aarch64"];

/** What {@linkcode probeEngine} found: the loop can run, or why not. */
export type EngineProbe = { ok: true } | { ok: false; reason: string };

/** Seams for {@linkcode probeEngine}'s tests; each defaults to the real thing. */
export interface ProbeEngineOptions {
  /** The state of the FFI permission. Default: `Deno.permissions.querySync`. */
  ffiPermission?: () => Deno.PermissionState;
  /** Loads the engine's libc bindings. Default: {@linkcode libcNet}. */
  libc?: () => LibcNet;
  /** Default: `Deno.build.os`. */
  os?: string;
  /** Default: `Deno.build.arch`. */
  arch?: string;
}

/**
 * Probes what the event loop needs, in the order it needs them, and stops at the first that
 * fails; never throws.
 *
 * @example
 * ```ts
 * const probe = probeEngine();
 * if (!probe.ok) logger.warn("L4 worker off", { reason: probe.reason });
 * ```
 */
export function probeEngine(options: ProbeEngineOptions = {}): EngineProbe {
  const os = options.os ?? Deno.build.os;
  const arch = options.arch ?? Deno.build.arch;
  if (os !== "linux" || !ARCHES.includes(arch)) {
    return {
      ok: false,
      reason: `the event loop needs Linux on x86_64 or aarch64, not ${os} ${arch}`,
    };
  }
  // A query, not a request: "prompt" would otherwise ask on a terminal, or fail in dlopen.
  const permission = options.ffiPermission ??
    (() => Deno.permissions.querySync({ name: "ffi" }).state);
  const state = permission();
  if (state !== "granted") {
    return {
      ok: false,
      reason: `FFI is not permitted (its permission is "${state}"; deno run needs --allow-ffi)`,
    };
  }
  let libc: LibcNet;
  try {
    libc = (options.libc ?? libcNet)();
  } catch (e) {
    // musl has no libc.so.6; Deno names the file and dlopen's error.
    return { ok: false, reason: `cannot load glibc's libc.so.6: ${(e as Error).message}` };
  }
  try {
    const ep = libc.call.epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
      const errno = libc.errno();
      return {
        ok: false,
        reason: `epoll_create1 failed: ${libc.describe(errno)} (errno ${errno})`,
      };
    }
    libc.call.close(ep);
  } catch (e) {
    return { ok: false, reason: `cannot call epoll_create1: ${(e as Error).message}` };
  }
  return { ok: true };
}
