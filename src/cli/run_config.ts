import type { LogFormat, LogLevel } from "../observability/mod.ts";
import type { NodeProxyOptions } from "../proxy/mod.ts";
import type { CompileOptions } from "../topology/mod.ts";
import type { ConfigLimits } from "../provider/mod.ts";
import type { DatapathMode } from "../datapath/mod.ts";
import type { FlagValues } from "./flags.ts";
import { compileOptions, configLimits, dnsTtlSeconds, proxyOptions } from "./options.ts";

/**
 * `meshd run`'s flags, read once and typed: every part of the run reads this, never the flag
 * record. A new flag of `run` is a spec in `options.ts` and a field here.
 */
export interface RunConfig {
  provider: "file" | "kube";
  /** `--config-dir`: the file provider's directory (checked when the run starts). */
  configDir?: string;
  compile: CompileOptions;
  limits: ConfigLimits;
  domain: string;
  domainAliases: string[];
  proxy: {
    address: string;
    httpPort: number;
    workers: number | "auto";
    /**
     * `--l4-worker`: TCP and UDP ports in a worker of their own, on meshd's event loop; `auto`:
     * when a probe finds that loop can run here, else on Deno's I/O.
     */
    l4Worker: boolean | "auto";
    /** `--backend-ca`: a PEM file. */
    backendCa?: string;
    /** Timeouts, limits, outlier detection and the access log. */
    options: Partial<NodeProxyOptions>;
  };
  reusePort: boolean;
  /** `--drain-timeout`; 0 when unset (stop at once). */
  drainMs: number;
  /** `--watchdog`; 0 when unset (no watch). */
  watchdogMs: number;
  api: { address: string; port: number };
  /** The health and metrics ports, each apart from the API's only when given. */
  health: { address: string; port?: number; metricsPort?: number };
  datapath: {
    mode: DatapathMode;
    cgroup?: string;
    bpffs: string;
    object?: string;
    kernelRelease?: string;
    libbpf?: string;
    graceMs: number;
  };
  log: { level: LogLevel; format: LogFormat };
  kube: {
    kubeconfig?: string;
    watchNamespaces: string[];
    ignoreNamespaces: string[];
    meshNamespace: string;
    /** `--meshd-selector`, KEY=VALUE each (checked when the run starts). */
    meshdSelector: string[];
    identity?: string;
    leaseName: string;
    timing: { leaseDurationMs: number; renewDeadlineMs: number; retryPeriodMs: number };
  };
  distribution: {
    address: string;
    port: number;
    advertise?: string;
    serviceAccount: string;
    tokenFile: string;
    /** Empty: keep nothing on disk. */
    stateDir: string;
  };
  /** The mesh DNS responder; port 0 turns it off. */
  dns: { address: string; port: number; ttlSeconds: number };
}

/** Reads `meshd run`'s parsed flags (see `RUN_GROUPS`) into a {@linkcode RunConfig}. */
export function runConfig(values: FlagValues): RunConfig {
  const v = values;
  return {
    provider: v.choice("provider", ["file", "kube"]),
    configDir: v.optionalString("config-dir"),
    compile: compileOptions(v),
    limits: configLimits(v),
    domain: v.string("domain"),
    domainAliases: v.list("domain-aliases"),
    proxy: {
      address: v.string("proxy-address"),
      httpPort: v.number("http-port"),
      workers: v.countOrAuto("workers"),
      l4Worker: v.boolOrAuto("l4-worker"),
      backendCa: v.optionalString("backend-ca"),
      options: proxyOptions(v),
    },
    reusePort: v.bool("reuse-port"),
    drainMs: v.optionalNumber("drain-timeout") ?? 0,
    watchdogMs: v.optionalNumber("watchdog") ?? 0,
    api: { address: v.string("api-address"), port: v.number("api-port") },
    health: {
      address: v.string("health-address"),
      port: v.optionalNumber("health-port"),
      metricsPort: v.optionalNumber("metrics-port"),
    },
    datapath: {
      mode: v.choice("datapath", ["auto", "ebpf", "userspace"]),
      cgroup: v.optionalString("cgroup"),
      bpffs: v.string("bpffs"),
      object: v.optionalString("bpf-object"),
      kernelRelease: v.optionalString("kernel-release"),
      libbpf: v.optionalString("libbpf"),
      graceMs: v.number("ebpf-grace"),
    },
    log: {
      level: v.choice("log-level", ["debug", "info", "warn", "error"]),
      format: v.choice("log-format", ["text", "json"]),
    },
    kube: {
      kubeconfig: v.optionalString("kubeconfig"),
      watchNamespaces: v.list("watch-namespaces"),
      ignoreNamespaces: v.list("ignore-namespaces"),
      meshNamespace: v.string("mesh-namespace"),
      meshdSelector: v.list("meshd-selector"),
      identity: v.optionalString("identity"),
      leaseName: v.string("lease-name"),
      timing: {
        leaseDurationMs: v.number("lease-duration"),
        renewDeadlineMs: v.number("renew-deadline"),
        retryPeriodMs: v.number("retry-period"),
      },
    },
    distribution: {
      address: v.string("distribution-address"),
      port: v.number("distribution-port"),
      advertise: v.optionalString("advertise-address"),
      serviceAccount: v.string("service-account"),
      tokenFile: v.string("token-file"),
      stateDir: v.optionalString("state-dir") ?? "",
    },
    dns: {
      address: v.string("dns-address"),
      port: v.number("dns-port"),
      ttlSeconds: dnsTtlSeconds(v.number("dns-ttl")),
    },
  };
}
