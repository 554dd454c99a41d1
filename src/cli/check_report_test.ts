import assert from "node:assert/strict";
import { type CheckResult, checksJson, formatChecks, tally } from "./check_report.ts";
import { nodeCheck, versionCheck, versionsCheck } from "./cluster_commands.ts";
import { appliedByLeader } from "./mesh_nodes.ts";
import { parsePromText } from "./prom_text.ts";

const RESULTS: CheckResult[] = [
  { group: "Kubernetes API", name: "api", level: "ok", message: "answers" },
  { group: "CoreDNS", name: "coredns", level: "fail", message: "no block", hint: "run prepare" },
  { group: "Kubernetes API", name: "version", level: "warn", message: "new", hint: "report" },
  { group: "meshd", name: "leader", level: "skip", message: "forbidden", hint: "not shown" },
];

Deno.test("formatChecks() groups by heading in first-seen order, hints under problems only", () => {
  assert.equal(
    formatChecks(RESULTS),
    [
      "Kubernetes API",
      "--------------",
      "✔ answers",
      "‼ new",
      "    hint: report",
      "",
      "CoreDNS",
      "-------",
      "✘ no block",
      "    hint: run prepare",
      "",
      "meshd",
      "-----",
      "- forbidden",
      "",
      "✘ 1 passed, 1 warning, 1 failed, 1 skipped",
      "",
    ].join("\n"),
  );
  assert.match(formatChecks(RESULTS.slice(0, 1)), /\n✔ 1 passed\n$/);
});

Deno.test("checksJson() says ok unless a check failed, with the counts and every check", () => {
  const j = JSON.parse(checksJson(RESULTS));
  assert.equal(j.ok, false);
  assert.deepEqual(j.summary, { ok: 1, warn: 1, fail: 1, skip: 1 });
  assert.deepEqual(j.checks[1], RESULTS[1]);
  assert.equal(JSON.parse(checksJson(RESULTS.filter((r) => r.level !== "fail"))).ok, true);
  assert.deepEqual(tally([]), { ok: 0, warn: 0, fail: 0, skip: 0 });
});

Deno.test("versionCheck() passes the supported minors, fails older, warns newer or unreadable", () => {
  const cases: [string, string, RegExp][] = [
    ["v1.37.2", "ok", /^Kubernetes 1\.37 is in the supported range \(1\.28 to 1\.37\)$/],
    ["v1.28.0+k3s1", "ok", /1\.28 is in the supported range/],
    ["v1.27.9", "fail", /^Kubernetes 1\.27 is older than 1\.28/],
    ["v1.38.0-alpha.1", "warn", /^Kubernetes 1\.38 is newer than 1\.37/],
    ["(no version)", "warn", /not a version meshd can read/],
  ];
  for (const [git, level, text] of cases) {
    const r = versionCheck(git);
    assert.equal(r.level, level, git);
    assert.match(r.message, text, git);
  }
});

Deno.test("nodeCheck() falls back on the version the leader says a node applied", () => {
  const node = { name: "n2", ready: true, kernelVersion: "6.1.0" };
  const pod = {
    name: "meshd-b",
    node: "n2",
    image: "meshd:0.1.0",
    ip: "192.0.2.12",
    phase: "Running",
    ready: true,
    restarts: 0,
    waiting: "",
    lastTermination: "",
  };
  const leaderSays = (v: number) =>
    appliedByLeader(parsePromText(
      `meshd_distribution_node_applied_version{node="meshd-b"} ${v}\n` +
        'meshd_distribution_node_applied_version{node="meshd-a"} 9\n',
    ));
  const unread = { node, pod, metrics: null, metricsError: "GET ...: 403 forbidden" };
  const o = { ns: "meshd", target: 9, leader: "meshd-a" };
  const behind = nodeCheck(unread, { ...o, applied: leaderSays(7) });
  assert.equal(behind.level, "fail");
  assert.equal(
    behind.message,
    "n2: pod meshd-b applied config v7, the leader is at v9 (as the leader says; its metrics: " +
      "GET ...: 403 forbidden)",
  );
  const even = nodeCheck(unread, { ...o, applied: leaderSays(9) });
  assert.equal(even.level, "warn", "in step, but its data path is unknown");
  assert.match(even.message, /^n2: pod meshd-b applied config v9 \(as the leader says;/);
  const unknown = nodeCheck(unread, { ...o, applied: new Map() });
  assert.equal(unknown.level, "warn");
  assert.match(unknown.message, /its metrics cannot be read: GET \.\.\.: 403 forbidden$/);
  // its own metrics win over the leader's word
  const own = nodeCheck(
    {
      node,
      pod,
      metrics: parsePromText(
        'meshd_config_version 9\nmeshd_datapath_info{datapath="ebpf",reason="x"} 1\n',
      ),
    },
    { ...o, applied: leaderSays(7) },
  );
  assert.deepEqual([own.level, own.message], ["ok", "n2: pod meshd-b, config v9, ebpf"]);
});

Deno.test("nodeCheck() warns of what a node's /api/status lists as errors, and of a config from disk", () => {
  const node = { name: "n1", ready: true, kernelVersion: "6.1.0" };
  const pod = {
    name: "meshd-a",
    node: "n1",
    image: "meshd:0.1.0",
    ip: "192.0.2.11",
    phase: "Running",
    ready: true,
    restarts: 0,
    waiting: "",
    lastTermination: "",
  };
  const o = { ns: "meshd", target: 9, leader: "meshd-a", applied: new Map<string, number>() };
  const base = 'meshd_config_version 9\nmeshd_datapath_info{datapath="ebpf",reason="x"} 1\n';
  // Objects rejected are the input's (status shows them), not the node's: no warning.
  const clean = nodeCheck({
    node,
    pod,
    metrics: parsePromText(
      base + 'meshd_status_problems{kind="invalid_object"} 3\n' +
        'meshd_status_problems{kind="config_warning"} 4\nmeshd_config_source{source="leader"} 1\n',
    ),
  }, o);
  assert.deepEqual([clean.level, clean.message], [
    "ok",
    "n1: pod meshd-a, leader, config v9, ebpf",
  ]);
  const troubled = nodeCheck({
    node,
    pod,
    metrics: parsePromText(
      base + 'meshd_status_problems{kind="invalid_object"} 2\n' +
        'meshd_status_problems{kind="listener_unbound"} 1\n' +
        'meshd_status_problems{kind="save_failed"} 3\nmeshd_config_source{source="disk"} 1\n',
    ),
  }, o);
  assert.equal(troubled.level, "warn");
  assert.equal(
    troubled.message,
    "n1: pod meshd-a, leader, config v9, from the config saved on disk, ebpf; " +
      "listener not bound: 1, config saves failed: 3",
  );
  assert.match(troubled.hint!, /meshd status shows the messages/);
});

Deno.test("versionsCheck() reads meshd_build_info, falls back on the image tag, warns of a mix", () => {
  const node = (name: string) => ({ name, ready: true, kernelVersion: "6.1.0" });
  const pod = (name: string, n: string, image = "meshd:0.1.0") => ({
    name,
    node: n,
    image,
    ip: "192.0.2.11",
    phase: "Running",
    ready: true,
    restarts: 0,
    waiting: "",
    lastTermination: "",
  });
  const build = (commit: string) =>
    parsePromText(`meshd_build_info{version="0.1.0",commit="${commit}",deno="2.9.6"} 1\n`);
  const sha = "5867a54c0ffee0000000000000000000000000aa";
  const same = versionsCheck([
    { node: node("n1"), pod: pod("a", "n1"), metrics: build(sha) },
    { node: node("n2"), pod: pod("b", "n2"), metrics: build(sha) },
    { node: node("n3"), pod: null, metrics: null },
  ], "meshd");
  assert.deepEqual(same, {
    name: "versions",
    level: "ok",
    message: "every node runs meshd 0.1.0 (commit 5867a54, deno 2.9.6)",
  });
  // An older meshd (no meshd_build_info) and one whose metrics were not read: the image tag.
  const mixed = versionsCheck([
    { node: node("n1"), pod: pod("a", "n1"), metrics: build(sha) },
    { node: node("n2"), pod: pod("b", "n2", "meshd:0.0.9"), metrics: parsePromText("") },
    { node: node("n3"), pod: pod("c", "n3", "meshd:0.0.9"), metrics: null, metricsError: "403" },
  ], "meshd")!;
  assert.equal(mixed.level, "warn");
  assert.equal(
    mixed.message,
    "nodes run different meshd builds: 0.1.0 (commit 5867a54, deno 2.9.6) on n1; " +
      "meshd:0.0.9 (image tag) on n2, n3",
  );
  assert.equal(versionsCheck([{ node: node("n1"), pod: null, metrics: null }], "meshd"), null);
  // A build from a changed checkout keeps its -dirty mark.
  assert.equal(
    versionsCheck([{ node: node("n1"), pod: pod("a", "n1"), metrics: build(`${sha}-dirty`) }], "m")
      ?.message,
    "every node runs meshd 0.1.0 (commit 5867a54-dirty, deno 2.9.6)",
  );
});
