import assert from "node:assert/strict";
import { type CheckResult, checksJson, formatChecks, tally } from "./check_report.ts";
import { versionCheck } from "./cluster_commands.ts";

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
