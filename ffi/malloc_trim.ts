/**
 * glibc's `malloc_trim(0)` through `Deno.dlopen`: gives the free pages inside the malloc heap
 * back to the kernel. A large config's parse and build, and V8's compilers, free megabytes
 * in the middle of the heap; glibc returns only the top of it on its own, so without a trim
 * those pages stay in meshd's RSS (2.3 to 3.5 MiB at 1,000 services; README, Memory).
 *
 * @module
 */

/**
 * A function that starts `malloc_trim(0)` on one of Deno's blocking threads and resolves
 * when it is done, or null where it cannot run: not Linux, FFI not permitted (`--allow-ffi`),
 * or a C library without `malloc_trim` (musl). Loads libc once, here.
 *
 * The call is `nonblocking`, and not only so the proxy's thread goes on meanwhile: for a
 * synchronous symbol Deno compiles a fast-call trampoline, and that compiler's code held 1.2
 * to 1.9 MiB of the `deno` file's pages, as much as the trim gave back.
 *
 * @example
 * ```ts
 * const trim = mallocTrimmer();
 * await trim?.();
 * ```
 */
export function mallocTrimmer(): (() => Promise<void>) | null {
  if (Deno.build.os !== "linux") return null;
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
  let libc;
  try {
    libc = Deno.dlopen("libc.so.6", {
      malloc_trim: { parameters: ["usize"], result: "i32", nonblocking: true },
    });
  } catch {
    return null;
  }
  const { malloc_trim } = libc.symbols;
  return async () => void await malloc_trim(0n);
}
