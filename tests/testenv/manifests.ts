/**
 * meshd's manifests as the kustomization lists them, and applying them to the test cluster
 * the way `kubectl apply -k --server-side` does.
 *
 * @module
 */
import { parse, parseAllDocuments } from "yaml";
import { serverSideApply, type TestCluster, waitEstablished } from "./cluster.ts";

const MANIFESTS = new URL("../../manifests/", import.meta.url).pathname;

/** One manifest object, as much of it as the tests read. */
export type ManifestObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  [k: string]: unknown;
};

/** Every object of every file `manifests/kustomization.yaml` lists, in order. */
export async function kustomizationObjects(): Promise<ManifestObject[]> {
  const k = parse(await Deno.readTextFile(`${MANIFESTS}kustomization.yaml`)) as {
    resources: string[];
  };
  const out: ManifestObject[] = [];
  for (const file of k.resources) {
    for (const doc of parseAllDocuments(await Deno.readTextFile(`${MANIFESTS}${file}`))) {
      if (doc.errors.length) throw new Error(`${file}: ${doc.errors[0]}`);
      const o = doc.toJS();
      if (o) out.push(o);
    }
  }
  return out;
}

/**
 * Applies `objects` (default: the kustomization's) by server-side apply, CRDs and namespaces
 * first as kubectl orders them, and waits for the CRDs to be Established.
 */
export async function applyManifests(
  cluster: TestCluster,
  objects?: ManifestObject[],
): Promise<ManifestObject[]> {
  const all = objects ?? await kustomizationObjects();
  const order = (o: ManifestObject) =>
    ["CustomResourceDefinition", "Namespace"].indexOf(o.kind) + 1 || 9;
  for (const o of [...all].sort((a, b) => order(a) - order(b))) {
    await serverSideApply(cluster, o).catch((e) => {
      throw new Error(`${o.kind} ${o.metadata.name} was refused: ${e.message}`);
    });
  }
  for (const c of all.filter((o) => o.kind === "CustomResourceDefinition")) {
    await waitEstablished(cluster, c.metadata.name);
  }
  return all;
}

/** The kinds that make up meshd's identity and permissions in the manifests. */
const RBAC_KINDS = [
  "Namespace",
  "ServiceAccount",
  "ClusterRole",
  "ClusterRoleBinding",
  "Role",
  "RoleBinding",
];

/**
 * Gives the test cluster meshd's namespace, ServiceAccount and RBAC from the manifests, and
 * returns a kubeconfig that authenticates as that ServiceAccount with a token from the
 * TokenRequest API: meshd then runs with exactly the permissions it is deployed with, and has
 * a token the leader can review.
 */
export async function meshdKubeconfig(cluster: TestCluster): Promise<string> {
  const objects = (await kustomizationObjects()).filter((o) => RBAC_KINDS.includes(o.kind));
  await applyManifests(cluster, objects);
  return await tokenKubeconfig(cluster, "meshd", "meshd");
}

/** A kubeconfig that uses a ServiceAccount's bearer token instead of the admin's cert. */
export async function tokenKubeconfig(
  cluster: TestCluster,
  ns: string,
  sa: string,
): Promise<string> {
  const r = await cluster.must("POST", `/api/v1/namespaces/${ns}/serviceaccounts/${sa}/token`, {
    apiVersion: "authentication.k8s.io/v1",
    kind: "TokenRequest",
    spec: { expirationSeconds: 3600 },
  });
  const token = (r["status"] as { token: string }).token;
  const file = `${cluster.dir}/${ns}-${sa}.kubeconfig`;
  await Deno.writeTextFile(
    file,
    [
      "apiVersion: v1",
      "kind: Config",
      "clusters:",
      "- name: test",
      "  cluster:",
      `    server: ${cluster.server}`,
      `    certificate-authority-data: ${btoa(cluster.caCert)}`,
      "users:",
      `- name: ${sa}`,
      "  user:",
      `    token: ${token}`,
      "contexts:",
      "- name: test",
      `  context: { cluster: test, user: ${sa} }`,
      "current-context: test",
      "",
    ].join("\n"),
  );
  return file;
}
