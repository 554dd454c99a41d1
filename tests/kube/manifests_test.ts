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

Deno.test("manifests: every object applies, CRDs are established, RBAC is what meshd uses", async () => {
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
    // The DNS Service reaches the DNS ports of the meshd container, which meshd listens on.
    const container = ((ds["spec"] as { template: { spec: { containers: unknown[] } } }).template
      .spec.containers[0]) as { ports: { name: string; containerPort: number }[]; args: string[] };
    const dnsSvc = await cluster.must("GET", "/api/v1/namespaces/meshd/services/meshd-dns");
    const svcPorts = (dnsSvc["spec"] as { ports: { targetPort: string; port: number }[] }).ports;
    for (const p of svcPorts) {
      const c = container.ports.find((c) => c.name === p.targetPort);
      assert.ok(c, `the container has a port named ${p.targetPort}`);
      assert.equal(c.containerPort, 5353, "meshd's default --dns-port");
      assert.equal(p.port, 53);
    }
    assert.ok(container.args.includes("--dns-address=0.0.0.0"));
    // Other nodes reach the leader's config stream at its pod IP, on the port meshd serves.
    assert.ok(container.args.includes("--distribution-address=0.0.0.0"));
    assert.equal(container.ports.find((p) => p.name === "distribution")?.containerPort, 9443);
    const env = (container as unknown as {
      env: { name: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
    }).env;
    assert.equal(
      env.find((e) => e.name === "POD_IP")?.valueFrom?.fieldRef?.fieldPath,
      "status.podIP",
    );

    const can = async (
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
            user: "system:serviceaccount:meshd:meshd",
            groups: ["system:serviceaccounts", "system:serviceaccounts:meshd"],
            resourceAttributes: {
              verb,
              group,
              resource,
              ...(namespace ? { namespace } : {}),
              ...(name ? { name } : {}),
            },
          },
        },
      );
      return (r["status"] as { allowed?: boolean }).allowed === true;
    };
    // What meshd run does (the list meshd check asks about), and what prepare/cleanup do.
    const needed = [
      ...runPermissions("meshd"),
      ...preparePermissions("meshd", { namespace: "kube-system", name: "coredns" }),
    ];
    for (const p of needed) {
      assert.ok(
        await can(p.verb, p.group, p.resource, p.namespace, p.name),
        `meshd may ${p.verb} ${p.group}/${p.resource} (${p.why})`,
      );
    }
    const forbidden: [string, string, string, string?][] = [
      ["delete", "", "services", "default"],
      ["update", "coordination.k8s.io", "leases", "kube-system"],
      ["get", "", "secrets", "meshd"],
      ["create", "", "pods", "meshd"],
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
