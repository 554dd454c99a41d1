import { type AccessLogMode, DEFAULT_OUTLIER, type NodeProxyOptions } from "../proxy/mod.ts";
import { DEFAULT_TCP_PORTS, DEFAULT_UDP_PORTS } from "../topology/mod.ts";
import type { CompileOptions, PortRange } from "../topology/mod.ts";
import type { FlagGroup, FlagSpec, FlagValues } from "./flags.ts";
import { type ConfigLimits, DEFAULT_CONFIG_LIMITS } from "../provider/mod.ts";

const range = (r: PortRange): string => `${r.first}-${r.last}`;

/**
 * A DNS name (RFC 1123 labels, any case, an optional final dot), as `--domain` and each of
 * `--domain-aliases` must be: an empty or malformed one is a usage error, in file mode too.
 */
const DOMAIN_NAME = {
  re: /^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?\.?$/i,
  expected: 'a domain name such as "mesh" or "traefik.mesh"',
};

/** Flags that shape the MeshConfig; `run` and `config dump` share them. */
export const MODEL_FLAGS: readonly FlagSpec[] = [
  {
    name: "config-dir",
    kind: "string",
    arg: "DIR",
    help: "Directory of Kubernetes-style YAML/JSON for the file provider",
  },
  {
    name: "config-max-file-size",
    kind: "count",
    arg: "BYTES",
    default: String(DEFAULT_CONFIG_LIMITS.maxFileBytes),
    help: "Largest config file read; a larger one is an error naming it and keeps its last " +
      `good objects (as do more than ${DEFAULT_CONFIG_LIMITS.maxAliases} YAML aliases or ` +
      `nesting past ${DEFAULT_CONFIG_LIMITS.maxDepth} levels)`,
  },
  {
    name: "domain",
    kind: "string",
    arg: "DOMAIN",
    default: "mesh",
    pattern: DOMAIN_NAME,
    help: "Mesh DNS domain: services are <name>.<namespace>.<domain>",
  },
  {
    name: "default-mode",
    kind: "string",
    values: ["http", "tcp"],
    arg: "http|tcp",
    default: "http",
    help: "Traffic type of Services without a traffic-type annotation",
  },
  {
    name: "acl",
    kind: "bool",
    default: "false",
    help: "Enforce SMI access control: deny by default, TrafficTargets let traffic in",
  },
  {
    name: "ignore-namespaces",
    kind: "list",
    arg: "NS,...",
    default: "kube-system",
    help: "Namespaces left out of the mesh",
  },
  {
    name: "tcp-ports",
    kind: "range",
    arg: "FIRST-LAST",
    default: range(DEFAULT_TCP_PORTS),
    help: "Proxy ports handed to TCP service ports",
  },
  {
    name: "udp-ports",
    kind: "range",
    arg: "FIRST-LAST",
    default: range(DEFAULT_UDP_PORTS),
    help: "Proxy ports handed to UDP service ports",
  },
];

/**
 * Other domains the HTTP entrypoint and the DNS responder answer to, so Traefik Mesh's clients
 * (`<svc>.<ns>.traefik.mesh`, and `.maesh` before its 1.4) move over without edits.
 */
export const DOMAIN_ALIASES_FLAG: FlagSpec = {
  name: "domain-aliases",
  kind: "list",
  pattern: DOMAIN_NAME,
  arg: "DOMAIN,...",
  default: "traefik.mesh,maesh",
  help: "Domains answered like --domain, in Host routing and mesh DNS (Traefik Mesh's names); " +
    '"" turns them off',
};

/** Logging flags. */
export const LOG_FLAGS: readonly FlagSpec[] = [
  {
    name: "log-level",
    kind: "string",
    values: ["debug", "info", "warn", "error"],
    arg: "LEVEL",
    default: "info",
    help: "Least severe level logged; debug also prints stack traces",
  },
  {
    name: "log-format",
    kind: "string",
    values: ["text", "json"],
    arg: "text|json",
    default: "text",
    help: "One line per event, key=value or JSON",
  },
  {
    name: "watchdog",
    kind: "duration",
    arg: "DURATION",
    // Shorter, a collection or a busy moment would read as a stall, in a line each time.
    minMs: 1000,
    help: "Log an error, with the RSS, when meshd's main thread has been stuck for DURATION " +
      "(what it serves stops: its config stream, API and DNS, and its proxy unless that is in " +
      "--workers or --l4-worker workers), and again when it moves; the watch is a thread of " +
      "its own, about 14 MiB; at least 1s (default: none)",
  },
  {
    name: "access-log",
    kind: "string",
    values: ["off", "json", "logfmt"],
    arg: "off|json|logfmt",
    default: "off",
    help: "One line on stdout per HTTP request, TCP connection or UDP flow (at its end) and per " +
      'refusal; a Service\'s "meshd.io/access-log" annotation ("true"|"false") wins, in JSON ' +
      "when this is off",
  },
  {
    name: "request-id",
    kind: "bool",
    default: "false",
    help: "Add x-request-id (a random UUID) to HTTP/1 requests that have none; the access " +
      "log shows it",
  },
];

/** The bounds on each config file the model flags describe. */
export function configLimits(v: FlagValues): ConfigLimits {
  const max = v.optionalNumber("config-max-file-size");
  return {
    ...DEFAULT_CONFIG_LIMITS,
    ...(max !== undefined && max > 0 ? { maxFileBytes: max } : {}),
  };
}

/** The builder options the model flags describe. */
export function compileOptions(v: FlagValues): CompileOptions {
  return {
    domain: v.string("domain"),
    defaultTrafficType: v.choice("default-mode", ["http", "tcp"]),
    acl: v.bool("acl"),
    ignoredNamespaces: v.list("ignore-namespaces"),
    tcpPorts: v.range("tcp-ports"),
    udpPorts: v.range("udp-ports"),
  };
}

/** Flags of the node proxy's behaviour: timeouts and outlier detection. */
export const PROXY_FLAGS: readonly FlagSpec[] = [
  {
    name: "connect-timeout",
    kind: "duration",
    arg: "DURATION",
    default: "5s",
    help: "A backend that has not accepted a connection by then fails (HTTP 502, or the next " +
      "endpoint), and the connect's socket is closed then",
  },
  {
    name: "response-timeout",
    kind: "duration",
    arg: "DURATION",
    default: "30s",
    help: "A backend that has not sent a response head by then fails (HTTP 504); while a " +
      "request body is sent, counted from its last progress, and a body that stops coming " +
      "for as long gets 408",
  },
  {
    name: "tcp-idle-timeout",
    kind: "duration",
    arg: "DURATION",
    default: "1h",
    help: "A TCP connection, or an HTTP Upgrade tunnel (WebSocket), with no byte either way " +
      "for this long is closed",
  },
  {
    name: "udp-idle-timeout",
    kind: "duration",
    arg: "DURATION",
    default: "60s",
    help: "A UDP flow (one client address) with no datagram either way for this long is closed",
  },
  {
    name: "write-timeout",
    kind: "duration",
    arg: "DURATION",
    default: "60s",
    help: "An HTTP client that takes no byte of its response for this long is closed, and so " +
      "is its backend connection; so is an upgraded (WebSocket) tunnel whose backend takes " +
      "no byte for as long",
  },
  {
    name: "stream-idle-timeout",
    kind: "duration",
    arg: "DURATION",
    default: "5m",
    zeroOff: true,
    help: "An HTTP response whose backend sends no byte of its body for this long (while the " +
      "client takes what came) is cut: both connections are closed, or over HTTP/2 the stream " +
      "is reset, and the endpoint is charged a failure; a stream that keeps coming, however " +
      "slowly, is never cut (over HTTP/2, the client's DATA counts too); 0: no limit",
  },
  {
    name: "max-connections",
    kind: "count",
    arg: "N",
    help: "Client connections open at once, over the HTTP entrypoint and every TCP listener; " +
      "more are closed at once and counted (default: 35% of the open-file limit meshd finds, " +
      "as each may hold two file descriptors)",
  },
  {
    name: "max-connections-per-source",
    kind: "count",
    arg: "N",
    help: "Of those, from one client address (default: 1/16 of --max-connections, or 64 if " +
      "more but at most 1/8)",
  },
  {
    name: "max-udp-flows",
    kind: "count",
    arg: "N",
    help: "UDP flows (one socket each) open at once over every UDP listener; a new one evicts " +
      "the least recently active (default: 10% of the open-file limit)",
  },
  {
    name: "max-udp-flows-per-listener",
    kind: "count",
    arg: "N",
    help: "UDP flows open at once on one UDP listener (default: half of --max-udp-flows)",
  },
  {
    name: "max-udp-flows-per-source",
    kind: "count",
    arg: "N",
    help: "UDP flows open at once from one client address; a new one over it evicts that " +
      "address's own least recently active flow, never another client's (default: 1/16 of " +
      "--max-udp-flows, at least 16, at most --max-udp-flows-per-listener)",
  },
  {
    name: "outlier-failures",
    kind: "count",
    arg: "N",
    default: String(DEFAULT_OUTLIER.consecutiveFailures),
    help: "Failures in a row (connect errors, resets, 5xx) that take an endpoint out of rotation",
  },
  {
    name: "outlier-ejection",
    kind: "duration",
    arg: "DURATION",
    default: `${DEFAULT_OUTLIER.baseEjectionMs / 1000}s`,
    help: "How long the first ejection lasts; each one in a row adds this much, up to 10 times it",
  },
  {
    name: "backend-ca",
    kind: "string",
    arg: "FILE",
    help: "PEM file of CA certificates that https backends may use, in addition to the system's; " +
      "a backend's certificate must name <service>.<namespace>.svc",
  },
];

/** The node proxy options the proxy flags describe. */
export function proxyOptions(v: FlagValues): Partial<NodeProxyOptions> {
  const base = v.number("outlier-ejection");
  return {
    connectTimeoutMs: v.number("connect-timeout"),
    responseTimeoutMs: v.number("response-timeout"),
    tcpIdleTimeoutMs: v.number("tcp-idle-timeout"),
    udpIdleTimeoutMs: v.number("udp-idle-timeout"),
    writeTimeoutMs: v.number("write-timeout"),
    streamIdleTimeoutMs: v.number("stream-idle-timeout"),
    accessLog: v.choice<AccessLogMode>("access-log", ["off", "json", "logfmt"]),
    requestId: v.bool("request-id"),
    limits: {
      maxConnections: v.optionalNumber("max-connections"),
      maxConnectionsPerSource: v.optionalNumber("max-connections-per-source"),
      maxUdpFlows: v.optionalNumber("max-udp-flows"),
      maxUdpFlowsPerListener: v.optionalNumber("max-udp-flows-per-listener"),
      maxUdpFlowsPerSource: v.optionalNumber("max-udp-flows-per-source"),
    },
    outlier: {
      consecutiveFailures: v.number("outlier-failures"),
      baseEjectionMs: base,
      maxEjectionMs: base * 10,
    },
  };
}

/** `--workers`, of meshd run. */
export const WORKERS_FLAG: FlagSpec = {
  name: "workers",
  kind: "count-or-auto",
  arg: "N|auto",
  default: "1",
  help: "Proxy workers, each on a core of its own: N isolates bind the HTTP and TCP ports " +
    "with SO_REUSEPORT (the kernel spreads connections), each UDP port is served by one of " +
    "them; at most 64; auto: the CPUs meshd may use (affinity and cgroup quota); more than " +
    "those is logged as a warning, as the workers then share cores. Each config is applied " +
    "to every worker or to none, and /metrics sums them; a worker that dies is logged and " +
    "started again",
};

/** `--l4-worker`, of meshd run. */
export const L4_WORKER_FLAG: FlagSpec = {
  name: "l4-worker",
  kind: "bool-or-auto",
  values: ["auto", "true", "false"],
  default: "false",
  help: "Serve every TCP and UDP service port in a worker of its own, on meshd's own event " +
    "loop (libc's epoll and sockets through FFI, a handler per readiness event) instead of " +
    "Deno's I/O: about HAProxy's and nginx's cost per request where Deno's costs 1.2 to 1.6 " +
    "times as much; HTTP stays with the --workers workers. Needs FFI and glibc (the shipped " +
    "binary has FFI; deno run needs --allow-ffi). Bare or true: exit with one line when the " +
    "loop cannot start; auto: probe FFI, libc and epoll first, and when they fail keep TCP and " +
    "UDP on Deno's I/O, with one log line saying why; false: off",
};

/** Flags of the kube provider and of the controller's leader election. */
export const KUBE_FLAGS: readonly FlagSpec[] = [
  {
    name: "kubeconfig",
    kind: "string",
    arg: "FILE",
    help: "Kubeconfig for --provider kube; default: the Pod's ServiceAccount, then " +
      "$KUBECONFIG, then ~/.kube/config",
  },
  {
    name: "watch-namespaces",
    kind: "list",
    arg: "NS,...",
    default: "",
    help: "Watch only these namespaces (default: every namespace, less --ignore-namespaces)",
  },
  {
    name: "mesh-namespace",
    kind: "string",
    arg: "NS",
    default: "meshd",
    help: "Namespace meshd runs in: its Lease and shadow Services live there",
  },
  {
    name: "meshd-selector",
    kind: "list",
    arg: "KEY=VALUE,...",
    default: "app.kubernetes.io/name=meshd",
    help: "Labels of the meshd pods, which the shadow Services select",
  },
  {
    name: "identity",
    kind: "string",
    arg: "NAME",
    help: "This pod's name in leader election; default: $POD_NAME, then the host name",
  },
  {
    name: "lease-name",
    kind: "string",
    arg: "NAME",
    default: "meshd-controller",
    help: "Name of the coordination.k8s.io/v1 Lease the controllers elect a leader on",
  },
  {
    name: "lease-duration",
    kind: "duration",
    arg: "DURATION",
    default: "15s",
    help: "How long candidates wait after the leader's last renewal before taking over",
  },
  {
    name: "renew-deadline",
    kind: "duration",
    arg: "DURATION",
    default: "10s",
    help: "How long the leader tries to renew before it stops leading; below --lease-duration",
  },
  {
    name: "retry-period",
    kind: "duration",
    arg: "DURATION",
    default: "2s",
    help: "How often candidates try for the lease and the leader renews it",
  },
];

/** Flags of the mesh DNS responder (kube provider). */
export const DNS_FLAGS: readonly FlagSpec[] = [
  {
    name: "dns-address",
    kind: "string",
    arg: "ADDR",
    default: "127.0.0.1",
    help: "Address the mesh DNS responder listens on, UDP and TCP (0.0.0.0 in a DaemonSet); " +
      "with --provider kube only",
  },
  {
    name: "dns-port",
    kind: "int",
    arg: "PORT",
    default: "5353",
    help: "Port of the mesh DNS responder, which answers <service>.<namespace>.<domain> with " +
      "the shadow Service's ClusterIPs; 0 turns it off",
  },
  {
    name: "dns-ttl",
    kind: "duration",
    arg: "DURATION",
    default: "5s",
    help: "TTL of DNS answers and of negative answers (whole seconds)",
  },
];

/** `--dns-ttl` (milliseconds) in the whole seconds a DNS answer carries: at least 1. */
export function dnsTtlSeconds(ms: number): number {
  return Math.max(1, Math.round(ms / 1000));
}

/** Flags that say where CoreDNS and the mesh DNS Service are (prepare, cleanup, check). */
export const COREDNS_FLAGS: readonly FlagSpec[] = [
  {
    name: "dns-service",
    kind: "string",
    arg: "NAME",
    default: "meshd-dns",
    help: "Service in --mesh-namespace in front of the meshd DNS responders; CoreDNS forwards " +
      "the mesh domain to its ClusterIP",
  },
  {
    name: "coredns-namespace",
    kind: "string",
    arg: "NS",
    default: "kube-system",
    help: "Namespace of the CoreDNS ConfigMap",
  },
  {
    name: "coredns-configmap",
    kind: "string",
    arg: "NAME",
    default: "coredns",
    help: "ConfigMap whose Corefile key is CoreDNS's configuration",
  },
];

/** Flags that replace what the data path probe reads, to see what another node would do. */
export const PROBE_FLAGS: readonly FlagSpec[] = [
  {
    name: "kernel-release",
    kind: "string",
    arg: "RELEASE",
    help: "Kernel release to judge instead of the running one's, such as 5.4.0-150-generic",
  },
  {
    name: "libbpf",
    kind: "string",
    arg: "FILE",
    help: "libbpf shared object to use instead of the first libbpf.so.1 in the usual places",
  },
];

/** Where the eBPF fast path attaches and pins, and what it loads (run and check). */
export const EBPF_FLAGS: readonly FlagSpec[] = [
  {
    name: "cgroup",
    kind: "string",
    arg: "DIR",
    help: "cgroup v2 directory whose processes' sockets the eBPF path balances; default: the " +
      "root of the cgroup v2 mount (every process on the node)",
  },
  {
    name: "bpffs",
    kind: "string",
    arg: "DIR",
    default: "/sys/fs/bpf",
    help: "bpffs mount; meshd pins its maps and links in DIR/meshd, where the next meshd " +
      "takes them over, so sockets stay balanced across restarts (removing that directory " +
      "detaches the hooks)",
  },
  {
    name: "bpf-object",
    kind: "string",
    arg: "FILE",
    help: "The BPF object to load instead of the built bpf/build/meshd_sock.bpf.o",
  },
];

/** `--ebpf-grace`, of meshd run. */
export const EBPF_GRACE_FLAG: FlagSpec = {
  name: "ebpf-grace",
  kind: "duration",
  arg: "DURATION",
  default: "10m",
  help: "How long the pinned hooks go on balancing after meshd stops (a restart within it " +
    "loses nothing); past it they leave sockets alone, so an uninstalled or stuck meshd's " +
    "old backends are not used",
};

/** `--datapath`, of meshd run. */
export const DATAPATH_FLAG: FlagSpec = {
  name: "datapath",
  kind: "string",
  values: ["auto", "ebpf", "userspace"],
  arg: "auto|ebpf|userspace",
  default: "auto",
  help: "auto: the eBPF fast path when the kernel (5.10+), libbpf, bpffs, cgroup v2 and " +
    "loading the programs all work, else the userspace proxy alone, with one log line saying " +
    "why; ebpf: exit with that line instead of falling back; userspace: no eBPF",
};

/** Flags of config distribution and the node agent (kube provider). */
export const DISTRIBUTION_FLAGS: readonly FlagSpec[] = [
  {
    name: "distribution-address",
    kind: "string",
    arg: "ADDR",
    default: "127.0.0.1",
    help: "Address the config stream (gRPC over TLS) listens on while this meshd leads " +
      "(0.0.0.0 in a DaemonSet)",
  },
  {
    name: "distribution-port",
    kind: "int",
    arg: "PORT",
    default: "9443",
    help: "Port of the config stream",
  },
  {
    name: "advertise-address",
    kind: "string",
    arg: "ADDR",
    help: "Address other meshd pods reach this one's config stream at, written on the Lease " +
      "when it leads; default: $POD_IP, then --distribution-address unless it is 0.0.0.0 or ::",
  },
  {
    name: "service-account",
    kind: "string",
    arg: "NAME",
    default: "meshd",
    help: "ServiceAccount (in --mesh-namespace) whose token a node must present to get the " +
      "config; the leader checks it with a TokenReview",
  },
  {
    name: "token-file",
    kind: "string",
    arg: "FILE",
    default: "/var/run/secrets/kubernetes.io/serviceaccount/token",
    help: "This pod's ServiceAccount token, sent to the leader, read at every connect; when " +
      "the file is missing, the kubeconfig's bearer token is used",
  },
  {
    name: "state-dir",
    kind: "string",
    arg: "DIR",
    default: "/var/lib/meshd",
    help: "Where the last applied config (config.json) and mesh DNS names (dns.json) are " +
      "kept, loaded at start so a restarted node routes and resolves before it reaches the " +
      "leader or the API server; empty: keep nothing",
  },
];

/** Flags of the health and metrics ports, apart from the API (meshd run). */
export const HEALTH_FLAGS: readonly FlagSpec[] = [
  {
    name: "health-address",
    kind: "string",
    arg: "ADDR",
    default: "127.0.0.1",
    help: "Address of the health and metrics ports (0.0.0.0 in a DaemonSet, for the kubelet " +
      "and Prometheus)",
  },
  {
    name: "health-port",
    kind: "int",
    arg: "PORT",
    help: "Port serving /healthz and /readyz alone, for the probes (default: none; the API " +
      "port serves them too)",
  },
  {
    name: "metrics-port",
    kind: "int",
    arg: "PORT",
    help: "Port serving /metrics alone, for Prometheus (default: none; the API port serves it too)",
  },
];

/** Flags of the hand-over to the next meshd on the node (meshd run). */
export const DRAIN_FLAGS: readonly FlagSpec[] = [
  {
    name: "reuse-port",
    kind: "bool",
    default: "false",
    help: "Bind every port with SO_REUSEPORT (UDP: SO_REUSEADDR), so the next meshd on the node " +
      "binds the same ports while this one still serves; the config stream's port is taken " +
      "over once this one has left",
  },
  {
    name: "drain-timeout",
    kind: "duration",
    arg: "DURATION",
    help: "On SIGTERM, go on serving until a successor holds every port this meshd listens on, " +
      "then stop accepting and let connections in flight finish, all within DURATION " +
      "(default: none, stop at once); reading the successor's sockets in /proc/net takes " +
      "--allow-all, which the compiled binary has",
  },
];

/** `meshd run`'s flags, by topic as `--help` shows them. */
export const RUN_GROUPS: readonly FlagGroup[] = [
  {
    title: "Where the config comes from",
    flags: [
      {
        name: "provider",
        kind: "string",
        values: ["file", "kube"],
        arg: "file|kube",
        default: "file",
        help: "Where objects come from: file reads --config-dir; kube watches the Kubernetes " +
          "API and elects a controller leader",
      },
      ...MODEL_FLAGS,
      DOMAIN_ALIASES_FLAG,
    ],
  },
  {
    title: "Proxy",
    flags: [
      {
        name: "proxy-address",
        kind: "string",
        arg: "ADDR",
        default: "127.0.0.1",
        help: "Address the proxy listens on (the node's address in a DaemonSet: UDP answers " +
          "leave from the address bound, and from 0.0.0.0 the kernel picks one NAT does not " +
          "match)",
      },
      {
        name: "http-port",
        kind: "int",
        arg: "PORT",
        default: "5000",
        help: "HTTP entrypoint, routed by Host <service>.<namespace>.<domain>[:port]",
      },
      WORKERS_FLAG,
      L4_WORKER_FLAG,
      ...PROXY_FLAGS,
      ...DRAIN_FLAGS,
    ],
  },
  { title: "Kubernetes (--provider kube)", flags: KUBE_FLAGS },
  { title: "Config distribution (--provider kube)", flags: DISTRIBUTION_FLAGS },
  { title: "Mesh DNS (--provider kube)", flags: DNS_FLAGS },
  {
    title: "API, health and metrics",
    flags: [
      {
        name: "api-address",
        kind: "string",
        arg: "ADDR",
        default: "127.0.0.1",
        help: "Address of the API (/api/config, /api/services, /api/status, /metrics, " +
          "/healthz, /readyz); it shows every endpoint and ServiceAccount, so keep it on " +
          "loopback and reach it with kubectl port-forward",
      },
      { name: "api-port", kind: "int", arg: "PORT", default: "9000", help: "Port of the API" },
      ...HEALTH_FLAGS,
    ],
  },
  {
    title: "eBPF data path",
    flags: [DATAPATH_FLAG, ...EBPF_FLAGS, EBPF_GRACE_FLAG, ...PROBE_FLAGS],
  },
  { title: "Logging", flags: LOG_FLAGS },
];

export const RUN_FLAGS: readonly FlagSpec[] = RUN_GROUPS.flatMap((g) => g.flags);

export const DUMP_FLAGS: readonly FlagSpec[] = [...MODEL_FLAGS];

const pick = (specs: readonly FlagSpec[], ...names: string[]) =>
  specs.filter((f) => names.includes(f.name));
const CLUSTER_FLAGS = pick(KUBE_FLAGS, "kubeconfig", "mesh-namespace");
const LEVEL_FLAG = pick(LOG_FLAGS, "log-level");
const DOMAIN_FLAG = pick(MODEL_FLAGS, "domain");

export const PREPARE_FLAGS: readonly FlagSpec[] = [
  ...CLUSTER_FLAGS,
  ...DOMAIN_FLAG,
  {
    ...DOMAIN_ALIASES_FLAG,
    help: "Domains CoreDNS also sends to meshd (match meshd run's); one that a block meshd " +
      "did not add serves (Traefik Mesh's) is left out, with a warning",
  },
  ...COREDNS_FLAGS,
  {
    ...pick(DNS_FLAGS, "dns-ttl")[0]!,
    help: "How long CoreDNS caches mesh answers; match meshd run's --dns-ttl",
  },
  ...LEVEL_FLAG,
];

export const CLEANUP_FLAGS: readonly FlagSpec[] = [
  ...CLUSTER_FLAGS,
  ...pick(COREDNS_FLAGS, "coredns-namespace", "coredns-configmap"),
  ...pick(KUBE_FLAGS, "lease-name"),
  {
    name: "force",
    kind: "bool",
    default: "false",
    help: "Clean up even while a meshd controller holds the Lease (it will write its shadow " +
      "Services again)",
  },
  ...LEVEL_FLAG,
];

/** Where meshd runs, and how its pods' metrics are reached: check, status and stat. */
const MESH_FLAGS: readonly FlagSpec[] = [
  {
    name: "daemonset",
    kind: "string",
    arg: "NAME",
    default: "meshd",
    help: "meshd's DaemonSet in --mesh-namespace",
  },
  ...pick(KUBE_FLAGS, "meshd-selector", "lease-name"),
  {
    name: "metrics-port",
    kind: "int",
    arg: "PORT",
    default: "9002",
    help: "The meshd pods' --metrics-port, read through the API server's pod proxy (needs " +
      "get pods/proxy)",
  },
];

const OUTPUT_FLAG: FlagSpec = {
  name: "output",
  short: "o",
  kind: "string",
  values: ["text", "json"],
  default: "text",
  help: "Print text for people or JSON for programs",
};

export const CHECK_FLAGS: readonly FlagSpec[] = [
  {
    name: "pre",
    kind: "bool",
    default: "false",
    help: "Before install: the API version, RBAC to install, CoreDNS found, SMI CRDs and the " +
      "nodes' kernels (instead of the installed meshd's DaemonSet, leader and nodes)",
  },
  {
    name: "wait",
    kind: "duration",
    arg: "DURATION",
    help: "Run the checks again (every 2s) until none fails or DURATION is up, such as 2m",
  },
  OUTPUT_FLAG,
  ...CLUSTER_FLAGS,
  ...MESH_FLAGS,
  ...DOMAIN_FLAG,
  {
    ...DOMAIN_ALIASES_FLAG,
    help: "Domains the coredns line expects forwarded with --domain; one missing is a warning",
  },
  ...COREDNS_FLAGS,
  ...EBPF_FLAGS,
  ...PROBE_FLAGS,
  ...LEVEL_FLAG,
];

export const STATUS_FLAGS: readonly FlagSpec[] = [
  OUTPUT_FLAG,
  ...CLUSTER_FLAGS,
  ...MESH_FLAGS,
  ...LEVEL_FLAG,
];

export const STAT_FLAGS: readonly FlagSpec[] = [
  {
    name: "window",
    kind: "duration",
    arg: "DURATION",
    default: "30s",
    help: "How long to count: every node's metrics are read at its start and at its end",
  },
  OUTPUT_FLAG,
  ...CLUSTER_FLAGS,
  ...MESH_FLAGS,
  ...LEVEL_FLAG,
];
