/**
 * The data path: which one a node uses (the eBPF fast path or the userspace proxy alone), and
 * why; and, on eBPF, the maps kept equal to the mesh config.
 *
 * @example
 * ```ts
 * const selected = await selectDatapath({ mode: "auto", bpffs: "/sys/fs/bpf", logger });
 * const fast = new FastPath({ selected, proxy, addresses: "cluster-ip", logger });
 * fast.apply(config);
 * ```
 *
 * @module
 */
export {
  cgroup2Root,
  type DatapathChoice,
  findCgroup2,
  findLibbpf,
  kernelVersion,
  MIN_KERNEL,
  mountsOfType,
  type ProbeCheck,
  probeDatapath,
  type ProbeOptions,
} from "./probe.ts";
export {
  datapathEntries,
  type DatapathEntry,
  type MeshAddresses,
  type ProxyListener,
} from "./entries.ts";
export { DEFAULT_GRACE_MS, EbpfDatapath, type EbpfOptions } from "./ebpf_datapath.ts";
export { DatapathError } from "./ebpf_loader.ts";
export {
  type DatapathMode,
  DEFAULT_BPF_OBJECT,
  FastPath,
  type FastPathOptions,
  readBpfObject,
  selectDatapath,
  type Selected,
  type SelectOptions,
} from "./fast_path.ts";
