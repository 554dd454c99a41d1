/**
 * `meshd check`, `meshd status` and `meshd stat` against the real-node tier, run as from a
 * laptop: the admin's kubeconfig, and every node's metrics read through the API server's pod
 * proxy. The API server reaches the nodes' network through an egress proxy (see
 * `withRealNodes({ egress: true })`), as a control plane reaches its nodes. `--pre` before the
 * install; after it, the DaemonSet rolled out, the leader, each node's config version and eBPF
 * data path, and the golden signals of traffic sent through each node's meshd in the window.
 * Prints each command's output as a user would see it.
 */
import assert from "node:assert/strict";
import { type CliRun, meshd } from "../testenv/cli.ts";
import { waitFor } from "../testenv/process.ts";
import {
  APP_NS,
  appNamespace,
  installTarget,
  meshdReady,
  podsReady,
  withRealNodes,
} from "./_setup.ts";

type Check = { name: string; level: string; message: string };

function checks(r: CliRun): Check[] {
  try {
    return (JSON.parse(r.out) as { checks: Check[] }).checks;
  } catch {
    throw new Error(`not JSON:\n${r.out}${r.err}`);
  }
}

function show(title: string, r: CliRun): void {
  console.log(`--- ${title} (exit ${r.code})\n${r.out}${r.err}`);
}

Deno.test({
  name: "meshd check, status and stat on two real nodes, as from a laptop",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await withRealNodes(async (c, nodes, egress) => {
    const kc = `--kubeconfig=${c.kubeconfig}`;
    // This machine's own data path is not the question here.
    const here = `--bpffs=${c.dir}/no-bpffs`;

    const pre = await meshd("check", "--pre", kc, here);
    show("meshd check --pre", pre);
    assert.equal(pre.code, 0, "nothing blocks the install");
    const preJson = checks(await meshd("check", "--pre", "-o", "json", kc, here));
    const kernels = preJson.filter((x) => x.name === "kernel");
    assert.equal(kernels.length, nodes.nodes.length);
    for (const k of kernels) {
      assert.equal(k.level, "ok", k.message);
      assert.match(k.message, new RegExp(`: kernel ${Deno.osRelease().replace(/\./g, "\\.")} `));
    }
    assert.equal(preJson.find((x) => x.name === "coredns")?.level, "ok");

    const target = await installTarget(c.dir);
    if (target.note) console.log(target.note);
    const apply = await c.kubectl("apply", "--server-side", "-k", target.path);
    assert.equal(apply.code, 0, `kubectl apply -k ${target.path} failed:\n${apply.out}`);
    const meshdPods = await meshdReady(c, nodes);

    const wait = await meshd("check", "--wait", "3m", kc, here);
    show("meshd check --wait 3m", wait);
    assert.equal(wait.code, 0);
    const after = checks(await meshd("check", "-o", "json", kc, here));
    const byName = (n: string) => after.filter((x) => x.name === n);
    assert.equal(byName("daemonset")[0]?.level, "ok");
    assert.equal(byName("leader")[0]?.level, "ok");
    assert.equal(byName("coredns")[0]?.level, "ok", "the meshd-prepare Job ran");
    const nodeLines = byName("node");
    assert.equal(nodeLines.length, nodes.nodes.length);
    for (const l of nodeLines) {
      assert.equal(l.level, "ok", l.message);
      assert.match(l.message, /, config v\d+, ebpf$/);
    }
    assert.ok(
      meshdPods.every((p) =>
        (egress!.requests.get(`${p.status.podIP}:9002`) ?? []).includes("GET /metrics")
      ),
      `every node's metrics through the pod proxy: ${JSON.stringify([...egress!.requests])}`,
    );

    // In a meshd pod, as its own ServiceAccount (scripts/kind-up does this): what that identity
    // may not read is skipped, not failed, and the data path line is that node's answer.
    const inPod = await c.kubectl(
      "-n",
      "meshd",
      "exec",
      meshdPods[0]!.metadata.name,
      "-c",
      "meshd",
      "--",
      "meshd",
      "check",
      "-o",
      "json",
    );
    // (kubectl's output is the command's stdout, then its stderr: the JSON is the first object)
    const podJson = /^\{[\s\S]*?^\}$/m.exec(inPod.out)?.[0] ?? inPod.out;
    const podChecks = checks({ code: inPod.code, out: podJson, err: "" });
    console.log(
      `--- meshd check in ${meshdPods[0]!.metadata.name} (exit ${inPod.code})\n` +
        podChecks.map((x) => `${x.level} ${x.name} ${x.message}`).join("\n"),
    );
    assert.equal(inPod.code, 0, inPod.out);
    assert.equal(podChecks.find((x) => x.name === "daemonset")?.level, "skip");
    assert.equal(podChecks.find((x) => x.name === "leader")?.level, "ok");
    assert.equal(podChecks.find((x) => x.name === "rbac")?.level, "ok");
    // The Role meshd-pod-proxy: in a pod, every node's metrics are read too.
    const podNodes = podChecks.filter((x) => x.name === "node");
    assert.equal(podNodes.length, nodes.nodes.length);
    for (const l of podNodes) assert.match(l.message, /, config v\d+, ebpf$/);
    // meshd_build_info, the same on every node
    const versions = byName("versions")[0];
    assert.equal(versions?.level, "ok", JSON.stringify(versions));
    assert.match(versions!.message, /^every node runs meshd \d+\.\d+\.\d+ \(commit \S+, deno /);

    const status = await meshd("status", kc);
    show("meshd status", status);
    assert.equal(status.code, 0);
    const s = JSON.parse((await meshd("status", "-o", "json", kc)).out);
    assert.equal(s.nodesReady, nodes.nodes.length);
    assert.ok(meshdPods.some((p) => p.metadata.name === s.leader), `leader ${s.leader}`);
    assert.equal(s.configVersions.min, s.configVersions.max, "no skew");
    assert.deepEqual(s.versions, [versions!.message.replace("every node runs meshd ", "")]);
    assert.deepEqual(s.perNode.map((n: { datapath: string }) => n.datapath), ["ebpf", "ebpf"]);

    // Traffic: from a client pod on each node, 50 requests through its node's meshd.
    await appNamespace(c, APP_NS);
    for (const n of nodes.nodes) {
      await c.must("POST", `/api/v1/namespaces/${APP_NS}/pods`, {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name: `whoami-${n.index}`, namespace: APP_NS, labels: { app: "whoami" } },
        spec: {
          nodeName: n.name,
          terminationGracePeriodSeconds: 1,
          automountServiceAccountToken: false,
          containers: [{
            name: "whoami",
            image: "meshd-test/client:1",
            imagePullPolicy: "Never",
            command: ["/usr/local/bin/loadgen", "serve"],
            env: [{ name: "NODE_NAME", valueFrom: { fieldRef: { fieldPath: "spec.nodeName" } } }],
            ports: [{ containerPort: 8080 }],
            readinessProbe: { httpGet: { path: "/ready", port: 8080 }, periodSeconds: 2 },
          }],
        },
      });
    }
    await c.must("POST", `/api/v1/namespaces/${APP_NS}/services`, {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "whoami", namespace: APP_NS },
      spec: { selector: { app: "whoami" }, ports: [{ name: "web", port: 80, targetPort: 8080 }] },
    });
    const app = await podsReady(c, nodes, APP_NS, "app=whoami", nodes.nodes.length);
    const url = (ip: string) => `http://${ip}:5000/`;
    const host = `Host: whoami.${APP_NS}.mesh`;
    const loop = (pod: string, ip: string, count: number) =>
      c.kubectl(
        "-n",
        APP_NS,
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        `ok=0; for i in $(seq ${count}); do busybox wget -q -O /dev/null --header "${host}" ` +
          `${url(ip)} && ok=$((ok+1)); done; echo ok=$ok`,
      );
    // The mesh routes on both nodes before the window opens.
    for (const p of app) {
      const ip = meshdPods.find((m) => m.spec.nodeName === p.spec.nodeName)!.status.podIP!;
      await waitFor(
        `whoami through ${ip}:5000 from ${p.metadata.name}`,
        async () => {
          const r = await loop(p.metadata.name, ip, 1);
          return r.out.includes("ok=1") ? true : undefined;
        },
        60_000,
        1_000,
      );
    }
    const seen = (ip: string) => (egress!.requests.get(`${ip}:9002`) ?? []).length;
    const ips = meshdPods.map((p) => p.status.podIP!);
    const start = ips.map(seen);
    // Two at once over the same traffic: JSON to check, the table to show.
    const stat = meshd("stat", APP_NS, "--window", "30s", "-o", "json", kc);
    const table = meshd("stat", APP_NS, "--window", "30s", kc);
    await waitFor(
      "both stats' first read of every node",
      () => ips.every((ip, i) => seen(ip) >= start[i]! + 2) ? true : undefined,
      15_000,
    );
    const sent = await Promise.all(app.map((p) => {
      const ip = meshdPods.find((m) => m.spec.nodeName === p.spec.nodeName)!.status.podIP!;
      return loop(p.metadata.name, ip, 50);
    }));
    for (const r of sent) assert.match(r.out, /ok=50/, r.out);
    const r = await stat;
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out);
    console.log(`--- meshd stat ${APP_NS} --window 30s -o json\n${r.out}`);
    const web = j.services.find((x: { service: string }) => x.service === `${APP_NS}/whoami`);
    assert.ok(web, r.out);
    assert.equal(j.nodes, nodes.nodes.length);
    assert.equal(web.requests, 50 * nodes.nodes.length, "every request in the window, once");
    assert.equal(web.successRate, 1);
    assert.equal(web.nodes, nodes.nodes.length);
    assert.ok(web.p50 !== null && web.p99 >= web.p50);
    const shown = await table;
    show(`meshd stat ${APP_NS} --window 30s`, shown);
    assert.equal(shown.code, 0);
    assert.match(shown.out, new RegExp(`^${APP_NS}/whoami +80 +http +100\\.00% `, "m"));
  }, { egress: true });
});
