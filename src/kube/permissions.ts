import type { KubeApi } from "./api.ts";

/** One thing meshd does through the API, as an access review asks it. */
export interface Permission {
  verb: string;
  group: string;
  resource: string;
  /** A subresource (`proxy` of `pods`), when it is one. */
  subresource?: string;
  /** Namespace; absent for every namespace. */
  namespace?: string;
  /** One object by name, when meshd touches only that one. */
  name?: string;
  /** Which part of meshd needs it, for the message when it is missing. */
  why: string;
}

/**
 * What `meshd run --provider kube` does through the API: watch the topology everywhere, and in
 * its own namespace elect a leader and keep the shadow Services. `manifests/rbac.yaml` grants
 * these, which a test checks.
 */
export function runPermissions(meshNamespace: string): Permission[] {
  const watch = (group: string, resource: string, why: string): Permission[] =>
    ["list", "watch"].map((verb) => ({ verb, group, resource, why }));
  const own = (group: string, resource: string, verbs: string[], why: string): Permission[] =>
    verbs.map((verb) => ({ verb, group, resource, namespace: meshNamespace, why }));
  return [
    ...watch("", "services", "the topology"),
    ...watch("discovery.k8s.io", "endpointslices", "the topology"),
    ...watch("", "pods", "access control (Pod IP to ServiceAccount)"),
    ...watch("access.smi-spec.io", "traffictargets", "SMI access control"),
    ...watch("specs.smi-spec.io", "httproutegroups", "SMI route specs"),
    ...watch("specs.smi-spec.io", "tcproutes", "SMI route specs"),
    ...watch("split.smi-spec.io", "trafficsplits", "SMI traffic splits"),
    ...own("coordination.k8s.io", "leases", ["get", "create", "update"], "leader election"),
    ...own("coordination.k8s.io", "leases", ["list", "watch"], "finding the leader"),
    {
      verb: "create",
      group: "authentication.k8s.io",
      resource: "tokenreviews",
      why: "checking that a node asking for config is a meshd pod",
    },
    ...own("", "services", ["list", "watch", "patch", "delete"], "shadow Services and mesh DNS"),
  ];
}

/** What `meshd prepare` and `meshd cleanup` do besides the shadow Services. */
export function preparePermissions(
  meshNamespace: string,
  coredns: { namespace: string; name: string },
): Permission[] {
  return [
    {
      verb: "get",
      group: "",
      resource: "services",
      namespace: meshNamespace,
      why: "the DNS Service",
    },
    ...["get", "update"].map((verb) => ({
      verb,
      group: "",
      resource: "configmaps",
      namespace: coredns.namespace,
      name: coredns.name,
      why: `the CoreDNS Corefile (ConfigMap ${coredns.name})`,
    })),
  ];
}

/**
 * What installing meshd (`kubectl apply --server-side -k manifests/`, then the prepare Job)
 * creates, as `meshd check --pre` asks before it: the SMI CRDs, the namespace, the
 * PriorityClass, RBAC (whose bindings need the rights they grant: an installer holds them, or
 * may bind), the DaemonSet, the DNS Service and the Job; and the CoreDNS Corefile prepare edits.
 */
export function installPermissions(
  meshNamespace: string,
  coredns: { namespace: string; name: string },
): Permission[] {
  const cluster = (group: string, resource: string, why: string): Permission => ({
    verb: "create",
    group,
    resource,
    why,
  });
  const inMesh = (group: string, resource: string, why: string): Permission => ({
    verb: "create",
    group,
    resource,
    namespace: meshNamespace,
    why,
  });
  return [
    cluster("apiextensions.k8s.io", "customresourcedefinitions", "the SMI CRDs"),
    cluster("", "namespaces", `the namespace ${meshNamespace}`),
    cluster("scheduling.k8s.io", "priorityclasses", "meshd's PriorityClass"),
    cluster("rbac.authorization.k8s.io", "clusterroles", "meshd's RBAC"),
    cluster("rbac.authorization.k8s.io", "clusterrolebindings", "meshd's RBAC"),
    inMesh("", "serviceaccounts", "meshd's ServiceAccounts"),
    inMesh("rbac.authorization.k8s.io", "roles", "meshd's RBAC"),
    inMesh("rbac.authorization.k8s.io", "rolebindings", "meshd's RBAC"),
    inMesh("apps", "daemonsets", "the DaemonSet"),
    inMesh("", "services", "the DNS Service"),
    inMesh("batch", "jobs", "the meshd-prepare Job"),
    ...["roles", "rolebindings"].map((resource) => ({
      verb: "create",
      group: "rbac.authorization.k8s.io",
      resource,
      namespace: coredns.namespace,
      why: `meshd's access to the Corefile (ConfigMap ${coredns.name})`,
    })),
    ...runPermissions(meshNamespace).filter((p) => !p.namespace).map((p) => ({
      ...p,
      why: `granting meshd's ClusterRole (${p.why}) needs the right itself`,
    })),
    {
      verb: "get",
      group: "",
      resource: "pods",
      subresource: "proxy",
      namespace: meshNamespace,
      why: "granting the Role meshd-pod-proxy (check and status in a meshd pod read each " +
        "node's metrics) needs the right itself",
    },
  ];
}

/** Asks the API server whether the caller may do `p` (a SelfSubjectAccessReview). */
export async function mayI(api: KubeApi, p: Permission): Promise<boolean> {
  const r = await api.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {
    apiVersion: "authorization.k8s.io/v1",
    kind: "SelfSubjectAccessReview",
    spec: {
      resourceAttributes: {
        verb: p.verb,
        group: p.group,
        resource: p.resource,
        ...(p.subresource ? { subresource: p.subresource } : {}),
        ...(p.namespace ? { namespace: p.namespace } : {}),
        ...(p.name ? { name: p.name } : {}),
      },
    },
  });
  return ((r["status"] ?? {}) as { allowed?: boolean }).allowed === true;
}

/** `verb group/resource in namespace`, as a person reads it. */
export function describePermission(p: Permission): string {
  const res = (p.group ? `${p.resource}.${p.group}` : p.resource) +
    (p.subresource ? `/${p.subresource}` : "") + (p.name ? ` ${p.name}` : "");
  return `${p.verb} ${res} ${p.namespace ? `in ${p.namespace}` : "in every namespace"}`;
}
