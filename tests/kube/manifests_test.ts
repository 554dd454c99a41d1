/**
 * The manifests meshd ships: every object in the kustomization is accepted by a real API
 * server through server-side apply, the CRDs become Established, and the RBAC grants meshd's
 * ServiceAccount what it uses and no write outside its namespace.
 */
import assert from "node:assert/strict";
import { parse, parseAllDocuments } from "yaml";
import { serverSideApply, TestCluster, waitEstablished } from "../testenv/cluster.ts";

const MANIFESTS = new URL("../../manifests/", import.meta.url).pathname;

type Obj = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string } };

async function kustomizationObjects(): Promise<Obj[]> {
  const k = parse(await Deno.readTextFile(`${MANIFESTS}kustomization.yaml`)) as {
    resources: string[];
  };
  const out: Obj[] = [];
  for (const file of k.resources) {
    for (const doc of parseAllDocuments(await Deno.readTextFile(`${MANIFESTS}${file}`))) {
      if (doc.errors.length) throw new Error(`${file}: ${doc.errors[0]}`);
      const o = doc.toJS();
      if (o) out.push(o);
    }
  }
  return out;
}

Deno.test("manifests: every object applies, CRDs are established, RBAC is what meshd uses", async () => {
  const objects = await kustomizationObjects();
  const kinds = new Set(objects.map((o) => o.kind));
  for (const k of ["CustomResourceDefinition", "Namespace", "ServiceAccount", "DaemonSet"]) {
    assert.ok(kinds.has(k), `the kustomization has a ${k}`);
  }
  const cluster = await TestCluster.start({ controllerManager: false });
  try {
    // CRDs and the namespace first, as kubectl orders them.
    const order = (o: Obj) => ["CustomResourceDefinition", "Namespace"].indexOf(o.kind) + 1 || 9;
    for (const o of [...objects].sort((a, b) => order(a) - order(b))) {
      await serverSideApply(cluster, o).catch((e) => {
        throw new Error(`${o.kind} ${o.metadata.name} was refused: ${e.message}`);
      });
    }
    const crds = objects.filter((o) => o.kind === "CustomResourceDefinition");
    assert.equal(crds.length, 4);
    for (const c of crds) await waitEstablished(cluster, c.metadata.name);
    const ds = await cluster.must("GET", "/apis/apps/v1/namespaces/meshd/daemonsets/meshd");
    assert.equal((ds["metadata"] as { name: string }).name, "meshd");

    const can = async (verb: string, group: string, resource: string, namespace?: string) => {
      const r = await cluster.must(
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {
          apiVersion: "authorization.k8s.io/v1",
          kind: "SubjectAccessReview",
          spec: {
            user: "system:serviceaccount:meshd:meshd",
            groups: ["system:serviceaccounts", "system:serviceaccounts:meshd"],
            resourceAttributes: { verb, group, resource, ...(namespace ? { namespace } : {}) },
          },
        },
      );
      return (r["status"] as { allowed?: boolean }).allowed === true;
    };
    const needed: [string, string, string, string?][] = [
      ["watch", "", "services"],
      ["list", "", "pods"],
      ["watch", "discovery.k8s.io", "endpointslices"],
      ["watch", "access.smi-spec.io", "traffictargets"],
      ["watch", "specs.smi-spec.io", "httproutegroups"],
      ["watch", "specs.smi-spec.io", "tcproutes"],
      ["watch", "split.smi-spec.io", "trafficsplits"],
      ["update", "coordination.k8s.io", "leases", "meshd"],
      ["create", "coordination.k8s.io", "leases", "meshd"],
      ["patch", "", "services", "meshd"],
      ["delete", "", "services", "meshd"],
    ];
    for (const [verb, group, resource, ns] of needed) {
      assert.ok(await can(verb, group, resource, ns), `meshd may ${verb} ${group}/${resource}`);
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
