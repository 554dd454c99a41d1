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
