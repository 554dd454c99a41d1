import {
  cleanupCoreDns,
  coreDnsCorefile,
  corefileZones,
  currentMeshBlock,
  deleteShadowServices,
  dnsServiceAddresses,
  leaseHolder,
  meshZones,
  prepareCoreDns,
} from "../controller/mod.ts";
import { EbpfDatapath, findLibbpf, probeDatapath, readBpfObject } from "../datapath/mod.ts";
import type { KubeApi } from "../kube/mod.ts";
import { CliError, type CliIo, kubeClient, warningLine } from "./common.ts";
import type { FlagValue } from "./flags.ts";

type Values = Record<string, FlagValue>;

const corednsRef = (v: Values) => ({
  namespace: v["coredns-namespace"] as string,
  name: v["coredns-configmap"] as string,
});

/** `meshd prepare`: meshd's server block into the CoreDNS Corefile. */
export async function prepareCommand(v: Values, io: CliIo): Promise<number> {
  const { kapi } = await kubeClient(v, io);
  const ref = corednsRef(v);
  const r = await prepareCoreDns(kapi, {
    meshNamespace: v["mesh-namespace"] as string,
    dnsService: v["dns-service"] as string,
    domain: v["domain"] as string,
    aliases: v["domain-aliases"] as string[],
    coredns: ref,
    cacheSeconds: Math.max(1, Math.round((v["dns-ttl"] as number) / 1000)),
  });
  const where = `${ref.namespace}/${ref.name}`;
  const zones = r.zones.join(", ");
  io.stdout(
    r.changed
      ? `CoreDNS (${where}) now forwards ${zones} to ${r.upstreams.join(", ")}\n`
      : `CoreDNS (${where}) already forwards ${zones} to ${
        r.upstreams.join(", ")
      }; nothing changed\n`,
  );
  for (const a of r.leftOut) {
    io.stderr(warningLine(
      "meshd prepare",
      `the Corefile already serves "${a}:53" in a block meshd did not add (Traefik Mesh's?), ` +
        `so CoreDNS does not forward ${a} to meshd; run meshd prepare again after Traefik ` +
        "Mesh's cleanup removes that block",
    ));
  }
  if (!r.reloads) {
    io.stderr(warningLine(
      "meshd prepare",
      "the Corefile has no reload plugin, so CoreDNS reads it only at start; restart it " +
        `(kubectl -n ${ref.namespace} rollout restart deployment coredns)`,
    ));
  }
  return 0;
}

/** `meshd cleanup`: what prepare added, and the shadow Services. */
export async function cleanupCommand(v: Values, io: CliIo): Promise<number> {
  const { kapi } = await kubeClient(v, io);
  const ns = v["mesh-namespace"] as string;
  const holder = await leaseHolder(kapi, ns, v["lease-name"] as string, Date.now());
  if (holder && !v["force"]) {
    throw new CliError(
      `meshd is still running: "${holder}" holds the Lease ${ns}/${v["lease-name"]} and would ` +
        "write its shadow Services again; delete the DaemonSet first, or pass --force",
    );
  }
  const ref = corednsRef(v);
  const removed = await cleanupCoreDns(kapi, ref);
  io.stdout(
    removed
      ? `Removed meshd's block from the CoreDNS Corefile (${ref.namespace}/${ref.name})\n`
      : `The CoreDNS Corefile (${ref.namespace}/${ref.name}) has no meshd block; nothing changed\n`,
  );
  const n = await deleteShadowServices(kapi, ns);
  io.stdout(`Deleted ${n} shadow Service${n === 1 ? "" : "s"} in ${ns}\n`);
  return 0;
}

type Level = "ok" | "warn" | "FAIL" | "skip";

/** `meshd check`: one line per check; 1 when something blocks meshd. */
export async function checkCommand(v: Values, io: CliIo): Promise<number> {
  let failed = false;
  const line = (level: Level, name: string, text: string) => {
    if (level === "FAIL") failed = true;
    io.stdout(`${level.padEnd(5)} ${name.padEnd(9)} ${text}\n`);
  };
  let api: KubeApi | null = null;
  let kube: typeof import("../kube/mod.ts") | null = null;
  try {
    ({ kapi: api, kube } = await kubeClient(v, io));
    const ver = await api.request("GET", "/version", undefined, { timeoutMs: 5_000 });
    line("ok", "api", `${api.server} answers, Kubernetes ${ver["gitVersion"] ?? "(no version)"}`);
  } catch (e) {
    line("FAIL", "api", (e as Error).message);
    api = null;
  }
  if (api && kube) {
    await checkRbac(api, kube, v, line);
    try {
      for (const s of await kube.smiGroupStatus(api)) line(s.ok ? "ok" : "warn", "smi", s.message);
    } catch (e) {
      line("FAIL", "smi", `Cannot read the SMI API groups: ${(e as Error).message}`);
    }
    await checkCoreDns(api, v, line);
  } else {
    for (const name of ["rbac", "smi", "coredns"]) line("skip", name, "needs the API");
  }
  // What `meshd run --datapath auto` would choose here, short of attaching: the programs are
  // loaded (the verifier runs) and let go.
  const libbpf = v["libbpf"] as string | undefined;
  const dp = await probeDatapath({
    kernelRelease: v["kernel-release"] as string | undefined,
    libbpfPath: libbpf,
    bpffs: v["bpffs"] as string,
    cgroup: v["cgroup"] as string | undefined,
    programs: async () => {
      const object = await readBpfObject(v["bpf-object"] as string | undefined);
      EbpfDatapath.verify(libbpf ?? findLibbpf() ?? "libbpf.so.1", object);
      return "the programs load (not attached by check)";
    },
  });
  line(dp.datapath === "ebpf" ? "ok" : "warn", "datapath", `${dp.datapath}: ${dp.reason}`);
  return failed ? 1 : 0;
}

async function checkRbac(
  api: KubeApi,
  kube: typeof import("../kube/mod.ts"),
  v: Values,
  line: (level: Level, name: string, text: string) => void,
): Promise<void> {
  let who = "this identity";
  try {
    const r = await api.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", {
      apiVersion: "authentication.k8s.io/v1",
      kind: "SelfSubjectReview",
    });
    const name = ((r["status"] ?? {}) as { userInfo?: { username?: string } }).userInfo?.username;
    if (name) who = name;
  } catch { /* an older API server: the reviews below still answer */ }
  try {
    const wanted = kube.runPermissions(v["mesh-namespace"] as string);
    const missing = [];
    for (const p of wanted) if (!(await kube.mayI(api, p))) missing.push(p);
    if (missing.length === 0) {
      line("ok", "rbac", `${who} may do all ${wanted.length} things meshd run does`);
    } else {
      line(
        "FAIL",
        "rbac",
        `${who} may not ${
          missing.map((p) => `${kube.describePermission(p)} (${p.why})`).join("; ")
        }`,
      );
    }
  } catch (e) {
    line("FAIL", "rbac", `Cannot review access: ${(e as Error).message}`);
  }
}

async function checkCoreDns(
  api: KubeApi,
  v: Values,
  line: (level: Level, name: string, text: string) => void,
): Promise<void> {
  const ref = corednsRef(v);
  const where = `${ref.namespace}/${ref.name}`;
  try {
    const [domain, ...aliases] = meshZones({
      domain: v["domain"] as string,
      aliases: v["domain-aliases"] as string[],
    });
    const corefile = await coreDnsCorefile(api, ref);
    const block = currentMeshBlock(corefile);
    if (!block) {
      line("FAIL", "coredns", `the Corefile in ${where} has no meshd block: run meshd prepare`);
      return;
    }
    const { forwarded, elsewhere } = corefileZones(corefile);
    const to = (block.match(/^\s*forward \. (.+)$/m)?.[1] ?? "").split(/\s+/)
      .map((a) => a.replace(/:53$/, "").replace(/^\[(.*)\]$/, "$1"));
    const want = await dnsServiceAddresses(
      api,
      v["mesh-namespace"] as string,
      v["dns-service"] as string,
    );
    const missing = aliases.filter((a) => !forwarded.includes(a));
    if (!forwarded.includes(domain!)) {
      line(
        "FAIL",
        "coredns",
        `${where} forwards "${forwarded.join(", ")}", not "${domain}": run meshd prepare`,
      );
    } else if (to.join() !== want.join()) {
      line(
        "FAIL",
        "coredns",
        `${where} forwards ${domain} to ${to.join(", ")}, but ${v["dns-service"]} is at ` +
          `${want.join(", ")}: run meshd prepare`,
      );
    } else if (missing.length > 0) {
      // meshd answers them, but a client's query never reaches it
      const held = missing.filter((a) => elsewhere.includes(a));
      line(
        "warn",
        "coredns",
        `${where} forwards ${forwarded.join(", ")} to ${want.join(", ")}, not the alias` +
          `${missing.length === 1 ? "" : "es"} ${missing.join(", ")}: ` +
          (held.length > 0
            ? `a block meshd did not add serves ${held.join(", ")} (Traefik Mesh's?); run meshd ` +
              "prepare after removing it"
            : "run meshd prepare"),
      );
    } else {
      line("ok", "coredns", `${where} forwards ${forwarded.join(", ")} to ${want.join(", ")}`);
    }
  } catch (e) {
    line("FAIL", "coredns", (e as Error).message);
  }
}
