/**
 * The data path: which one a node uses (the eBPF fast path or the userspace proxy alone), and
 * why; and, on eBPF, the maps kept equal to the mesh config.
 *
 * @module
 */
export * from "./probe.ts";
export * from "./layout.ts";
export * from "./entries.ts";
export * from "./ebpf_datapath.ts";
export * from "./fast_path.ts";
