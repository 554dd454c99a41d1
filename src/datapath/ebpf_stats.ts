/**
 * Kernel memory of the maps open at `fds`: the sum of each one's fdinfo `memlock` (0 for one
 * whose fdinfo cannot be read).
 */
export function mapMemoryBytes(fds: Iterable<number>): number {
  let bytes = 0;
  for (const fd of fds) {
    try {
      const info = Deno.readTextFileSync(`/proc/self/fdinfo/${fd}`);
      bytes += Number(info.match(/^memlock:\s*(\d+)/m)?.[1] ?? 0);
    } catch { /* fdinfo unreadable: counted as 0 */ }
  }
  return bytes;
}
