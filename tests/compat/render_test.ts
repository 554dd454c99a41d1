import assert from "node:assert/strict";
import { casesCell, parseJunit, parseMeta, probeFacts, renderCompatibility } from "./render.ts";

const JUNIT = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="deno test" tests="3" failures="2" errors="0" time="0.040">
    <testsuite name="./a_test.ts" tests="3" disabled="0" errors="0" failures="2">
        <testcase name="a parent" classname="./tests/ebpf/a_test.ts" time="0.029" line="1" col="6">
            <failure message="1 test step failed">1 test step failed.</failure>
        </testcase>
        <testcase name="a parent &gt; step one" classname="./tests/ebpf/a_test.ts" time="0.000" line="1" col="46">
        </testcase>
        <testcase name="a parent &gt; step two" classname="./tests/ebpf/a_test.ts" time="0.001" line="1" col="82">
            <failure message="Uncaught Error: boom &quot;x&quot;
line2">Error: boom</failure>
        </testcase>
    </testsuite>
</testsuites>`;

Deno.test("parseJunit() reads names, files and the first line of each failure", () => {
  assert.deepEqual(parseJunit(JUNIT), [
    { name: "a parent", file: "./tests/ebpf/a_test.ts", failure: "1 test step failed" },
    { name: "a parent > step one", file: "./tests/ebpf/a_test.ts" },
    {
      name: "a parent > step two",
      file: "./tests/ebpf/a_test.ts",
      failure: 'Uncaught Error: boom "x"',
    },
  ]);
});

Deno.test("casesCell() is ✔, ✘ naming the failed step, or not tested with the reason", () => {
  const cell = { meta: {}, reports: { ebpf: parseJunit(JUNIT) }, files: {} };
  assert.equal(casesCell(cell, "ebpf", (t) => t.name.endsWith("one"), "-"), "✔");
  assert.equal(
    casesCell(cell, "ebpf", (t) => t.name.startsWith("a parent"), "-"),
    '✘ step two: Uncaught Error: boom "x"',
  );
  assert.equal(casesCell(cell, "ebpf", () => false, "no such test"), "not tested: no such test");
  assert.equal(casesCell(undefined, "ebpf", () => true, "-"), "not tested: no run recorded");
  const skipped = { meta: { "realnodes.skipped": "after 17:35" }, reports: {}, files: {} };
  assert.equal(casesCell(skipped, "realnodes", () => true, "-"), "not tested: after 17:35");
  const broken = { meta: { build: "failed", "build.error": "go: x | y" }, reports: {}, files: {} };
  assert.equal(
    casesCell(broken, "api", () => true, "-"),
    "not tested: the build failed (see its row)",
  );
  const timedOut = { meta: { "api.rc": "124" }, reports: {}, files: {} };
  assert.equal(casesCell(timedOut, "api", () => true, "-"), "✘ timed out (no report)");
});

Deno.test("parseMeta() and probeFacts() keep the last value of a key", () => {
  assert.deepEqual(parseMeta("a=1\nb=x=y\na=2\n"), { a: "2", b: "x=y" });
  assert.deepEqual(
    probeFacts('noise\nCOMPAT {"row":"Lease","value":"v1"}\nCOMPAT {"row":"Lease","value":"v2"}\n'),
    { Lease: "v2" },
  );
});

Deno.test("renderCompatibility() stamps the page and says not tested for missing pieces", () => {
  const md = renderCompatibility({ pieces: {}, cells: {} }, {
    date: "2026-11-29",
    commit: "abc1234",
  });
  assert.match(md, /on 2026-11-29 at commit abc1234/);
  assert.match(md, /## Kubernetes\n\nnot tested: no run recorded\./);
  assert.match(md, /## Kernels\n\nnot tested: no run recorded\./);
});

Deno.test("renderCompatibility() puts each kernel's results in its column, older kernels not tested", () => {
  const md = renderCompatibility({
    pieces: { kernels: { series: "5.10,6.1", "run.seconds": "600", "run.ended": "t" } },
    cells: {
      kernels: {
        "5.10": {
          meta: { "vm.seconds": "300", host: "clean" },
          reports: {
            ebpf: parseJunit(
              JUNIT.replaceAll("a parent", "TCP to a mesh address reaches every pod"),
            ),
          },
          files: { "check.txt": "ok    datapath  ebpf: 8 programs", release: "5.10.0-46-amd64\n" },
        },
      },
    },
  }, { date: "d", commit: "c" });
  const row = md.split("\n").find((l) => l.startsWith("| connect4 + getpeername4"))!;
  assert.deepEqual(row.split(" | ").slice(1, 3), [
    '✘ step two: Uncaught Error: boom "x"',
    "not tested: no run recorded",
  ]);
  assert.match(md, /\| 5\.10 \(5\.10\.0-46-amd64\) \| 6\.1 \| < 5\.10/);
  assert.match(md, /\| `meshd check` datapath line \| ✔ ebpf: 8 programs \|/);
});

Deno.test("renderCompatibility() names what differed between the releases probed", () => {
  const probe = (lease: string) => ({
    meta: { build: "ok" },
    reports: {},
    files: {
      "probe.log":
        `COMPAT {"row":"server","value":"x"}\nCOMPAT {"row":"Lease","value":"${lease}"}\n` +
        'COMPAT {"row":"DaemonSet maxSurge","value":"maxSurge=1"}\n',
    },
  });
  const md = renderCompatibility({
    pieces: {},
    cells: { kube: { "1.35.4": probe("served v1"), "1.36.3": probe("served v1, v1beta1") } },
  }, { date: "d", commit: "c" });
  assert.match(md, /- \*\*Lease\*\* — v1\.35\.4: served v1; v1\.36\.3: served v1, v1beta1/);
  assert.doesNotMatch(md, /\*\*DaemonSet maxSurge\*\*/);
  assert.doesNotMatch(md, /\*\*server\*\*/);
});

Deno.test("renderCompatibility() keeps the failure of a tier run that was run again", () => {
  const junit = (failure: string) =>
    `<testcase name="three nodes" classname="./tests/e2e/multinode_e2e_test.ts" line="1" col="1">${failure}</testcase>
<testcase name="three nodes &gt; API outage" classname="./tests/e2e/multinode_e2e_test.ts" line="1" col="1">${failure}</testcase>`;
  const md = renderCompatibility({
    pieces: {},
    cells: {
      kube: {
        "1.36.3": {
          meta: { build: "ok", "netns.earlier": "API outage: web back on v1: still not so" },
          reports: { netns: parseJunit(junit("")) },
          files: {},
        },
      },
    },
  }, { date: "d", commit: "c" });
  const row = md.split("\n").find((l) => l.startsWith("| multi-node netns tier"))!;
  assert.match(
    row,
    /\| ✔ \(the run before failed: ✘ API outage: web back on v1: still not so\) \|/,
  );
});

Deno.test("renderCompatibility() states one pass's run time: a cell run again counts once", () => {
  const md = renderCompatibility({
    // Three invocations: the first ran both releases, the next two ran 1.36.3's netns tier again.
    pieces: { kube: { "run.seconds": "3000" } },
    cells: {
      kube: {
        "1.35.4": {
          meta: { build: "ok", "build.seconds": "2", "api.seconds": "600", "netns.seconds": "300" },
          reports: {},
          files: {},
        },
        "1.36.3": {
          meta: {
            build: "ok",
            "build.seconds": "1800",
            "api.seconds": "600",
            "netns.seconds": "300",
          },
          reports: {},
          files: {},
        },
      },
    },
  }, { date: "d", commit: "c" });
  assert.match(md, /Run time: 30 min for one pass/);
  assert.match(md, /kube 30 min/);
  assert.match(md, /builds \(cold once per version, then cached\) 30 min more/);
});

Deno.test("renderCompatibility() reads check's grouped datapath line (✔ ebpf: …)", () => {
  const md = renderCompatibility({
    pieces: { kernels: { series: "5.10" } },
    cells: {
      kernels: {
        "5.10": {
          meta: { "vm.rc": "0" },
          reports: {},
          files: { "check.txt": "✔ ebpf: kernel 5.10.0-46-amd64, the programs load\n" },
        },
      },
    },
  }, { date: "d", commit: "c" });
  assert.match(
    md,
    /\| `meshd check` datapath line \| ✔ ebpf: kernel 5\.10\.0-46-amd64, the programs load \|/,
  );
});
