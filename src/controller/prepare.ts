import type { KubeApi, RawObject } from "../kube/mod.ts";
import { addMeshBlock, currentMeshBlock, type MeshBlockEdit, removeMeshBlock } from "./corefile.ts";
import { clusterIps, SHADOW_SELECTOR } from "./shadow_services.ts";

/** Where the CoreDNS Corefile lives. */
export interface CoreDnsRef {
  namespace: string;
  /** The ConfigMap; its `Corefile` key holds the Corefile. */
  name: string;
}

/** A cluster that is not ready for what was asked, said so the user can act. */
export class PrepareError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PrepareError";
  }
}

const status = (e: unknown): number => (e as { status?: number }).status ?? 0;

/** The ClusterIPs of the mesh DNS Service, in the order the API gives them. */
export async function dnsServiceAddresses(
  api: KubeApi,
  meshNamespace: string,
  service: string,
): Promise<string[]> {
  let svc: RawObject;
  try {
    svc = await api.request("GET", `/api/v1/namespaces/${meshNamespace}/services/${service}`);
  } catch (e) {
    if (status(e) === 404) {
      throw new PrepareError(
        `Cannot find the Service "${meshNamespace}/${service}" that CoreDNS should forward to; ` +
          "install meshd first (kubectl apply -k manifests/)",
      );
    }
    throw e;
  }
  const ips = clusterIps(svc);
  if (ips.length === 0) {
    throw new PrepareError(`The Service "${meshNamespace}/${service}" has no ClusterIP`);
  }
  return ips;
}

/** The CoreDNS ConfigMap and its Corefile. */
async function readCorefile(
  api: KubeApi,
  ref: CoreDnsRef,
): Promise<{ cm: RawObject; data: Record<string, string>; corefile: string }> {
  let cm: RawObject;
  try {
    cm = await api.request("GET", `/api/v1/namespaces/${ref.namespace}/configmaps/${ref.name}`);
  } catch (e) {
    if (status(e) === 404) {
      throw new PrepareError(
        `Cannot find the CoreDNS ConfigMap "${ref.namespace}/${ref.name}"; ` +
          "pass --coredns-namespace and --coredns-configmap if the cluster keeps it elsewhere",
      );
    }
    throw e;
  }
  const data = (cm["data"] ?? {}) as Record<string, string>;
  const corefile = data["Corefile"];
  if (corefile === undefined) {
    throw new PrepareError(
      `The ConfigMap "${ref.namespace}/${ref.name}" has no Corefile key; is it CoreDNS's?`,
    );
  }
  return { cm, data, corefile };
}

/**
 * Reads the Corefile, changes it with `edit`, and writes it back only when it changed, with
 * the resource version it read, so an edit made meanwhile by someone else is never lost: a
 * conflict reads again and retries.
 */
async function editCorefile(
  api: KubeApi,
  ref: CoreDnsRef,
  edit: (corefile: string) => string,
): Promise<{ before: string; after: string }> {
  for (let attempt = 1;; attempt++) {
    const { cm, data, corefile: before } = await readCorefile(api, ref);
    const after = edit(before);
    if (after === before) return { before, after };
    try {
      await api.request(
        "PUT",
        `/api/v1/namespaces/${ref.namespace}/configmaps/${ref.name}`,
        { ...cm, data: { ...data, Corefile: after } },
      );
      return { before, after };
    } catch (e) {
      if (status(e) !== 409 || attempt >= 5) throw e;
    }
  }
}

/** What {@linkcode prepareCoreDns} did. */
export interface PrepareResult {
  changed: boolean;
  upstreams: string[];
  /** The zones meshd's block forwards, the domain first. */
  zones: string[];
  /** Aliases left out because a block meshd did not add serves them (Traefik Mesh's own). */
  leftOut: string[];
  /** Whether the Corefile loads itself again on change (CoreDNS's reload plugin). */
  reloads: boolean;
}

/**
 * Puts meshd's server block into the CoreDNS Corefile: the mesh domain and its aliases
 * forwarded to the mesh DNS Service. Running it again changes nothing; a moved Service address
 * replaces the block, and an alias whose other block is gone joins it.
 */
export async function prepareCoreDns(
  api: KubeApi,
  o: {
    meshNamespace: string;
    dnsService: string;
    domain: string;
    aliases?: readonly string[];
    coredns: CoreDnsRef;
    cacheSeconds: number;
  },
): Promise<PrepareResult> {
  const upstreams = await dnsServiceAddresses(api, o.meshNamespace, o.dnsService);
  // the edit of the last attempt, the one written
  const last: { edit?: MeshBlockEdit } = {};
  const { before, after } = await editCorefile(api, o.coredns, (c) => {
    const edit = addMeshBlock(c, {
      domain: o.domain,
      aliases: o.aliases ?? [],
      upstreams,
      cacheSeconds: o.cacheSeconds,
    });
    last.edit = edit;
    return edit.corefile;
  });
  return {
    changed: after !== before,
    upstreams,
    zones: last.edit!.zones,
    leftOut: last.edit!.leftOut,
    reloads: /^\s*reload\b/m.test(after),
  };
}

/** Takes meshd's block out of the CoreDNS Corefile, leaving the rest as it was. */
export async function cleanupCoreDns(api: KubeApi, coredns: CoreDnsRef): Promise<boolean> {
  const { before, after } = await editCorefile(api, coredns, removeMeshBlock);
  return after !== before;
}

/** meshd's block in the CoreDNS Corefile as it is now, or null. */
export async function coreDnsBlock(api: KubeApi, coredns: CoreDnsRef): Promise<string | null> {
  return currentMeshBlock((await readCorefile(api, coredns)).corefile);
}

/** The CoreDNS Corefile as it is now. */
export async function coreDnsCorefile(api: KubeApi, coredns: CoreDnsRef): Promise<string> {
  return (await readCorefile(api, coredns)).corefile;
}

/** Deletes every shadow Service meshd made in the mesh namespace; returns how many. */
export async function deleteShadowServices(api: KubeApi, meshNamespace: string): Promise<number> {
  const base = `/api/v1/namespaces/${meshNamespace}/services`;
  const list = await api.request(
    "GET",
    `${base}?labelSelector=${encodeURIComponent(SHADOW_SELECTOR)}`,
  );
  let n = 0;
  for (const item of (list["items"] ?? []) as RawObject[]) {
    const name = (item["metadata"] as { name: string }).name;
    try {
      await api.request("DELETE", `${base}/${name}`);
      n++;
    } catch (e) {
      if (status(e) !== 404) throw e;
    }
  }
  return n;
}

/** Who holds the controller Lease now, if anyone does. */
export async function leaseHolder(
  api: KubeApi,
  meshNamespace: string,
  leaseName: string,
  now: number,
): Promise<string | null> {
  let lease: RawObject;
  try {
    lease = await api.request(
      "GET",
      `/apis/coordination.k8s.io/v1/namespaces/${meshNamespace}/leases/${leaseName}`,
    );
  } catch (e) {
    if (status(e) === 404) return null;
    throw e;
  }
  const spec = (lease["spec"] ?? {}) as {
    holderIdentity?: string;
    renewTime?: string;
    leaseDurationSeconds?: number;
  };
  if (!spec.holderIdentity || !spec.renewTime) return null;
  const until = Date.parse(spec.renewTime) + (spec.leaseDurationSeconds ?? 0) * 1000;
  return until > now ? spec.holderIdentity : null;
}
