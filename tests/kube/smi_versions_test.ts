/**
 * meshd on clusters whose SMI CRDs serve other versions than the ones it reads (access
 * v1alpha2, specs v1alpha3, split v1alpha3): several versions at once, only versions meshd does
 * not read, and CRDs installed while meshd runs. Traefik Mesh's `prepare` stopped on such a
 * cluster ("unable to find group "split.smi-spec.io" version "v1alpha3", got "v1alpha1"",
 * traefik/mesh#758). The CRDs are those of manifests/crds with their `versions` changed; every
 * version gets the same schema, which is enough for what is tested here (which version meshd
 * asks for), not the real SMI schema of each version.
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { TestCluster, waitEstablished } from "../testenv/cluster.ts";
import { type CliRun, meshd } from "../testenv/cli.ts";
import { MeshdProcess } from "../testenv/meshd.ts";
import { kustomizationObjects, meshdKubeconfig } from "../testenv/manifests.ts";
import { corefileFixture, putCorefile } from "../testenv/coredns.ts";
import { serverSideApply } from "../testenv/cluster.ts";
import { waitFor } from "../testenv/process.ts";
import type { MeshConfig } from "../../src/topology/mod.ts";

const TIMING = ["--lease-duration=4s", "--renew-deadline=3s", "--retry-period=500ms"];
const ROOT = new URL("../../", import.meta.url).pathname;
const CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

type Crd = {
  apiVersion: string;
  kind: string;
  metadata: { name: string };
  spec: { group: string; versions: Record<string, unknown>[] };
};

/** manifests/crds, one CRD per resource. */
async function manifestCrds(): Promise<Crd[]> {
  const out: Crd[] = [];
  for await (const f of Deno.readDir(`${ROOT}manifests/crds`)) {
    const text = await Deno.readTextFile(`${ROOT}manifests/crds/${f.name}`);
    for (const doc of parseAllDocuments(text)) out.push(doc.toJS() as Crd);
  }
  return out;
}

/**
 * `crd` serving `versions` (each with the manifest's schema), `storage` the storage version,
 * conversion None (the default): the server only rewrites `apiVersion`.
 */
function variant(crd: Crd, versions: string[], storage: string): Crd {
  const base = crd.spec.versions[0]!;
  return {
    ...crd,
    spec: {
      ...crd.spec,
      versions: versions.map((name) => ({
        ...base,
        name,
        served: true,
        storage: name === storage,
      })),
    },
  };
}

/** Creates (or replaces) the CRDs and waits until each is Established. */
async function installCrds(cluster: TestCluster, crds: Crd[]): Promise<void> {
  for (const crd of crds) {
    await serverSideApply(cluster, crd);
    await waitEstablished(cluster, crd.metadata.name);
  }
}

/** Deletes the CRDs (their objects go with them) and waits until they are gone. */
async function deleteCrds(cluster: TestCluster, crds: Crd[]): Promise<void> {
  for (const crd of crds) {
    const r = await cluster.request("DELETE", `${CRD_PATH}/${crd.metadata.name}`);
    assert.ok(r.status < 300 || r.status === 404, JSON.stringify(r.body));
  }
  for (const crd of crds) {
    await waitFor(`CRD ${crd.metadata.name} to be gone`, async () => {
      const r = await cluster.request("GET", `${CRD_PATH}/${crd.metadata.name}`);
      return r.status === 404 ? true : undefined;
    }, 60_000);
  }
}

/** The versions each group's CRDs serve in case a): several at once, conversion None. */
const SEVERAL: Record<string, { versions: string[]; storage: string }> = {
  "access.smi-spec.io": { versions: ["v1alpha1", "v1alpha2", "v1alpha3"], storage: "v1alpha2" },
  "specs.smi-spec.io": {
    versions: ["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
    storage: "v1alpha3",
  },
  "split.smi-spec.io": {
    versions: ["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
    storage: "v1alpha3",
  },
};

function several(crds: Crd[]): Crd[] {
  return crds.map((c) =>
    variant(c, SEVERAL[c.spec.group]!.versions, SEVERAL[c.spec.group]!.storage)
  );
}

/** The checks of a `meshd check -o json` run named `name`, as `level text`. */
function checkLines(r: CliRun, name: string): string[] {
  const { checks } = JSON.parse(r.out) as {
    checks: { name: string; level: string; message: string }[];
  };
  return checks.filter((c) => c.name === name).map((c) => `${c.level} ${c.message}`);
}

async function config(p: MeshdProcess): Promise<MeshConfig | undefined> {
  const r = await p.api("/api/config");
  return r.status === 200 ? JSON.parse(r.body) as MeshConfig : undefined;
}

/** The web service's port 80 as `p` routes it, once `ok` says it is as expected. */
function waitPort(
  p: MeshdProcess,
  what: string,
  ok: (port: MeshConfig["services"][number]["ports"][number]) => boolean,
  timeoutMs = 20_000,
) {
  let last: unknown;
  return waitFor(`${p.identity}: ${what}`, async () => {
    const c = await config(p);
    const port = c?.services.find((s) => s.namespace === "shop" && s.name === "web")?.ports
      .find((x) => x.port === 80);
    last = port;
    return port && ok(port) ? port : undefined;
  }, timeoutMs).catch((e) => {
    throw new Error(
      `${e.message}; last seen: ${JSON.stringify(last)}\n${p.child.lines.slice(-10).join("\n")}`,
    );
  });
}

const split = (apiVersion: string, name: string, weights: [string, number][]) => ({
  apiVersion,
  kind: "TrafficSplit",
  metadata: { name, namespace: "shop" },
  spec: { service: "web", backends: weights.map(([service, weight]) => ({ service, weight })) },
});

const routes = (apiVersion: string) => ({
  apiVersion,
  kind: "HTTPRouteGroup",
  metadata: { name: "web-routes", namespace: "shop" },
  spec: { matches: [{ name: "api", pathRegex: "/api/.*", methods: ["GET"] }] },
});

const target = (apiVersion: string, source: string) => ({
  apiVersion,
  kind: "TrafficTarget",
  metadata: { name: "to-web", namespace: "shop" },
  spec: {
    destination: { kind: "ServiceAccount", name: "web", namespace: "shop" },
    sources: [{ kind: "ServiceAccount", name: source, namespace: "shop" }],
    rules: [{ kind: "HTTPRouteGroup", name: "web-routes", matches: ["api"] }],
  },
});

Deno.test("meshd with SMI CRDs that serve other versions", async (t) => {
  const cluster = await TestCluster.start({ controllerManager: false });
  const procs: MeshdProcess[] = [];
  const kc = `--kubeconfig=${cluster.kubeconfig}`;
  try {
    for (const ns of ["meshd", "shop"]) {
      await cluster.must("POST", "/api/v1/namespaces", {
        apiVersion: "v1",
        kind: "Namespace",
        metadata: { name: ns },
      });
    }
    for (const name of ["web", "web-v1", "web-v2"]) {
      await cluster.must("POST", "/api/v1/namespaces/shop/services", {
        apiVersion: "v1",
        kind: "Service",
        metadata: { name, namespace: "shop" },
        spec: { selector: { app: name }, ports: [{ name: "http", port: 80, targetPort: 8080 }] },
      });
    }
    // A backend Pod of web, running as the ServiceAccount the TrafficTarget names, so the
    // access rules have an endpoint to guard (no kubelet: the test writes Pod and slice).
    await cluster.must("POST", "/api/v1/namespaces/shop/serviceaccounts", {
      apiVersion: "v1",
      kind: "ServiceAccount",
      metadata: { name: "web", namespace: "shop" },
    });
    await cluster.must("POST", "/api/v1/namespaces/shop/pods", {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "web-0", namespace: "shop", labels: { app: "web" } },
      spec: { serviceAccountName: "web", containers: [{ name: "web", image: "none" }] },
    });
    await cluster.must(
      "PATCH",
      "/api/v1/namespaces/shop/pods/web-0/status",
      { status: { phase: "Running", podIP: "203.0.113.64", podIPs: [{ ip: "203.0.113.64" }] } },
      "application/merge-patch+json",
    );
    await cluster.must("POST", "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices", {
      apiVersion: "discovery.k8s.io/v1",
      kind: "EndpointSlice",
      metadata: {
        name: "web-0",
        namespace: "shop",
        labels: { "kubernetes.io/service-name": "web" },
      },
      addressType: "IPv4",
      endpoints: [{
        addresses: ["203.0.113.64"],
        conditions: { ready: true },
        targetRef: { kind: "Pod", name: "web-0", namespace: "shop" },
      }],
      ports: [{ name: "http", port: 8080, protocol: "TCP" }],
    });
    const meshKc = await meshdKubeconfig(cluster);
    const crds = await manifestCrds();

    // c) meshd starts before any SMI CRD; then CRDs serving several versions arrive.
    const early = MeshdProcess.start(meshKc, "meshd-early", ["--acl", ...TIMING]);
    procs.push(early);
    await t.step(
      "c) CRDs with several versions installed after meshd started are picked up",
      async () => {
        await waitPort(early, "web routed, no split yet", (p) => p.split === null);
        await installCrds(cluster, several(crds));
        // Written at v1alpha1 and v1alpha4, read by meshd at v1alpha3 (conversion None).
        await cluster.must(
          "POST",
          "/apis/split.smi-spec.io/v1alpha1/namespaces/shop/trafficsplits",
          split("split.smi-spec.io/v1alpha1", "web-split", [["web-v1", 3], ["web-v2", 1]]),
        );
        await cluster.must(
          "POST",
          "/apis/specs.smi-spec.io/v1alpha4/namespaces/shop/httproutegroups",
          routes("specs.smi-spec.io/v1alpha4"),
        );
        await cluster.must(
          "POST",
          "/apis/access.smi-spec.io/v1alpha1/namespaces/shop/traffictargets",
          target("access.smi-spec.io/v1alpha1", "shopper"),
        );
        const port = await waitPort(
          early,
          "split and access applied",
          (p) => p.split !== null && (p.access?.length ?? 0) > 0,
        );
        assert.deepEqual(port.split!.backends, [
          { service: "web-v1", weight: 3 },
          { service: "web-v2", weight: 1 },
        ]);
        assert.deepEqual(port.access!.map((a) => [a.trafficTarget, a.sources]), [
          ["shop/to-web", ["shop/shopper"]],
        ]);
      },
    );

    await t.step("a) several versions served: run, prepare and check work", async () => {
      // An update written at v1alpha4 reaches the running meshd.
      const cur = await cluster.must(
        "GET",
        "/apis/split.smi-spec.io/v1alpha4/namespaces/shop/trafficsplits/web-split",
      );
      (cur["spec"] as { backends: { weight: number }[] }).backends[1]!.weight = 5;
      await cluster.must(
        "PUT",
        "/apis/split.smi-spec.io/v1alpha4/namespaces/shop/trafficsplits/web-split",
        cur,
      );
      await waitPort(
        early,
        "the split updated at v1alpha4",
        (p) => p.split?.backends[1]?.weight === 5,
      );
      // A meshd started now, with the CRDs in place; it leads once the first one stopped (only
      // the leader watches the cluster).
      await early.stop();
      const late = MeshdProcess.start(meshKc, "meshd-late", ["--acl", ...TIMING]);
      procs.push(late);
      const port = await waitPort(
        late,
        "split and access applied",
        (p) => p.split !== null && (p.access?.length ?? 0) > 0,
      );
      assert.deepEqual(port.split!.backends.map((b) => b.weight), [3, 5]);
      await late.waitLog("started leading");
      // Extra versions are noted once per group, and nothing else about SMI is logged.
      const smiLogs = late.events().filter((e) => String(e["msg"]).includes("smi-spec.io"))
        .map((e) => `${e["level"]} ${e["msg"]}`);
      assert.deepEqual(smiLogs, [
        "info access.smi-spec.io/v1alpha2 is served; v1alpha3, v1alpha1 also served, and not read by meshd",
        "info specs.smi-spec.io/v1alpha3 is served; v1alpha4, v1alpha2, v1alpha1 also served, and not read by meshd",
        "info split.smi-spec.io/v1alpha3 is served; v1alpha4, v1alpha2, v1alpha1 also served, and not read by meshd",
      ]);

      const check = await meshd("check", "-o", "json", kc, `--bpffs=${cluster.dir}/no-bpffs`);
      assert.deepEqual(checkLines(check, "smi").map((l) => l.split(" ")[0]), ["ok", "ok", "ok"]);

      await putCorefile(cluster, await corefileFixture("coredns-1.11-kubeadm-1.30.Corefile"));
      const dnsSvc = (await kustomizationObjects()).find((o) => o.metadata.name === "meshd-dns")!;
      await serverSideApply(cluster, dnsSvc);
      const prepared = await meshd("prepare", kc);
      assert.equal(prepared.code, 0, prepared.out + prepared.err);
    });

    await t.step("b) a group served only at versions meshd does not read", async () => {
      const late = procs.at(-1)!;
      // split: v1alpha3 stays the storage version but is no longer served (only v1alpha4);
      // access: only v1alpha3 (recreated, its objects gone); specs as before.
      const splitCrd = crds.find((c) => c.spec.group === "split.smi-spec.io")!;
      const onlyV4 = variant(splitCrd, ["v1alpha3", "v1alpha4"], "v1alpha3");
      onlyV4.spec.versions[0]!["served"] = false;
      await installCrds(cluster, [onlyV4]);
      const accessCrds = crds.filter((c) => c.spec.group === "access.smi-spec.io");
      await deleteCrds(cluster, accessCrds);
      await installCrds(cluster, accessCrds.map((c) => variant(c, ["v1alpha3"], "v1alpha3")));
      // The TrafficSplit still exists (at v1alpha4) but meshd does not read that version: as a
      // meshd started now would, the running one drops it. The HTTPRouteGroup still reads.
      const port = await waitPort(
        late,
        "the split and access gone",
        (p) => p.split === null && p.access?.length === 0,
      );
      assert.equal(port.endpoints.length, 1);
      const groupWarnings = () =>
        late.events().filter((e) =>
          e["level"] === "warn" && /^(split|access)\.smi-spec\.io serves/.test(String(e["msg"]))
        ).map((e) => String(e["msg"]));
      await waitFor("a warning per group", () => groupWarnings().length >= 2 || undefined, 15_000)
        .catch((e) => {
          throw new Error(`${e.message}\n${late.child.lines.slice(-15).join("\n")}`);
        });
      assert.deepEqual(groupWarnings().sort(), [
        "access.smi-spec.io serves v1alpha3 but not v1alpha2, the version meshd reads",
        "split.smi-spec.io serves v1alpha4 but not v1alpha3, the version meshd reads",
      ]);
      assert.ok((await late.api("/healthz")).status === 200);

      // A fresh meshd in this state: the same, and each group named once.
      await late.stop();
      const fresh = MeshdProcess.start(meshKc, "meshd-fresh", ["--acl", ...TIMING]);
      procs.push(fresh);
      const p2 = await waitPort(
        fresh,
        "web routed, without split or access",
        (p) => p.split === null && p.access?.length === 0,
      );
      assert.equal(p2.endpoints.length, 1);
      const smiWarnings = fresh.events().filter((e) =>
        e["level"] === "warn" && String(e["msg"]).includes("smi-spec.io")
      ).map((e) => String(e["msg"]));
      assert.deepEqual(smiWarnings, [
        "access.smi-spec.io serves v1alpha3 but not v1alpha2, the version meshd reads",
        "split.smi-spec.io serves v1alpha4 but not v1alpha3, the version meshd reads",
      ]);
      const check = await meshd("check", "-o", "json", kc, `--bpffs=${cluster.dir}/no-bpffs`);
      assert.deepEqual(checkLines(check, "smi"), [
        "warn access.smi-spec.io serves v1alpha3 but not v1alpha2, the version meshd reads",
        "ok specs.smi-spec.io/v1alpha3 is served; v1alpha4, v1alpha2, v1alpha1 also served, and not read by meshd",
        "warn split.smi-spec.io serves v1alpha4 but not v1alpha3, the version meshd reads",
      ]);
      const prepared = await meshd("prepare", kc);
      assert.equal(prepared.code, 0, prepared.out + prepared.err);
    });
  } finally {
    for (const p of procs) await p.stop().catch(() => {});
    await cluster.stop();
  }
});
