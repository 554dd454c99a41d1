import { parseServiceAnnotations } from "./annotations.ts";
import { abbreviate, ConfigError, describeSource } from "./errors.ts";
import { pathRegexSource, userRegex } from "./user_regex.ts";
import type {
  EndpointSlice,
  HttpMatch,
  HttpRouteGroup,
  IdentityRef,
  MeshObject,
  ObjectMeta,
  Pod,
  Service,
  ServicePort,
  SliceEndpoint,
  SourceRef,
  TcpRoute,
  TrafficSplit,
  TrafficTarget,
} from "./objects.ts";

/** The outcome of decoding one raw object. */
export type DecodeResult =
  | { status: "ok"; object: MeshObject }
  /**
   * Not an object meshd uses (another kind or API version); skip it with a warning, or, when
   * `quiet`, a debug line: a kind any application manifest carries, such as the
   * ServiceAccounts in Traefik Mesh's, which meshd learns from Pods instead.
   */
  | { status: "skipped"; reason: string; quiet?: boolean }
  /** A malformed object. `key` is its `Kind/namespace/name` when that much could be read. */
  | { status: "invalid"; error: ConfigError; key?: string };

/** API versions meshd reads, per kind. */
export const SUPPORTED_KINDS: Readonly<Record<string, string>> = {
  Service: "v1",
  Pod: "v1",
  EndpointSlice: "discovery.k8s.io/v1",
  TrafficTarget: "access.smi-spec.io/v1alpha2",
  HTTPRouteGroup: "specs.smi-spec.io/v1alpha3",
  TCPRoute: "specs.smi-spec.io/v1alpha3",
  TrafficSplit: "split.smi-spec.io/v1alpha3",
};

type Obj = Record<string, unknown>;

/** Thrown inside the decoders; turned into a {@linkcode ConfigError} at the top. */
class FieldError extends Error {
  /** `whole`: the message is a full sentence of its own, not a remark on the field. */
  constructor(readonly field: string, message: string, readonly whole = false) {
    super(message);
  }
}

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a map";
  // JSON has no NaN or Infinity (YAML's `.nan`, `.inf`): it would print them as null.
  if (typeof v === "number" && !Number.isFinite(v)) return `number ${v}`;
  return `${typeof v} ${abbreviate(JSON.stringify(v) ?? String(v))}`;
}

// Small typed readers. Each takes the parent object, the key and the parent's path.
function field(path: string, key: string | number): string {
  return typeof key === "number" ? `${path}[${key}]` : path ? `${path}.${key}` : key;
}
function optMap(o: Obj, key: string, path: string): Obj | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (!isObj(v)) throw new FieldError(field(path, key), `expected a map, found ${typeName(v)}`);
  return v;
}
function map(o: Obj, key: string, path: string): Obj {
  const v = optMap(o, key, path);
  if (!v) throw new FieldError(field(path, key), "is required");
  return v;
}
function optList(o: Obj, key: string, path: string): unknown[] {
  const v = o[key];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) {
    throw new FieldError(field(path, key), `expected a list, found ${typeName(v)}`);
  }
  return v;
}
function listOfMaps(o: Obj, key: string, path: string): [Obj, string][] {
  return optList(o, key, path).map((item, i) => {
    const p = field(field(path, key), i);
    if (!isObj(item)) throw new FieldError(p, `expected a map, found ${typeName(item)}`);
    return [item, p];
  });
}
function optStr(o: Obj, key: string, path: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") {
    throw new FieldError(field(path, key), `expected a string, found ${typeName(v)}`);
  }
  return v;
}
function str(o: Obj, key: string, path: string): string {
  const v = optStr(o, key, path);
  if (v === undefined || v === "") throw new FieldError(field(path, key), "is required");
  return v;
}
function optBool(o: Obj, key: string, path: string): boolean | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") {
    throw new FieldError(field(path, key), `expected true or false, found ${typeName(v)}`);
  }
  return v;
}
function int(o: Obj, key: string, path: string, min: number, max: number): number {
  const v = o[key];
  if (v === undefined || v === null) throw new FieldError(field(path, key), "is required");
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new FieldError(
      field(path, key),
      `expected an integer from ${min} to ${max}, found ${typeName(v)}`,
    );
  }
  return v;
}
function strMap(o: Obj, key: string, path: string): Record<string, string> {
  const m = optMap(o, key, path) ?? {};
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(m)) {
    // YAML turns `true` or `80` into non-strings; Kubernetes would reject them, and so do we.
    if (typeof v !== "string") {
      throw new FieldError(
        `${field(path, key)}["${k}"]`,
        `expected a string, found ${typeName(v)} (quote it)`,
      );
    }
    out[k] = v;
  }
  return out;
}
function strList(o: Obj, key: string, path: string): string[] {
  return optList(o, key, path).map((v, i) => {
    if (typeof v !== "string") {
      throw new FieldError(field(field(path, key), i), `expected a string, found ${typeName(v)}`);
    }
    return v;
  });
}
function oneOf<T extends string>(v: string, allowed: readonly T[], path: string): T {
  if (!(allowed as readonly string[]).includes(v)) {
    throw new FieldError(path, `expected one of ${allowed.join(", ")}, found "${abbreviate(v)}"`);
  }
  return v as T;
}
/**
 * Checks a user's regular expression as the proxy compiles it (`source`, by default `v`
 * itself), so that an object that decodes never fails to apply.
 */
function regex(v: string, path: string, source = v): string {
  try {
    userRegex(source);
  } catch (e) {
    // V8 says `Invalid regular expression: /<the compiled form>/<flags>: <why>`: the why alone.
    const why = (e as Error).message.replace(/^Invalid regular expression: \/.*\/[a-z]*: /s, "");
    throw new FieldError(
      path,
      /linear time/.test(why)
        ? `is a regular expression meshd cannot match in time linear in the input "${
          abbreviate(v)
        }" (such as backreferences, lookahead, (?i:...) groups, repetition counts in the hundreds)`
        : `is not a valid regular expression "${abbreviate(v)}" (${why})`,
    );
  }
  return v;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** RFC 1035 labels: what Kubernetes requires of a Service name. */
const DNS_1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
/** RFC 1123 subdomains: what Kubernetes requires of most other names. */
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const PROTOCOLS = ["TCP", "UDP", "SCTP"] as const;
/** `v1`, `discovery.k8s.io/v1`, `split.smi-spec.io/v1alpha3`: a group (or none) and a version. */
const API_VERSION = new RegExp(
  `^(${DNS_SUBDOMAIN.source.slice(1, -1)}/)?v[1-9][0-9]*((alpha|beta)[1-9][0-9]*)?$`,
);
const KIND = /^[A-Z][A-Za-z0-9]*$/;
/** The kinds of the core API group (`v1`): any other kind there is a mistake, not a skip. */
const CORE_KINDS = new Set([
  "Binding",
  "ComponentStatus",
  "ConfigMap",
  "Endpoints",
  "Event",
  "LimitRange",
  "Namespace",
  "Node",
  "PersistentVolume",
  "PersistentVolumeClaim",
  "Pod",
  "PodTemplate",
  "ReplicationController",
  "ResourceQuota",
  "Secret",
  "Service",
  "ServiceAccount",
  "Status",
]);

/**
 * Kinds a normal application manifest carries beside the ones meshd reads, by the API groups
 * they belong to (`""` is the core group): skipped without a warning.
 */
const MANIFEST_KINDS: Readonly<Record<string, readonly string[]>> = {
  ServiceAccount: [""],
  Namespace: [""],
  ConfigMap: [""],
  Secret: [""],
  Endpoints: [""],
  PersistentVolumeClaim: [""],
  Deployment: ["apps"],
  DaemonSet: ["apps"],
  StatefulSet: ["apps"],
  ReplicaSet: ["apps"],
  Job: ["batch"],
  CronJob: ["batch"],
  Role: ["rbac.authorization.k8s.io"],
  RoleBinding: ["rbac.authorization.k8s.io"],
  ClusterRole: ["rbac.authorization.k8s.io"],
  ClusterRoleBinding: ["rbac.authorization.k8s.io"],
  CustomResourceDefinition: ["apiextensions.k8s.io"],
  Ingress: ["networking.k8s.io"],
  NetworkPolicy: ["networking.k8s.io"],
  PodDisruptionBudget: ["policy"],
  HorizontalPodAutoscaler: ["autoscaling"],
};

/** A valid IPv4 address in dotted decimal, as Kubernetes takes it (no leading zeros). */
export function isIpv4(s: string): boolean {
  const parts = s.split(".");
  return parts.length === 4 &&
    parts.every((p) => /^(0|[1-9][0-9]{0,2})$/.test(p) && Number(p) <= 255);
}

/** A valid IPv6 address: eight groups, `::` once, a dotted IPv4 tail allowed. */
export function isIpv6(s: string): boolean {
  let text = s;
  let groups = 0;
  const v4 = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    if (!isIpv4(v4[2]!)) return false;
    text = v4[1]!.endsWith("::") ? v4[1]! : v4[1]!.slice(0, -1);
    groups = 2;
  }
  const halves = text.split("::");
  if (halves.length > 2) return false;
  const group = /^[0-9a-fA-F]{1,4}$/;
  for (const h of halves) {
    if (h === "") continue;
    const gs = h.split(":");
    if (!gs.every((g) => group.test(g))) return false;
    groups += gs.length;
  }
  return halves.length === 2 ? groups <= 7 : groups === 8;
}

function checkName(kind: string, name: string): void {
  if (kind === "Service") {
    if (!DNS_1035_LABEL.test(name) || name.length > 63) {
      throw new FieldError(
        "metadata.name",
        `expected a DNS-1035 label (at most 63 characters a-z, 0-9 and "-", starting with a letter), found "${
          abbreviate(name)
        }"`,
      );
    }
  } else if (!DNS_SUBDOMAIN.test(name) || name.length > 253) {
    throw new FieldError(
      "metadata.name",
      `expected a DNS-1123 subdomain (at most 253 characters a-z, 0-9, "-" and "."), found "${
        abbreviate(name)
      }"`,
    );
  }
}

/**
 * The object's namespace and name: once they are read, the object can be dropped alone, so
 * `named` hears of them before anything else of the object is checked (a name that is not a
 * DNS label, or a label or an annotation that is not a string, is that object's error, not its
 * file's).
 */
function decodeMeta(raw: Obj, kind: string, named: (ns: string, name: string) => void): ObjectMeta {
  const m = map(raw, "metadata", "");
  const name = str(m, "name", "metadata");
  const namespace = optStr(m, "namespace", "metadata") ?? "default";
  // Read, though perhaps not valid (`Web`): Kubernetes refuses such an object alone, and so
  // does meshd.
  named(namespace, name);
  checkName(kind, name);
  if (!DNS_LABEL.test(namespace) || namespace.length > 63) {
    throw new FieldError(
      "metadata.namespace",
      `expected a DNS label, found "${abbreviate(namespace)}"`,
    );
  }
  return {
    name,
    namespace,
    labels: strMap(m, "labels", "metadata"),
    annotations: strMap(m, "annotations", "metadata"),
  };
}

function decodeService(raw: Obj, meta: ObjectMeta): Service {
  const spec = map(raw, "spec", "");
  const ports: ServicePort[] = listOfMaps(spec, "ports", "spec").map(([p, path]) => {
    const port = int(p, "port", path, 1, 65535);
    const tp = p["targetPort"];
    let targetPort: number | string = port;
    if (typeof tp === "number") targetPort = int(p, "targetPort", path, 1, 65535);
    else if (typeof tp === "string") targetPort = targetPortOf(tp, field(path, "targetPort"));
    else if (tp !== undefined && tp !== null) {
      throw new FieldError(
        field(path, "targetPort"),
        `expected a number or a port name, found ${typeName(tp)}`,
      );
    }
    return {
      name: optStr(p, "name", path) ?? "",
      port,
      targetPort,
      protocol: oneOf(optStr(p, "protocol", path) ?? "TCP", PROTOCOLS, field(path, "protocol")),
    };
  });
  uniquePorts(ports);
  const clusterIP = optStr(spec, "clusterIP", "spec") ?? null;
  if (clusterIP && clusterIP !== "None" && !isIpv4(clusterIP) && !isIpv6(clusterIP)) {
    throw new FieldError(
      "spec.clusterIP",
      `expected an IP address or "None", found "${abbreviate(clusterIP)}"`,
    );
  }
  const what = `Service "${meta.namespace}/${meta.name}"`;
  const ann = parseServiceAnnotations(meta.annotations, what);
  if (!ann.ok) {
    const first = ann.problems[0]!;
    const message = ann.problems.map((p) => p.message).join("; ");
    throw new FieldError(`metadata.annotations["${first.key}"]`, message, true);
  }
  return {
    kind: "Service",
    meta,
    clusterIP: clusterIP === "None" || clusterIP === "" ? null : clusterIP,
    ports,
    selector: strMap(spec, "selector", "spec"),
    mesh: ann.options,
  };
}

/** IANA service names, as Kubernetes takes a named `targetPort`: 1 to 15, with a letter. */
const PORT_NAME = /^(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$/;

/** A `targetPort` given as a string: a number in range, or a port name. */
function targetPortOf(v: string, path: string): number | string {
  if (/^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 65535) return Number(v);
  if (PORT_NAME.test(v)) return v;
  throw new FieldError(
    path,
    `expected a port from 1 to 65535 or a port name (an IANA service name), found "${
      abbreviate(v)
    }"`,
  );
}

/**
 * Kubernetes refuses a Service that repeats a port (number and protocol) or a port name; two
 * HTTP ports 80 would share one Host, and one of them would never be reached.
 */
function uniquePorts(ports: readonly ServicePort[]): void {
  const seen = new Set<string>();
  for (const [i, p] of ports.entries()) {
    for (const [what, key] of [["port", `${p.port}/${p.protocol}`], ["name", p.name]]) {
      if (what === "name" && key === "") continue;
      if (seen.has(`${what}:${key}`)) {
        throw new FieldError(
          `spec.ports[${i}].${what}`,
          `repeats ${what} ${
            what === "port" ? `${p.port} (${p.protocol})` : `"${key}"`
          } of an earlier port`,
        );
      }
      seen.add(`${what}:${key}`);
    }
  }
}

function decodeEndpointSlice(raw: Obj, meta: ObjectMeta): EndpointSlice {
  const addressType = oneOf(
    str(raw, "addressType", ""),
    ["IPv4", "IPv6", "FQDN"] as const,
    "addressType",
  );
  const ports = listOfMaps(raw, "ports", "").map(([p, path]) => ({
    name: optStr(p, "name", path) ?? "",
    port: int(p, "port", path, 1, 65535),
    protocol: oneOf(optStr(p, "protocol", path) ?? "TCP", PROTOCOLS, field(path, "protocol")),
  }));
  const endpoints: SliceEndpoint[] = listOfMaps(raw, "endpoints", "").map(([e, path]) => {
    const addresses = strList(e, "addresses", path);
    if (addresses.length === 0) {
      throw new FieldError(field(path, "addresses"), "needs at least one address");
    }
    for (const [i, a] of addresses.entries()) {
      const ok = addressType === "IPv4"
        ? isIpv4(a)
        : addressType === "IPv6"
        ? isIpv6(a)
        : DNS_SUBDOMAIN.test(a) && a.length <= 253;
      if (!ok) {
        throw new FieldError(
          field(field(path, "addresses"), i),
          `expected ${
            addressType === "FQDN" ? "a domain name" : `an ${addressType} address`
          }, found "${abbreviate(a)}"`,
        );
      }
    }
    const cond = optMap(e, "conditions", path) ?? {};
    const cpath = field(path, "conditions");
    // discovery.k8s.io/v1: a nil `ready` means ready, a nil `serving` follows `ready`,
    // a nil `terminating` means not terminating.
    const ready = optBool(cond, "ready", cpath) ?? true;
    const ref = optMap(e, "targetRef", path);
    return {
      addresses,
      ready,
      serving: optBool(cond, "serving", cpath) ?? ready,
      terminating: optBool(cond, "terminating", cpath) ?? false,
      nodeName: optStr(e, "nodeName", path) ?? null,
      podName: ref && optStr(ref, "kind", field(path, "targetRef")) === "Pod"
        ? optStr(ref, "name", field(path, "targetRef")) ?? null
        : null,
    };
  });
  return {
    kind: "EndpointSlice",
    meta,
    serviceName: meta.labels["kubernetes.io/service-name"] ?? null,
    addressType,
    ports,
    endpoints,
  };
}

// The kube provider stores Pods trimmed to these fields (`slimPod` in src/kube/kube_provider.ts):
// a field read here must be kept there.
function decodePod(raw: Obj, meta: ObjectMeta): Pod {
  const spec = optMap(raw, "spec", "") ?? {};
  const status = optMap(raw, "status", "") ?? {};
  return {
    kind: "Pod",
    meta,
    podIP: optStr(status, "podIP", "status") ?? null,
    serviceAccountName: optStr(spec, "serviceAccountName", "spec") ?? "default",
    phase: optStr(status, "phase", "status") ?? "Pending",
    nodeName: optStr(spec, "nodeName", "spec") ?? null,
  };
}

function identity(o: Obj, path: string, defaultNs: string): IdentityRef {
  const kind = str(o, "kind", path);
  if (kind !== "ServiceAccount") {
    throw new FieldError(field(path, "kind"), `expected ServiceAccount, found "${kind}"`);
  }
  return { name: str(o, "name", path), namespace: optStr(o, "namespace", path) ?? defaultNs };
}

function decodeTrafficTarget(raw: Obj, meta: ObjectMeta): TrafficTarget {
  const spec = map(raw, "spec", "");
  const d = map(spec, "destination", "spec");
  const port = d["port"] === undefined || d["port"] === null
    ? null
    : int(d, "port", "spec.destination", 1, 65535);
  const sources = listOfMaps(spec, "sources", "spec").map(([s, p]) =>
    identity(s, p, meta.namespace)
  );
  if (sources.length === 0) throw new FieldError("spec.sources", "needs at least one source");
  return {
    kind: "TrafficTarget",
    meta,
    destination: { ...identity(d, "spec.destination", meta.namespace), port },
    rules: listOfMaps(spec, "rules", "spec").map(([r, p]) => ({
      kind: oneOf(str(r, "kind", p), ["HTTPRouteGroup", "TCPRoute"] as const, field(p, "kind")),
      name: str(r, "name", p),
      matches: strList(r, "matches", p),
    })),
    sources,
  };
}

function decodeHttpRouteGroup(raw: Obj, meta: ObjectMeta): HttpRouteGroup {
  const spec = map(raw, "spec", "");
  const matches: HttpMatch[] = listOfMaps(spec, "matches", "spec").map(([m, p]) => {
    const headers = headerMap(m, p);
    for (const [k, v] of Object.entries(headers)) regex(v, `${field(p, "headers")}["${k}"]`);
    return {
      name: str(m, "name", p),
      methods: strList(m, "methods", p).map((x) => x.toUpperCase()),
      pathRegex: pathRegex(optStr(m, "pathRegex", p) ?? "", field(p, "pathRegex")),
      headers,
    };
  });
  const seen = new Set<string>();
  for (const [i, m] of matches.entries()) {
    if (seen.has(m.name)) {
      throw new FieldError(`spec.matches[${i}].name`, `duplicate match name "${m.name}"`);
    }
    seen.add(m.name);
  }
  return { kind: "HTTPRouteGroup", meta, matches };
}

/** A `pathRegex`, checked in the form the proxy matches it in ("" matches every path). */
function pathRegex(v: string, path: string): string {
  return v === "" ? v : regex(v, path, pathRegexSource(v));
}

/**
 * `headers` of an HTTP match: a map of name to regular expression, as the SMI text shows it,
 * or a list of such maps (usually one key each), as Traefik Mesh's CRD declares it. A name
 * given twice in the list is refused rather than silently dropped.
 */
function headerMap(m: Obj, path: string): Record<string, string> {
  if (!Array.isArray(m["headers"])) return strMap(m, "headers", path);
  const out: Record<string, string> = {};
  for (const [item, p] of listOfMaps(m, "headers", path)) {
    for (const [k, v] of Object.entries(item)) {
      if (typeof v !== "string") {
        throw new FieldError(`${p}["${k}"]`, `expected a string, found ${typeName(v)} (quote it)`);
      }
      if (Object.keys(out).some((x) => x.toLowerCase() === k.toLowerCase())) {
        throw new FieldError(`${p}["${k}"]`, `names header "${k}" a second time`);
      }
      out[k] = v;
    }
  }
  return out;
}

function decodeTrafficSplit(raw: Obj, meta: ObjectMeta): TrafficSplit {
  const spec = map(raw, "spec", "");
  const backends = listOfMaps(spec, "backends", "spec").map(([b, p]) => ({
    service: str(b, "service", p),
    weight: int(b, "weight", p, 0, 1_000_000),
  }));
  if (backends.length === 0) throw new FieldError("spec.backends", "needs at least one backend");
  return {
    kind: "TrafficSplit",
    meta,
    service: str(spec, "service", "spec"),
    matches: listOfMaps(spec, "matches", "spec").map(([m, p]) => ({
      kind: oneOf(str(m, "kind", p), ["HTTPRouteGroup"] as const, field(p, "kind")),
      name: str(m, "name", p),
    })),
    backends,
  };
}

/** The decoder of each kind in {@linkcode SUPPORTED_KINDS}. */
const DECODERS: Readonly<Record<string, (raw: Obj, meta: ObjectMeta) => MeshObject>> = {
  Service: decodeService,
  EndpointSlice: decodeEndpointSlice,
  Pod: decodePod,
  TrafficTarget: decodeTrafficTarget,
  HTTPRouteGroup: decodeHttpRouteGroup,
  TCPRoute: (_raw, meta) => ({ kind: "TCPRoute", meta }) satisfies TcpRoute,
  TrafficSplit: decodeTrafficSplit,
};

/** Says why an object meshd cannot read is invalid, naming field `f`. */
type Broken = (f: string, message: string) => DecodeResult;

/**
 * The kind of `raw`, or the result for an object whose kind or API version is missing, broken,
 * or not read by meshd.
 */
function identify(raw: Obj, broken: Broken): DecodeResult | string {
  const kind = raw["kind"];
  const apiVersion = raw["apiVersion"];
  if (typeof kind !== "string" || typeof apiVersion !== "string" || !kind || !apiVersion) {
    const f = typeof apiVersion !== "string" || !apiVersion ? "apiVersion" : "kind";
    return broken(f, "is required");
  }
  // A broken kind or apiVersion (cut short, mistyped) is not another kind to skip: it is an
  // object meshd cannot identify, and its file keeps its last good objects.
  if (!API_VERSION.test(apiVersion)) {
    return broken(
      "apiVersion",
      `expected GROUP/VERSION or VERSION such as "v1", found "${abbreviate(apiVersion)}"`,
    );
  }
  if (!KIND.test(kind)) {
    return broken("kind", `expected a kind such as "Service", found "${abbreviate(kind)}"`);
  }
  const want = SUPPORTED_KINDS[kind];
  if (want === undefined) return unsupportedKind(kind, apiVersion, broken);
  if (want !== apiVersion) {
    return {
      status: "skipped",
      reason: `${kind} "${apiVersion}" is not supported, expected "${want}"`,
    };
  }
  return kind;
}

/** The result for a well-formed kind that meshd does not read: skipped, or a file cut short. */
function unsupportedKind(kind: string, apiVersion: string, broken: Broken): DecodeResult {
  if (apiVersion === "v1" && !CORE_KINDS.has(kind)) {
    return broken("kind", `expected a kind of the core API (v1), found "${kind}"`);
  }
  // A kind of a group meshd reads that is the start of one it uses: a file cut short.
  const group = (v: string) => v.includes("/") ? v.slice(0, v.indexOf("/")) : "";
  const cut = Object.entries(SUPPORTED_KINDS).find(([k, v]) =>
    k.startsWith(kind) && group(v) === group(apiVersion)
  )?.[0];
  if (cut) return broken("kind", `is "${kind}": is it "${cut}" cut short?`);
  const quiet = MANIFEST_KINDS[kind]?.includes(group(apiVersion)) ?? false;
  return {
    status: "skipped",
    reason: `kind "${kind}" is not used by meshd`,
    ...(quiet ? { quiet } : {}),
  };
}

/**
 * Turns one raw Kubernetes-style object (parsed YAML or JSON) into a domain object, or says
 * why it cannot. A bad object never throws: the error names the source, the object and the
 * field.
 *
 * @example
 * ```ts
 * const r = decodeObject({ apiVersion: "v1", kind: "Pod", metadata: { name: "p" } });
 * // r.status === "ok"
 * ```
 */
export function decodeObject(raw: unknown, source?: SourceRef): DecodeResult {
  const where = source ? ` in ${describeSource(source)}` : "";
  if (!isObj(raw)) {
    return {
      status: "invalid",
      error: new ConfigError(`Cannot read object${where}: expected a map, found ${typeName(raw)}`, {
        source,
      }),
    };
  }
  const broken: Broken = (f, message) => ({
    status: "invalid",
    error: new ConfigError(`Cannot read object${where}: field "${f}" ${message}`, {
      source,
      field: f,
    }),
  });
  const kind = identify(raw, broken);
  if (typeof kind !== "string") return kind;
  let key: string | undefined;
  try {
    const meta = decodeMeta(raw, kind, (ns, name) => key = `${kind}/${ns}/${name}`);
    const object = DECODERS[kind]!(raw, meta);
    if (source) object.source = source;
    return { status: "ok", object };
  } catch (e) {
    if (!(e instanceof FieldError)) throw e;
    const name = key ? ` ${kind} "${abbreviate(key.split("/").slice(1).join("/"))}"` : ` ${kind}`;
    return {
      status: "invalid",
      key,
      error: new ConfigError(
        e.whole
          ? `${e.message}${where}`
          : `Cannot read${name}${where}: field "${e.field}" ${e.message}`,
        { source, field: e.field, key, cause: e },
      ),
    };
  }
}
