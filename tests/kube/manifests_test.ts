/**
 * The manifests meshd ships: `kubectl apply --server-side -k manifests/` (the kubectl built
 * with the test cluster) has every object accepted by a real API server, the CRDs become
 * Established, and the RBAC grants meshd's
 * ServiceAccount what it uses and no write outside its namespace.
 */
import assert from "node:assert/strict";
import { TestCluster } from "../testenv/cluster.ts";
import { kustomizationObjects } from "../testenv/manifests.ts";
import { preparePermissions, runPermissions } from "../../src/kube/mod.ts";

async function writeJson(dir: string, o: unknown): Promise<string> {
  const file = `${dir}/psa-check-${crypto.randomUUID().slice(0, 8)}.json`;
  await Deno.writeTextFile(file, JSON.stringify(o));
  return file;
}

Deno.test("manifests: every object applies, the pod is what a lossless rollout needs, Pod Security admits it only where privileged, RBAC is what meshd uses", async () => {
  const objects = await kustomizationObjects();
  const kinds = new Set(objects.map((o) => o.kind));
  for (const k of ["CustomResourceDefinition", "Namespace", "ServiceAccount", "DaemonSet"]) {
    assert.ok(kinds.has(k), `the kustomization has a ${k}`);
  }
  const cluster = await TestCluster.start({ controllerManager: false });
  try {
    // As users install meshd: kubectl apply -k, server-side.
    const applied = await cluster.kubectl("apply", "--server-side", "-k", "manifests/");
    assert.equal(applied.code, 0, applied.out);
    const reported = applied.out.trim().split("\n");
    assert.equal(reported.length, objects.length, applied.out);
    for (const o of objects) {
      assert.ok(
        reported.some((l) => l.endsWith(`/${o.metadata.name} serverside-applied`)),
        `kubectl applied ${o.kind} ${o.metadata.name}:\n${applied.out}`,
      );
    }
    const crds = objects.filter((o) => o.kind === "CustomResourceDefinition");
    assert.equal(crds.length, 4);
    const established = await cluster.kubectl(
      "wait",
      "--for=condition=Established",
      "--timeout=30s",
      ...crds.map((c) => `crd/${c.metadata.name}`),
    );
    assert.equal(established.code, 0, established.out);
    const ds = await cluster.must("GET", "/apis/apps/v1/namespaces/meshd/daemonsets/meshd");
    assert.equal((ds["metadata"] as { name: string }).name, "meshd");
    type Container = {
      args: string[];
      ports?: unknown[];
      env: { name: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
      securityContext: { capabilities: { add: string[]; drop: string[] } };
      readinessProbe: { httpGet: { port: number }; timeoutSeconds?: number };
      livenessProbe: { httpGet: { port: number }; timeoutSeconds?: number };
      volumeMounts: { name: string; mountPath: string }[];
    };
    const dsSpec = ds["spec"] as {
      updateStrategy: { rollingUpdate: { maxSurge: number; maxUnavailable: number } };
      template: { metadata: unknown; spec: Record<string, unknown> };
    };
    const podSpec = dsSpec.template.spec as {
      hostNetwork: boolean;
      enableServiceLinks: boolean;
      containers: Container[];
      nodeSelector: Record<string, string>;
      priorityClassName: string;
      volumes: { name: string; emptyDir?: unknown; hostPath?: { path: string } }[];
    };
    const container = podSpec.containers[0]!;
    const arg = (flag: string) =>
      container.args.find((a) => a.startsWith(`--${flag}=`))?.slice(flag.length + 3);
    // A rollout that loses nothing: the node's own address, surge, and a hand-over of ports.
    assert.equal(podSpec.hostNetwork, true);
    assert.deepEqual(dsSpec.updateStrategy.rollingUpdate, { maxSurge: 1, maxUnavailable: 0 });
    assert.equal(container.ports, undefined, "hostPorts would keep the surge pod off the node");
    assert.ok(container.args.includes("--reuse-port"));
    assert.ok(arg("drain-timeout"));
    // TCP and UDP on meshd's own event loop where it can run, else on Deno's I/O (no crash loop).
    assert.equal(arg("l4-worker"), "auto");
    // The kubelet's Docker-link variables for the meshd-dns Service include MESHD_DNS_PORT
    // (udp://<ip>:53), which meshd would read as its own --dns-port and refuse to start.
    assert.equal(podSpec.enableServiceLinks, false);
    // The DNS Service reaches the port meshd's DNS responder listens on.
    const dnsSvc = await cluster.must("GET", "/api/v1/namespaces/meshd/services/meshd-dns");
    const svcPorts = (dnsSvc["spec"] as { ports: { targetPort: number; port: number }[] }).ports;
    for (const p of svcPorts) {
      assert.equal(p.targetPort, Number(arg("dns-port")));
      assert.equal(p.port, 53);
    }
    // On the node's address, where kube-proxy sends: UDP answers leave from the bound address,
    // and from 0.0.0.0 the kernel may pick one (a Pod bridge's) that kube-proxy's NAT does not
    // match. Readiness is not published: the new pod of a rollout shares the old one's address.
    assert.equal(arg("dns-address"), "$(POD_IP)");
    assert.equal(arg("proxy-address"), "$(POD_IP)");
    assert.equal(
      (dnsSvc["spec"] as { publishNotReadyAddresses?: boolean }).publishNotReadyAddresses,
      true,
    );
    // Other nodes reach the leader's config stream at its address, on the port meshd serves.
    assert.equal(arg("distribution-address"), "0.0.0.0");
    assert.equal(
      container.env.find((e) => e.name === "POD_IP")?.valueFrom?.fieldRef?.fieldPath,
      "status.podIP",
    );
    // The API on the node's loopback; probes on the health port, with timeouts.
    assert.equal(arg("api-address"), "127.0.0.1");
    const healthPort = Number(arg("health-port"));
    assert.ok(healthPort > 0 && healthPort !== Number(arg("api-port")));
    for (const probe of [container.readinessProbe, container.livenessProbe]) {
      assert.equal(probe.httpGet.port, healthPort);
      assert.ok((probe.timeoutSeconds ?? 0) >= 1);
    }
    const tmpl = dsSpec.template.metadata as { annotations: Record<string, string> };
    assert.equal(tmpl.annotations["prometheus.io/port"], arg("metrics-port"));
    // The capabilities the eBPF path needs and no more; the host cgroup root at a private path.
    assert.deepEqual(container.securityContext.capabilities.drop, ["ALL"]);
    assert.deepEqual(container.securityContext.capabilities.add, [
      "BPF",
      "NET_ADMIN",
      "SYS_RESOURCE",
    ]);
    assert.equal(arg("cgroup"), "/run/meshd/cgroupv2");
    assert.ok(container.volumeMounts.some((m) => m.mountPath === "/run/meshd/cgroupv2"));
    assert.ok(!container.volumeMounts.some((m) => m.mountPath === "/sys/fs/cgroup"));
    const tmp = container.volumeMounts.find((m) => m.mountPath === "/tmp");
    assert.ok(podSpec.volumes.find((v) => v.name === tmp?.name)?.emptyDir, "a writable /tmp");
    assert.equal(podSpec.nodeSelector["kubernetes.io/os"], "linux");
    await cluster.must(
      "GET",
      `/apis/scheduling.k8s.io/v1/priorityclasses/${podSpec.priorityClassName}`,
    );

    // Pod Security admission, by the API server: the meshd namespace is labelled privileged
    // and admits the pod; a namespace that enforces baseline refuses it.
    const pod = (ns: string) => ({
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "meshd-psa-check", namespace: ns },
      spec: dsSpec.template.spec,
    });
    await cluster.must("POST", "/api/v1/namespaces/meshd/pods?dryRun=All", pod("meshd"));
    await cluster.must("POST", "/api/v1/namespaces", {
      apiVersion: "v1",
      kind: "Namespace",
      metadata: {
        name: "psa-baseline",
        labels: { "pod-security.kubernetes.io/enforce": "baseline" },
      },
    });
    await cluster.must("POST", "/api/v1/namespaces/psa-baseline/serviceaccounts", {
      apiVersion: "v1",
      kind: "ServiceAccount",
      metadata: { name: "meshd" },
    });
    const refused = await cluster.kubectl(
      "create",
      "--dry-run=server",
      "-f",
      await writeJson(cluster.dir, pod("psa-baseline")),
    );
    assert.notEqual(refused.code, 0, refused.out);
    assert.match(refused.out, /violates PodSecurity "baseline:latest"/);
    for (
      const why of ["host namespaces", "hostPath volumes", "non-default capabilities", "privileged"]
    ) {
      assert.match(refused.out, new RegExp(why), `baseline names ${why}: ${refused.out}`);
    }

    const canAs = (sa: string) =>
    async (
      verb: string,
      group: string,
      resource: string,
      namespace?: string,
      name?: string,
    ) => {
      const r = await cluster.must(
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {
          apiVersion: "authorization.k8s.io/v1",
          kind: "SubjectAccessReview",
          spec: {
            user: `system:serviceaccount:meshd:${sa}`,
            groups: ["system:serviceaccounts", "system:serviceaccounts:meshd"],
            resourceAttributes: {
              verb,
              group,
              // "pods/proxy": a subresource
              resource: resource.split("/")[0],
              ...(resource.includes("/") ? { subresource: resource.split("/")[1] } : {}),
              ...(namespace ? { namespace } : {}),
              ...(name ? { name } : {}),
            },
          },
        },
      );
      return (r["status"] as { allowed?: boolean }).allowed === true;
    };
    const can = canAs("meshd");
    const prepareCan = canAs("meshd-prepare");
    // What meshd run does (the list meshd check asks about); prepare/cleanup run as their own
    // ServiceAccount, and the DaemonSet's may not touch CoreDNS.
    for (const p of runPermissions("meshd")) {
      assert.ok(
        await can(p.verb, p.group, p.resource, p.namespace, p.name),
        `meshd may ${p.verb} ${p.group}/${p.resource} (${p.why})`,
      );
    }
    for (const p of preparePermissions("meshd", { namespace: "kube-system", name: "coredns" })) {
      assert.ok(
        await prepareCan(p.verb, p.group, p.resource, p.namespace, p.name),
        `meshd-prepare may ${p.verb} ${p.group}/${p.resource} (${p.why})`,
      );
      if (p.resource === "configmaps" && p.verb !== "get") {
        assert.ok(
          !(await can(p.verb, p.group, p.resource, p.namespace, p.name)),
          `the DaemonSet's meshd may not ${p.verb} ${p.resource} ${p.name} (it may read it, for meshd check)`,
        );
      }
    }
    for (
      const [verb, resource, ns] of [["delete", "services", "meshd"], ["get", "leases", "meshd"]]
    ) {
      assert.ok(
        await prepareCan(verb!, resource === "leases" ? "coordination.k8s.io" : "", resource!, ns),
        `cleanup may ${verb} ${resource}`,
      );
    }
    assert.ok(!(await prepareCan("list", "", "pods")), "meshd-prepare reads no pods");
    // meshd check and status in a meshd pod read each node's /metrics through the pod proxy:
    // GET, in meshd's namespace alone.
    assert.ok(await can("get", "", "pods/proxy", "meshd"), "meshd may get pods/proxy in meshd");
    assert.ok(!(await can("get", "", "pods/proxy", "default")), "nor in another namespace");
    assert.ok(!(await can("create", "", "pods/proxy", "meshd")), "no POST through the pod proxy");
    assert.ok(!(await can("get", "", "services/proxy", "meshd")), "no Service proxy");
    assert.ok(!(await prepareCan("get", "", "pods/proxy", "meshd")), "meshd-prepare: no proxy");
    const forbidden: [string, string, string, string?][] = [
      ["delete", "", "services", "default"],
      ["update", "coordination.k8s.io", "leases", "kube-system"],
      ["get", "", "secrets", "meshd"],
      ["create", "", "pods", "meshd"],
      ["patch", "", "configmaps", "kube-system"],
      ["update", "", "configmaps", "kube-system"],
    ];
    for (const [verb, group, resource, ns] of forbidden) {
      assert.ok(
        !(await can(verb, group, resource, ns)),
        `meshd may not ${verb} ${resource} in ${ns}`,
      );
    }
  } finally {
    await cluster.stop();
  }
});
