import type { Libbpf } from "../../ffi/libbpf.ts";

/**
 * One BPF map as the map writer sees it: fixed-size byte keys and values. The kernel's maps
 * implement it through libbpf ({@linkcode kernelMap}); tests pass a `Map` of hex strings.
 */
export interface DatapathMap {
  /** Writes one entry, creating or replacing it. Throws when the kernel refuses. */
  update(key: Uint8Array<ArrayBuffer>, value: Uint8Array<ArrayBuffer>): void;
  /** Reads one entry; null when the key is not there. */
  lookup(key: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> | null;
  /** Deletes one entry; false when it was not there. */
  delete(key: Uint8Array<ArrayBuffer>): boolean;
  /** Every key, in the map's own order. */
  keys(): Uint8Array<ArrayBuffer>[];
}

/** The maps meshd writes (the `rnat` maps are the hooks' own). */
export interface WrittenMaps {
  svc4: DatapathMap;
  svc6: DatapathMap;
  be4: DatapathMap;
  be6: DatapathMap;
  meta: DatapathMap;
}

/** The map open at `fd`, read and written through libbpf. */
export function kernelMap(
  bpf: Libbpf,
  fd: number,
  sizes: { key: number; value: number },
): DatapathMap {
  return {
    update: (key, value) => bpf.mapUpdate(fd, key, value),
    lookup: (key) => {
      const value = new Uint8Array(sizes.value);
      return bpf.mapLookup(fd, key, value) ? value : null;
    },
    delete: (key) => bpf.mapDelete(fd, key),
    keys: () => bpf.mapKeys(fd, sizes.key),
  };
}
