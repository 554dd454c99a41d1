import type { Registry } from "../observability/mod.ts";
import type { MapCounts } from "./map_writer.ts";
import type { DatapathChoice } from "./probe.ts";

/** What the data path metrics read, each time `/metrics` is scraped. */
export interface DatapathMetricsSource {
  choice: DatapathChoice;
  /** The eBPF maps' counts and memory; null on the userspace path. */
  ebpf: { stats(): MapCounts; mapBytes(): number } | null;
  /** Configs the eBPF maps could not be brought to, and failed renewals. */
  errors(): number;
}

type Sample = [string[], number];

/** One gauge of the eBPF maps: its name, help, label names and samples. */
const EBPF_GAUGES: [string, string, string[], (s: DatapathMetricsSource) => Sample[]][] = [
  [
    "meshd_ebpf_services",
    "Service addresses in the eBPF maps, by family and by where they go.",
    ["family", "to"],
    (src) => {
      const s = src.ebpf!.stats();
      return [[["4", "any"], s.services4], [["6", "any"], s.services6], [
        ["any", "proxy"],
        s.redirects,
      ]];
    },
  ],
  [
    "meshd_ebpf_backends",
    "Backend slots in force in the eBPF maps.",
    [],
    (src) => [[[], src.ebpf!.stats().backends]],
  ],
  [
    "meshd_ebpf_map_bytes",
    "Kernel memory of meshd's eBPF maps.",
    [],
    (src) => [[[], src.ebpf!.mapBytes()]],
  ],
  [
    "meshd_ebpf_map_writes_total",
    "eBPF map entries written and deleted.",
    ["op"],
    (src) => {
      const s = src.ebpf!.stats();
      return [[["update"], s.writes], [["delete"], s.deletes]];
    },
  ],
  [
    "meshd_ebpf_apply_errors_total",
    "Configs the eBPF maps could not be brought to.",
    [],
    (src) => [[[], src.errors()]],
  ],
];

/**
 * Registers the data path's metrics: `meshd_datapath_info` always, the `meshd_ebpf_*` ones
 * when the eBPF path is in use.
 */
export function registerDatapathMetrics(r: Registry, src: DatapathMetricsSource): void {
  r.collect(
    "meshd_datapath_info",
    "The data path in use (ebpf or userspace) and why; always 1.",
    ["datapath", "reason"],
    () => [[[src.choice.datapath, src.choice.reason], 1]],
  );
  if (!src.ebpf) return;
  for (const [name, help, labels, samples] of EBPF_GAUGES) {
    r.collect(name, help, labels, () => samples(src));
  }
}
