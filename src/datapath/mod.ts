/**
 * The data path: which one a node uses (the eBPF fast path or the userspace proxy alone), and
 * why.
 *
 * @module
 */
export * from "./probe.ts";
