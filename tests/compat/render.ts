/**
 * Turns what `scripts/compat` recorded into docs/compatibility.md: pure, so the table's rules
 * (a cell is ✔, ✘ with the reason, or "not tested" with the reason) are tested without a run.
 *
 * @module
 */

/** One `<testcase>` of a JUnit report (a step's name is `parent > step`). */
export interface TestCase {
  name: string;
  file: string;
  /** The first line of the failure message; absent when it passed. */
  failure?: string;
}

/** What one cell's run left: its `meta` facts, JUnit reports and text files, by name. */
export interface CellResult {
  meta: Record<string, string>;
  reports: Record<string, TestCase[]>;
  files: Record<string, string>;
}

/** Everything `scripts/compat` kept: piece → version (or `fixtures`, `default`) → result. */
export interface Results {
  /** Piece-level facts (`run.seconds`, `versions`, …) by piece. */
  pieces: Record<string, Record<string, string>>;
  cells: Record<string, Record<string, CellResult>>;
}

/** What the page is stamped with. */
export interface Stamp {
  date: string;
  commit: string;
}

/** Reads a JUnit XML report as Deno writes it. */
export function parseJunit(xml: string): TestCase[] {
  const out: TestCase[] = [];
  const re = /<testcase name="([^"]*)" classname="([^"]*)"[^>]*?(\/>|>([\s\S]*?)<\/testcase>)/g;
  for (const m of xml.matchAll(re)) {
    const body = m[4] ?? "";
    const f = body.match(/<failure message="([^"]*)"/);
    const tc: TestCase = { name: unescapeXml(m[1]!), file: unescapeXml(m[2]!) };
    if (f) tc.failure = unescapeXml(f[1]!).split("\n")[0]!.trim();
    out.push(tc);
  }
  return out;
}

function unescapeXml(s: string): string {
  return s.replaceAll("&lt;", "<").replaceAll("&gt;", ">").replaceAll("&quot;", '"')
    .replaceAll("&apos;", "'").replaceAll("&#10;", "\n").replaceAll("&amp;", "&");
}

/** Reads `key=value` lines; a key seen again keeps its last value. */
export function parseMeta(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

const OK = "✔";
const NO = "✘";

function cellText(s: string): string {
  return s.replaceAll("|", "\\|").replaceAll("\n", " ").replace(/\s+/g, " ").trim();
}

function short(s: string, n = 160): string {
  const t = cellText(s);
  return t.length > n ? `${t.slice(0, n - 1)}…` : t;
}

/**
 * The cell for the test cases of `report` whose names match `pick`: ✔ when all passed, ✘ with
 * the first failure's name and message, "not tested" with `why` when the run left no report or
 * no case matched.
 */
export function casesCell(
  cell: CellResult | undefined,
  report: string,
  pick: (t: TestCase) => boolean,
  why: string,
): string {
  const notRun = notTestedReason(cell, report);
  if (notRun) return notRun;
  const cases = (cell!.reports[report] ?? []).filter(pick);
  if (cases.length === 0) return `not tested: ${why}`;
  const failed = cases.filter((t) => t.failure !== undefined);
  if (failed.length === 0) return OK;
  // A parent fails when a step does; name the step.
  const f = failed.find((t) => !/^\d+ test steps? failed/.test(t.failure!)) ?? failed[0]!;
  const leaf = f.name.split(" > ").at(-1)!;
  return `${NO} ${short(`${leaf}: ${f.failure}`)}`;
}

/** Why a cell has no report, or null when it has one. */
function notTestedReason(cell: CellResult | undefined, report: string): string | null {
  if (!cell) return "not tested: no run recorded";
  if (cell.meta["build"] === "failed") return "not tested: the build failed (see its row)";
  const skipped = cell.meta[`${report}.skipped`];
  if (skipped) return `not tested: ${short(skipped)}`;
  if (cell.reports[report]) return null;
  const rc = cell.meta[`${report}.rc`];
  if (rc === "124" || rc === "137") return `${NO} timed out (no report)`;
  if (rc !== undefined) return `${NO} exit ${rc} without a report`;
  return "not tested: no run recorded";
}

function table(head: string[], rows: string[][]): string {
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`];
  for (const r of rows) lines.push(`| ${r.map(cellText).join(" | ")} |`);
  return lines.join("\n");
}

function minutes(seconds: string | undefined): string {
  if (seconds === undefined) return "?";
  const s = Number(seconds);
  return s >= 90 ? `${Math.round(s / 60)} min` : `${s} s`;
}

/**
 * What the real-node run said about the kubelet: only lines of the form real_nodes.ts prints
 * now (its --fail-cgroupv1 default; earlier runs printed the kubelet's config echo instead).
 */
function kubeletFacts(log: string | undefined): Record<string, string> {
  const said = probeFacts(log)["kubelet on cgroup v1"];
  return said && /fail-cgroupv1/.test(said) ? { "kubelet on cgroup v1": said } : {};
}

/** The facts the probe printed (`COMPAT {"row","value"}` lines), by row. */
export function probeFacts(log: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of (log ?? "").split("\n")) {
    const m = line.match(/^COMPAT (\{.*\})\s*$/);
    if (!m) continue;
    try {
      const f = JSON.parse(m[1]!) as { row: string; value: string };
      out[f.row] = f.value;
    } catch { /* not one of ours */ }
  }
  return out;
}

const byFile = (file: string) => (t: TestCase) => t.file.endsWith(file);
const top = (t: TestCase) => !t.name.includes(" > ");
const has = (part: string) => (t: TestCase) => t.name.includes(part);

function versionsOf(results: Results, piece: string, order?: string): string[] {
  const listed = (results.pieces[piece]?.[order ?? "versions"] ?? "").split(",").filter(Boolean);
  const found = Object.keys(results.cells[piece] ?? {});
  const all = [...listed, ...found.filter((v) => !listed.includes(v))];
  return all.filter((v) => v !== "fixtures" && v !== "default")
    .sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
}

function kubeSection(results: Results): string {
  const versions = versionsOf(results, "kube");
  const cells = results.cells["kube"] ?? {};
  if (versions.length === 0) return "## Kubernetes\n\nnot tested: no run recorded.\n";
  const head = ["", ...versions.map((v) => `v${v}`)];
  const rows: string[][] = [];
  rows.push([
    "control plane and node binaries build",
    ...versions.map((v) => {
      const c = cells[v];
      if (!c) return "not tested: no run recorded";
      if (c.meta["build"] === "failed") {
        return `${NO} ${short(c.meta["build.error"] ?? "build failed")}`;
      }
      if (c.meta["build"] !== "ok") return "not tested: the build did not finish";
      const took = Number(c.meta["build.seconds"] ?? 0);
      return `${OK} (${took < 10 ? "cached" : `built in ${minutes(String(took))}`})`;
    }),
  ]);
  const probeRows: [string, string][] = [
    ["Lease (leader election)", "Lease"],
    ["EndpointSlice fields", "EndpointSlice"],
    ["Service internalTrafficPolicy / trafficDistribution", "Service"],
    ["DaemonSet maxSurge (rollouts)", "DaemonSet"],
    ["Pod Security admission", "Pod Security"],
    ["watch bookmarks (meshd needs none)", "bookmarks"],
    ["server-side apply of the SMI CRDs", "CRDs"],
    ["`kubectl apply --server-side -k manifests/`", "kustomization"],
  ];
  const factRows: Record<string, string[]> = {
    "Lease": ["Lease"],
    "EndpointSlice": ["EndpointSlice fields"],
    "Service": ["internalTrafficPolicy", "trafficDistribution"],
    "DaemonSet": ["DaemonSet maxSurge"],
    "Pod Security": ["Pod Security admission"],
    "bookmarks": ["watch bookmarks"],
    "CRDs": ["server-side apply of the CRDs"],
    "kustomization": ["kubectl apply -k manifests/"],
  };
  for (const [label, step] of probeRows) {
    rows.push([
      label,
      ...versions.map((v) => {
        const c = cells[v];
        const verdict = casesCell(
          c,
          "probe",
          (t) => t.name.includes(` > ${step}`),
          "the probe has no such step",
        );
        const facts = probeFacts(c?.files["probe.log"]);
        const said = factRows[step]!.map((r) => facts[r]).filter(Boolean).join("; ");
        return said && !verdict.startsWith("not tested") ? `${verdict} ${said}` : verdict;
      }),
    ]);
  }
  const tierRows = (report: string, label: string, files: string[]) => {
    for (const f of files) {
      rows.push([
        `${label}: ${f.replace(/_test\.ts$/, "")}`,
        ...versions.map((v) => {
          const cell = casesCell(cells[v], report, byFile(f), `${f} did not run`);
          // A tier run again says how the run it replaced failed (a flake is not hidden).
          const earlier = cells[v]?.meta[`${report}.earlier`];
          const same = earlier &&
            (cells[v]!.reports[report] ?? []).some((t) =>
              byFile(f)(t) && earlier.startsWith(t.name.split(" > ").at(-1)!)
            );
          return same ? `${cell} (the run before failed: ✘ ${short(earlier!, 200)})` : cell;
        }),
      ]);
    }
  };
  const apiFiles = [
    ...new Set(
      versions.flatMap((v) =>
        (cells[v]?.reports["api"] ?? []).map((t) => t.file.split("/").at(-1)!)
      ),
    ),
  ].sort();
  tierRows("api", "API tier", apiFiles.length ? apiFiles : ["tests/kube/"]);
  tierRows("netns", "multi-node netns tier", ["multinode_e2e_test.ts"]);
  const rnFiles = [
    ...new Set(
      versions.flatMap((v) =>
        (cells[v]?.reports["realnodes"] ?? []).map((t) => t.file.split("/").at(-1)!)
      ),
    ),
  ].sort();
  tierRows(
    "realnodes",
    "real-node tier",
    rnFiles.length ? rnFiles : ["daemonset_test.ts", "helm_install_test.ts"],
  );
  rows.push([
    "kubelet on this host's cgroup v1 (hybrid; `failCgroupV1: false`)",
    ...versions.map((v) => {
      const c = cells[v];
      const said = kubeletFacts(c?.files["realnodes.log"])["kubelet on cgroup v1"];
      if (said) return `kubelet: ${short(said, 200)}`;
      return notTestedReason(c, "realnodes") ??
        "not tested: this release's real-node run predates the kubelet's cgroup v1 report";
    }),
  ]);
  rows.push([
    "host left clean after the real nodes",
    ...versions.map((v) => {
      const h = cells[v]?.meta["realnodes.host"];
      return h === undefined ? "not tested: no real-node run" : h === "clean" ? OK : `${NO} ${h}`;
    }),
  ]);
  const times = versions.map((v) => {
    const m = cells[v]?.meta ?? {};
    const parts = ["probe", "api", "netns", "realnodes"].filter((k) => m[`${k}.seconds`])
      .map((k) => `${k} ${minutes(m[`${k}.seconds`])}`);
    return `v${v}: ${parts.join(", ") || "no tier ran"} (commit ${m["commit"] ?? "?"})`;
  });
  // What differed between the releases that ran, from what they said (probe and kubelet).
  const said = versions.filter((v) => cells[v]?.files["probe.log"]).map((v) => ({
    v,
    facts: {
      ...probeFacts(cells[v]!.files["probe.log"]),
      ...kubeletFacts(cells[v]!.files["realnodes.log"]),
    },
  }));
  // Only what at least two releases reported can be compared.
  const factNames = [...new Set(said.flatMap((s) => Object.keys(s.facts)))]
    .filter((f) => f !== "server" && said.filter((s) => s.facts[f] !== undefined).length > 1);
  const differences = factNames.flatMap((f) => {
    const reported = said.filter((s) => s.facts[f] !== undefined);
    const values = reported.map((s) => `v${s.v}: ${s.facts[f]}`);
    return new Set(reported.map((s) => s.facts[f])).size > 1
      ? [`- **${f}** — ${values.join("; ")}`]
      : [];
  });
  const diffText = said.length < 2
    ? ["Differences between releases: fewer than two releases were probed, so none can be named."]
    : differences.length
    ? ["Differences between the releases probed (what each server said):", "", ...differences]
    : [
      `Differences between the releases probed (${said.map((s) => `v${s.v}`).join(", ")}): ` +
      `none in ${factNames.join(", ")}.`,
    ];
  const notes = Object.entries(results.pieces["kube"] ?? {}).filter(([k]) => k.startsWith("note."))
    .map(([, v]) => `- ${v}.`);
  return [
    "## Kubernetes",
    "",
    "Each column is a release built from the Go module proxy (`tests/testenv/kube/build.sh`, " +
    "`tests/testenv/nodes/build.sh`, `MESHD_KUBE_VERSION`). The probe rows are what that API " +
    "server did (`tests/compat/kube_probe.ts`); the tier rows are one per test file.",
    "",
    table(head, rows),
    "",
    ...diffText,
    "",
    `Run times: ${times.join("; ")}.`,
    "",
    ...(notes.length ? [...notes, ""] : []),
  ].join("\n");
}

const KERNEL_ROWS: [string, string, (t: TestCase) => boolean][] = [
  ["programs load and attach (8 sock_addr hooks)", "ebpf", has("meshd says it runs on eBPF")],
  ["connect4 + getpeername4", "ebpf", has("TCP to a mesh address reaches every pod")],
  [
    "sendmsg4 + recvmsg4",
    "ebpf",
    (t) => has("UDP to a mesh address: answers")(t) || has("IPv4: 30")(t),
  ],
  ["connect6 + getpeername6", "ebpf", has("IPv6: connect6 and getpeername6")],
  ["sendmsg6 + recvmsg6", "ebpf", has("IPv6: 30")],
  ["IPv4-mapped addresses (TCP and UDP)", "ebpf", has("IPv4-mapped mesh address")],
  ["HTTP redirected to the L7 proxy", "ebpf", has("goes to meshd's L7 proxy")],
  [
    "config changes reach the maps",
    "ebpf",
    (t) => has("a changed config reaches the maps")(t) || has("500 swaps")(t),
  ],
  [
    "pinned-link takeover across a restart",
    "ebpf",
    (t) =>
      has("restarted three times")(t) || has("takes the pins over")(t) || has("another layout")(t),
  ],
  ["grace deadline (`--ebpf-grace`)", "ebpf", has("longer than --ebpf-grace")],
  [
    "fallback: auto → userspace, `--datapath ebpf` refuses old kernels",
    "ebpf",
    (t) => has("auto falls back")(t) || has("exits with the reason instead")(t),
  ],
  ["sockmap experiment (sk_msg redirect)", "ebpf", has("sockmap experiment")],
];

function kernelSection(results: Results): string {
  const series = versionsOf(results, "kernels", "series");
  const cells = results.cells["kernels"] ?? {};
  if (series.length === 0) return "## Kernels\n\nnot tested: no run recorded.\n";
  const head = [
    "",
    ...series.map((s) => {
      const rel = cells[s]?.files["release"]?.trim();
      return rel ? `${s} (${rel})` : s;
    }),
    "< 5.10 (4.19, 5.4)",
  ];
  const older = "not tested: not downloadable here; the fallback is tested with `--kernel-release`";
  const rows: string[][] = [];
  rows.push([
    "`meshd check` datapath line",
    ...series.map((s) => {
      const c = cells[s];
      if (!c) return "not tested: no run recorded";
      if (c.meta["ebpf.skipped"]) return `not tested: ${c.meta["ebpf.skipped"]}`;
      const line = c.files["check.txt"]?.trim();
      if (!line) {
        const last = (c.files["check.log"] ?? "").trim().split("\n").at(-1);
        return `${NO} no datapath line (VM exit ${c.meta["vm.rc"] ?? "?"}${
          last ? `; meshd check's last words: ${short(last, 120)}` : ""
        })`;
      }
      // check's line: "✔ ebpf: …" (grouped), or "ok    datapath  ebpf: …" (before).
      const ok = line.startsWith("ok") || line.startsWith(OK);
      return `${ok ? OK : NO} ${
        short(line.replace(/^\S+\s+datapath\s+/, "").replace(/^(✔|‼|✘)\s+/, ""), 120)
      }`;
    }),
    "`--kernel-release=5.4.0`: userspace, says why (host kernel, `tests/ebpf`)",
  ]);
  for (const [label, report, pick] of KERNEL_ROWS) {
    rows.push([
      label,
      ...series.map((s) => casesCell(cells[s], report, pick, "no such test ran")),
      older,
    ]);
  }
  rows.push([
    "map memory",
    ...series.map((s) => {
      const m = cells[s]?.files["ebpf.log"]?.match(/map memory: (\d+) bytes/);
      return m
        ? `${Math.round(Number(m[1]) / 1024)} KiB (meshd's /api/status)`
        : "not tested: no figure in the log";
    }),
    older,
  ]);
  rows.push([
    "host left clean",
    ...series.map((s) => {
      const h = cells[s]?.meta["host"];
      return h === undefined ? "not tested" : h === "clean" ? OK : `${NO} ${h}`;
    }),
    "—",
  ]);
  // Cells from before scripts/compat recorded the factor ran with run.sh's default then, 5.
  const times = series.map((s) =>
    `${s}: ${minutes(cells[s]?.meta["vm.seconds"])}, waits ×${cells[s]?.meta["scale"] ?? 5} ` +
    `(commit ${cells[s]?.meta["commit"] ?? "?"})`
  );
  return [
    "## Kernels",
    "",
    "Debian's kernels booted in QEMU with software emulation (`tests/testenv/vm/`; KVM does not " +
    "work on this machine). Each VM runs `meshd check` (its datapath line) and the whole eBPF " +
    "tier, `tests/ebpf/` (ebpf_e2e, udp_affinity, sockmap), on the guest's own cgroup2, bpffs " +
    "and network namespaces, with the tests' waits stretched by `MESHD_TEST_TIME_SCALE` (the factor is given per kernel below).",
    "",
    table(head, rows),
    "",
    `VM run times (boot to power-off): ${times.join("; ")}.`,
    "",
  ].join("\n");
}

function corednsSection(results: Results): string {
  const cells = results.cells["coredns"] ?? {};
  const fx = cells["fixtures"];
  const names = (fx?.files["fixtures.txt"] ?? "").split("\n").filter(Boolean);
  const out = ["## CoreDNS", ""];
  if (!fx) out.push("Corefile fixtures: not tested: no run recorded.", "");
  else {
    out.push(
      "Corefiles as CoreDNS releases and installers ship them (`tests/fixtures/corefile/`): " +
        "`meshd prepare`'s block is added and removed again byte for byte, and no zone ends " +
        "up served twice (CoreDNS refuses that).",
      "",
    );
    out.push(
      table(
        ["fixture", "add/remove round trip", "stays loadable with the aliases"],
        names.map((n) => [
          `\`${n}\``,
          casesCell(fx, "fixtures", has(`round-trip ${n}`), "no such test"),
          casesCell(fx, "fixtures", has(`keeps ${n} loadable`), "no such test"),
        ]),
      ),
    );
    out.push("");
  }
  const versions = versionsOf(results, "coredns");
  if (versions.length) {
    out.push(
      "Real CoreDNS builds serving the block `meshd prepare` wrote, forwarding the mesh names " +
        "to meshd's DNS (`tests/kube/controller_test.ts`, `MESHD_COREDNS_VERSION`):",
      "",
    );
    out.push(table(["", ...versions.map((v) => `CoreDNS ${v}`)], [
      [
        "builds from the Go module proxy",
        ...versions.map((v) => {
          const c = cells[v];
          if (!c) return "not tested: no run recorded";
          if (c.meta["build"] === "failed") return `${NO} ${short(c.meta["build.error"] ?? "")}`;
          return c.meta["binary"] ? `${OK} (\`-version\`: ${c.meta["binary"]})` : OK;
        }),
      ],
      [
        "serves prepare's block (mesh, traefik.mesh, maesh)",
        ...versions.map((v) => casesCell(cells[v], "prepare", top, "the test did not run")),
      ],
    ]));
    out.push("");
  }
  return out.join("\n");
}

function smiSection(results: Results): string {
  const c = results.cells["smi"]?.["default"];
  const out = [
    "## SMI",
    "",
    "meshd reads access v1alpha2, specs v1alpha3 and split v1alpha3. What happens when the " +
    "cluster's CRDs serve other versions (`tests/kube/smi_versions_test.ts`, on the pinned " +
    `Kubernetes${c?.meta["kube"] ? ` v${c.meta["kube"]}` : ""}` +
    (c?.meta["smi.from"] ? `; the results of ${c.meta["smi.from"]}, which ran this file` : "") +
    "):",
    "",
  ];
  const cases = c?.reports["smi"] ?? [];
  if (cases.length === 0) out.push(notTestedReason(c, "smi") ?? "not tested: no run recorded");
  else {
    out.push(
      table(
        ["case", "result"],
        cases.filter((t) => t.name.includes(" > ") || cases.length === 1)
          .map((
            t,
          ) => [
            t.name.split(" > ").slice(1).join(" > ") || t.name,
            casesCell(c, "smi", (x) => x === t, ""),
          ]),
      ),
    );
  }
  out.push("");
  return out.join("\n");
}

/** The whole page. */
export function renderCompatibility(results: Results, stamp: Stamp): string {
  const pieces = ["kube", "kernels", "coredns", "smi"];
  // A piece's time is one pass: what the newest run of each of its cells took (tiers, VMs,
  // tests), not the sum of its invocations, which counts every cell run again (a flake's rerun)
  // once more. Builds are counted apart: cold once per version, then cached.
  const cellSeconds = (p: string, builds: boolean) =>
    Object.values(results.cells[p] ?? {}).flatMap((c) =>
      Object.entries(c.meta).filter(([k]) =>
        k.endsWith(".seconds") && (k === "build.seconds") === builds
      ).map(([, v]) => Number(v))
    ).reduce((a, b) => a + b, 0);
  const seconds = (p: string) =>
    cellSeconds(p, false) || Number(results.pieces[p]?.["run.seconds"] ?? 0);
  const runs = pieces.map((p) =>
    seconds(p) > 0
      ? `${p} ${minutes(String(seconds(p)))}` +
        (results.pieces[p]?.["run.ended"] ? ` (last ended ${results.pieces[p]!["run.ended"]})` : "")
      : `${p}: no run recorded`
  );
  const total = pieces.reduce((n, p) => n + seconds(p), 0);
  const builds = pieces.reduce((n, p) => n + cellSeconds(p, true), 0);
  return [
    "# Compatibility",
    "",
    `Generated by \`scripts/compat\` on ${stamp.date} at commit ${stamp.commit}, from the runs ` +
    "it recorded; every cell comes from a run on this kind of machine (2 shared cores), not from " +
    'a claim. ✔ passed, ✘ failed (with the reason), "not tested" says why.',
    "",
    `Run time: ${minutes(String(total))} for one pass (the newest run of each cell; a cell ` +
    "run again counts once), on a machine shared with other work, everything under " +
    `\`nice -n 19\`; ${runs.join("; ")}` +
    (builds >= 60
      ? `; builds (cold once per version, then cached) ${minutes(String(builds))} more`
      : "") +
    ". CI (`scripts/test`) runs " +
    "one Kubernetes minor (the one `tests/testenv/kube/go.mod` pins) and the host kernel.",
    "",
    kubeSection(results),
    kernelSection(results),
    corednsSection(results),
    smiSection(results),
  ].join("\n");
}
