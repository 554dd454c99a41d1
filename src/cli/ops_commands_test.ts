import assert from "node:assert/strict";
import type { MeshPodView, MeshView } from "../kube/mod.ts";
import { nodeFacts } from "./mesh_nodes.ts";
import { buildStatus, formatStatus } from "./ops_commands.ts";
import { parsePromText } from "./prom_text.ts";

const metrics = (version: number, datapath: string, extra = "") =>
  parsePromText(
    `meshd_config_version ${version}\n` +
      `meshd_datapath_info{datapath="${datapath}",reason="${
        datapath === "ebpf" ? "kernel 6.1" : "kernel 5.4 is older than 5.10"
      }"} 1\n` + extra,
  );

function pod(name: string, node: string, o: Partial<MeshPodView> = {}): MeshPodView {
  return {
    name,
    node,
    image: "meshd:0.1.0",
    ip: "192.0.2.11",
    phase: "Running",
    ready: true,
    restarts: 0,
    waiting: "",
    lastTermination: "",
    ...o,
  };
}

Deno.test("nodeFacts() reads version, data path, leading, stream, build, problems and the non-zero errors", () => {
  const f = nodeFacts(metrics(
    7,
    "ebpf",
    "meshd_controller_leading 1\nmeshd_distribution_connected 0\n" +
      'meshd_distribution_updates_total{kind="failed"} 2\n' +
      'meshd_dropped_total{reason="loop"} 0\nmeshd_dropped_total{reason="write_timeout"} 3\n' +
      'meshd_build_info{version="0.1.0",commit="abc",deno="2.9.6"} 1\n' +
      'meshd_status_problems{kind="invalid_object"} 1\n' +
      'meshd_status_problems{kind="listener_unbound"} 0\n' +
      'meshd_status_problem_info{kind="invalid_object",message="a.yaml: \\"x\\" is bad"} 1\n' +
      'meshd_config_source{source="leader"} 1\n',
  ));
  assert.deepEqual(f, {
    configVersion: 7,
    datapath: "ebpf",
    datapathReason: "kernel 6.1",
    leading: true,
    connected: false,
    errors: { "config updates failed to apply": 2, "dropped (write_timeout)": 3 },
    build: { version: "0.1.0", commit: "abc", deno: "2.9.6" },
    problems: { invalid_object: 1, listener_unbound: 0 },
    problemMessages: [{ kind: "invalid_object", message: 'a.yaml: "x" is bad' }],
    configSource: "leader",
  });
  // A meshd older than these metrics: none of them, and no build.
  const old = nodeFacts(metrics(7, "ebpf"));
  assert.equal(old.build, undefined);
  assert.deepEqual([old.problems, old.problemMessages, old.configSource], [{}, [], undefined]);
});

Deno.test("buildStatus() and formatStatus() show skew, data paths and the last errors", () => {
  const view: MeshView = {
    nodes: [
      { name: "n1", ready: true, kernelVersion: "6.1.0" },
      { name: "n2", ready: true, kernelVersion: "5.4.0" },
      { name: "n3", ready: false, kernelVersion: "6.1.0" },
    ],
    daemonSet: { desired: 3, current: 3, ready: 2, updated: 3, available: 2, observed: true },
    pods: [
      pod("meshd-a", "n1"),
      pod("meshd-b", "n2"),
      pod("meshd-c", "n3", {
        ready: false,
        waiting: "CrashLoopBackOff",
        restarts: 4,
        lastTermination: "Error, exit code 1, at 2026-11-29T16:00:00Z",
      }),
    ],
    forbidden: [],
  };
  const s = buildStatus(
    { server: "https://127.0.0.1:6443", kubernetes: "v1.37.2", leader: "meshd-a" },
    view,
    [
      {
        node: view.nodes[0]!,
        pod: view.pods[0]!,
        metrics: metrics(
          9,
          "ebpf",
          'meshd_build_info{version="0.1.0",commit="5867a54c0ffee0000000000000000000000000aa",' +
            'deno="2.9.6"} 1\n' +
            'meshd_status_problems{kind="invalid_object"} 0\n' +
            'meshd_status_problems{kind="listener_unbound"} 4\n' +
            'meshd_status_problems{kind="config_warning"} 1\n' +
            'meshd_status_problems{kind="save_failed"} 2\n' +
            'meshd_status_problem_info{kind="listener_unbound",message="Cannot bind tcp ' +
            'listener on \\"0.0.0.0:5432\\" for \\"shop/db:5432\\": Address in use"} 1\n' +
            'meshd_status_problem_info{kind="config_warning",message="skipped kind Widget"} 1\n' +
            'meshd_config_source{source="disk"} 1\n',
        ),
      },
      {
        node: view.nodes[1]!,
        pod: view.pods[1]!,
        metrics: metrics(8, "userspace", 'meshd_dropped_total{reason="loop"} 1\n'),
      },
      { node: view.nodes[2]!, pod: view.pods[2]!, metrics: null, metricsError: "503 refused" },
    ],
    [{
      at: "2026-11-29T16:00:01Z",
      object: "Pod/meshd-c",
      reason: "BackOff",
      message: "Back-off restarting failed container",
      count: 5,
    }],
  );
  assert.equal(s.nodesReady, 2);
  assert.equal(s.nodes, 3);
  assert.deepEqual(s.configVersions, { min: 8, max: 9 });
  assert.deepEqual(s.versions, [
    "0.1.0 (commit 5867a54, deno 2.9.6)",
    "meshd:0.1.0 (image tag)",
  ]);
  assert.deepEqual(s.images, ["meshd:0.1.0"]);
  assert.deepEqual(s.perNode[0]!.problems, {
    invalid_object: 0,
    listener_unbound: 4,
    config_warning: 1,
    save_failed: 2,
  });
  assert.equal(s.perNode[0]!.configSource, "disk");
  assert.equal(
    formatStatus(s),
    [
      "Cluster:    https://127.0.0.1:6443, Kubernetes v1.37.2",
      "meshd:      0.1.0 (commit 5867a54, deno 2.9.6) on n1; meshd:0.1.0 (image tag) on n2, n3",
      "DaemonSet:  desired 3, ready 2, up to date 3, available 2",
      "Leader:     meshd-a",
      "Nodes:      2/3 with a ready meshd",
      "Config:     skew: v8 to v9 (n2 v8 behind)",
      "Data path:  ebpf 1, userspace 1, unknown 1",
      "",
      "NODE  POD               READY  CONFIG  DATA PATH",
      "n1    meshd-a (leader)  yes    v9      ebpf",
      "n2    meshd-b           yes    v8      userspace: kernel 5.4 is older than 5.10",
      "n3    meshd-c           no     ?       ? (503 refused)",
      "",
      "Last errors:",
      "  n1 meshd-a: routes by the config saved on disk (no leader reached yet)",
      '  n1 meshd-a: listener not bound: Cannot bind tcp listener on "0.0.0.0:5432" for ' +
      '"shop/db:5432": Address in use',
      "  n1 meshd-a: listener not bound: 3 more (its /api/status lists them all)",
      "  n1 meshd-a: config saves failed: 2",
      "  n2 meshd-b: dropped (loop): 1",
      "  n3 meshd-c: waiting, CrashLoopBackOff",
      "  n3 meshd-c: 4 restarts, last ended Error, exit code 1, at 2026-11-29T16:00:00Z",
      "  2026-11-29T16:00:01Z Pod/meshd-c BackOff (x5): Back-off restarting failed container",
      "",
    ].join("\n"),
  );
});

Deno.test("formatStatus() says when every node agrees and nothing went wrong", () => {
  const view: MeshView = {
    nodes: [{ name: "n1", ready: true, kernelVersion: "6.1.0" }],
    daemonSet: { desired: 1, current: 1, ready: 1, updated: 1, available: 1, observed: true },
    pods: [pod("meshd-a", "n1")],
    forbidden: [],
  };
  const out = formatStatus(buildStatus(
    { server: "https://s", kubernetes: "v1.37.2", leader: null },
    view,
    [{ node: view.nodes[0]!, pod: view.pods[0]!, metrics: metrics(3, "ebpf") }],
    [],
  ));
  assert.match(out, /^Leader: {5}none \(no meshd holds the Lease\)$/m);
  assert.match(out, /^Config: {5}v3 on every node read$/m);
  assert.match(out, /\nLast errors: none\n$/);
});
