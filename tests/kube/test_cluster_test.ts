/**
 * The test cluster itself: it starts from the built binaries, its controllers run, and a new
 * run removes what a crashed one left.
 */
import assert from "node:assert/strict";
import { PREFIX, removeLeftovers, TestCluster } from "../testenv/cluster.ts";
import { registerNode, runPod } from "../testenv/kubelet.ts";
import { waitFor } from "../testenv/process.ts";

Deno.test("the test cluster runs a real API server whose controllers make EndpointSlices", async () => {
  const cluster = await TestCluster.start();
  try {
    const version = await cluster.must("GET", "/version");
    assert.equal(`${version["gitVersion"]}`.replace(/[-+].*/, ""), cluster.version);

    await registerNode(cluster, "node-a");
    await cluster.must("POST", "/api/v1/namespaces/default/services", {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "whoami" },
      spec: { selector: { app: "whoami" }, ports: [{ name: "web", port: 80, targetPort: 8080 }] },
    });
    await runPod(cluster, {
      name: "whoami-1",
      node: "node-a",
      ip: "203.0.113.10",
      labels: { app: "whoami" },
    });
    // kube-controller-manager's EndpointSlice controller, not the harness, writes this.
    const addresses = await waitFor(
      "an EndpointSlice for whoami with the Pod's address",
      async () => {
        const list = await cluster.must(
          "GET",
          "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dwhoami",
        );
        const items = list["items"] as { endpoints?: { addresses: string[] }[] }[];
        const found = items.flatMap((s) => s.endpoints ?? []).flatMap((e) => e.addresses);
        return found.length > 0 ? found : undefined;
      },
      30_000,
    );
    assert.deepEqual(addresses, ["203.0.113.10"]);
    const svc = await cluster.must("GET", "/api/v1/namespaces/default/services/whoami");
    const ip = (svc["spec"] as { clusterIP: string }).clusterIP;
    assert.match(ip, /^198\.51\.100\.\d+$/, "ClusterIPs come from the documentation range");
  } finally {
    await cluster.stop();
  }
  assert.equal(await Deno.stat(cluster.dir).then(() => true, () => false), false);
});

Deno.test("a new run stops the processes and removes the folders a crashed run left", async () => {
  // A run whose owner (a PID that does not exist) crashed, leaving a process and a folder.
  const dead = 4_000_000 + Math.floor(Math.random() * 100_000);
  const dir = `/tmp/${PREFIX}${dead}-1`;
  await Deno.mkdir(dir, { recursive: true });
  const orphan = new Deno.Command("sh", {
    args: ["-c", `sleep 120; : ${dir}`],
    stdout: "null",
    stderr: "null",
  }).spawn();
  // Another process the run did not start but whose PID it recorded by mistake is left alone.
  const stranger = new Deno.Command("sleep", { args: ["120"] }).spawn();
  try {
    await Deno.writeTextFile(`${dir}/pids`, `${orphan.pid}\n${stranger.pid}\n`);
    const removed = await removeLeftovers();
    assert.ok(removed.includes(dir), `removed ${JSON.stringify(removed)}`);
    assert.equal((await orphan.status).signal, "SIGKILL");
    assert.equal(await Deno.stat(dir).then(() => true, () => false), false);
    const strangerAlive = await Deno.stat(`/proc/${stranger.pid}`).then(() => true, () => false);
    assert.ok(strangerAlive, "a process that does not run from the folder is not stopped");
  } finally {
    try {
      orphan.kill("SIGKILL");
    } catch { /* already stopped */ }
    stranger.kill("SIGKILL");
    await stranger.status;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
