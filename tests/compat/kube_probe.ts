/**
 * What differs between Kubernetes minors where meshd depends on it, asked of a real API server
 * (`$MESHD_KUBE_VERSION`, built by tests/testenv/kube/build.sh). `scripts/compat` runs this
 * file per version with `deno test` (it is not named `*_test.ts`, so CI's run, which keeps one
 * minor, leaves it out).
 *
 * Each step asserts what meshd needs and prints one `COMPAT {"row", "value"}` line saying what
 * the server did, which `tests/compat/report.ts` puts in the table.
 *
 * @module
 */
import assert from "node:assert/strict";
import { KubeApi, loadKubeConfig } from "../../src/kube/mod.ts";
import { TestCluster } from "../testenv/cluster.ts";

function fact(row: string, value: string): void {
  console.log(`COMPAT ${JSON.stringify({ row, value })}`);
}

type Obj = Record<string, unknown>;

/** Served versions of an API group, preferred first. */
async function served(c: TestCluster, group: string): Promise<string[]> {
  const r = await c.request("GET", `/apis/${group}`);
  if (r.status === 404) return [];
  const g = r.body as { versions?: { version: string }[]; preferredVersion?: { version: string } };
  return (g.versions ?? []).map((v) => v.version);
}

Deno.test("Kubernetes probe: the API behaviours meshd relies on, as this release serves them", async (t) => {
  const c = await TestCluster.start();
  try {
    const version = await c.must("GET", "/version");
    fact("server", String(version["gitVersion"]));
    const ns = "compat-probe";
    await c.must("POST", "/api/v1/namespaces", { metadata: { name: ns } });

    await t.step("Lease: coordination.k8s.io/v1 holds meshd's leader election", async () => {
      const versions = await served(c, "coordination.k8s.io");
      const lease = {
        apiVersion: "coordination.k8s.io/v1",
        kind: "Lease",
        metadata: { name: "meshd-probe", namespace: ns },
        spec: { holderIdentity: "node-a", leaseDurationSeconds: 15, leaseTransitions: 0 },
      };
      const made = await c.request(
        "POST",
        `/apis/coordination.k8s.io/v1/namespaces/${ns}/leases`,
        lease,
      );
      fact("Lease", `served ${versions.join(", ")}; create v1: ${made.status}`);
      assert.ok(versions.includes("v1"), `coordination.k8s.io serves ${versions}`);
      assert.equal(made.status, 201, JSON.stringify(made.body));
      // Optimistic concurrency, which the election's renewals rely on: a stale write loses.
      const got = await c.must(
        "GET",
        `/apis/coordination.k8s.io/v1/namespaces/${ns}/leases/meshd-probe`,
      );
      const stale = structuredClone(got) as Obj & { metadata: Obj; spec: Obj };
      (got["spec"] as Obj)["holderIdentity"] = "node-b";
      await c.must("PUT", `/apis/coordination.k8s.io/v1/namespaces/${ns}/leases/meshd-probe`, got);
      stale.spec["holderIdentity"] = "node-c";
      const lost = await c.request(
        "PUT",
        `/apis/coordination.k8s.io/v1/namespaces/${ns}/leases/meshd-probe`,
        stale,
      );
      assert.equal(lost.status, 409, "a write with an old resourceVersion conflicts");
    });

    await t.step("EndpointSlice: discovery.k8s.io/v1 keeps the fields meshd reads", async () => {
      const versions = await served(c, "discovery.k8s.io");
      const slice = {
        apiVersion: "discovery.k8s.io/v1",
        kind: "EndpointSlice",
        metadata: {
          name: "probe-1",
          namespace: ns,
          labels: { "kubernetes.io/service-name": "probe" },
        },
        addressType: "IPv4",
        ports: [{ name: "web", port: 8080, protocol: "TCP" }],
        endpoints: [{
          addresses: ["203.0.113.9"],
          conditions: { ready: false, serving: true, terminating: true },
          nodeName: "node-a",
          zone: "zone-a",
          hints: { forZones: [{ name: "zone-a" }], forNodes: [{ name: "node-a" }] },
        }],
      };
      const r = await c.request(
        "POST",
        `/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices`,
        slice,
      );
      assert.equal(r.status, 201, JSON.stringify(r.body));
      const e = (r.body["endpoints"] as Obj[])[0]!;
      const cond = e["conditions"] as Obj;
      const hints = (e["hints"] ?? {}) as Obj;
      const kept = [
        `serving=${"serving" in cond}`,
        `terminating=${"terminating" in cond}`,
        `nodeName=${"nodeName" in e}`,
        `zone=${"zone" in e}`,
        `hints.forZones=${"forZones" in hints}`,
        `hints.forNodes=${"forNodes" in hints}`,
      ];
      fact("EndpointSlice fields", `served ${versions.join(", ")}; kept: ${kept.join(" ")}`);
      // meshd routes by ready/serving/terminating and nodeName; hints are optional to it.
      assert.equal(cond["serving"], true);
      assert.equal(cond["terminating"], true);
      assert.equal(e["nodeName"], "node-a");
    });

    await t.step(
      "Service: internalTrafficPolicy Local is kept; trafficDistribution values",
      async () => {
        const make = async (name: string, spec: Obj) =>
          await c.request("POST", `/api/v1/namespaces/${ns}/services`, {
            metadata: { name },
            spec: { ports: [{ port: 80 }], selector: { app: name }, ...spec },
          });
        const itp = await make("probe-itp", { internalTrafficPolicy: "Local" });
        assert.equal(itp.status, 201, JSON.stringify(itp.body));
        const kept = (itp.body["spec"] as Obj)["internalTrafficPolicy"];
        fact("internalTrafficPolicy", `Local ${kept === "Local" ? "kept" : `became ${kept}`}`);
        assert.equal(kept, "Local");
        const dist: string[] = [];
        for (const v of ["PreferClose", "PreferSameZone", "PreferSameNode"]) {
          const r = await make(`probe-td-${v.toLowerCase()}`, { trafficDistribution: v });
          const got = r.status === 201 ? (r.body["spec"] as Obj)["trafficDistribution"] : undefined;
          dist.push(
            r.status !== 201
              ? `${v} refused (${r.status})`
              : got === v
              ? `${v} kept`
              : `${v} dropped`,
          );
        }
        fact("trafficDistribution", dist.join(", "));
      },
    );

    await t.step("DaemonSet: rollingUpdate.maxSurge is kept (meshd's rollouts surge)", async () => {
      const r = await c.request("POST", `/apis/apps/v1/namespaces/${ns}/daemonsets`, {
        metadata: { name: "probe" },
        spec: {
          selector: { matchLabels: { app: "probe" } },
          updateStrategy: {
            type: "RollingUpdate",
            rollingUpdate: { maxSurge: 1, maxUnavailable: 0 },
          },
          template: {
            metadata: { labels: { app: "probe" } },
            spec: { containers: [{ name: "c", image: "probe:1" }] },
          },
        },
      });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      const ru =
        ((r.body["spec"] as Obj)["updateStrategy"] as { rollingUpdate: Obj }).rollingUpdate;
      fact(
        "DaemonSet maxSurge",
        `maxSurge=${ru["maxSurge"] ?? "dropped"} maxUnavailable=${ru["maxUnavailable"]}`,
      );
      assert.equal(ru["maxSurge"], 1);
      assert.equal(ru["maxUnavailable"], 0);
    });

    await t.step(
      "Pod Security admission: restricted refuses meshd's pod, privileged admits it",
      async () => {
        // What meshd's DaemonSet pod asks for (manifests/daemonset.yaml), reduced to the parts
        // Pod Security judges.
        const pod = (name: string, namespace: string) => ({
          metadata: { name, namespace },
          spec: {
            hostNetwork: true,
            containers: [{
              name: "meshd",
              image: "meshd:0.1.0",
              securityContext: { capabilities: { add: ["BPF", "NET_ADMIN", "SYS_RESOURCE"] } },
              volumeMounts: [{ name: "bpffs", mountPath: "/sys/fs/bpf" }],
            }],
            volumes: [{ name: "bpffs", hostPath: { path: "/sys/fs/bpf" } }],
          },
        });
        const results: string[] = [];
        for (const level of ["restricted", "baseline", "privileged"]) {
          const name = `psa-${level}`;
          await c.must("POST", "/api/v1/namespaces", {
            metadata: { name, labels: { "pod-security.kubernetes.io/enforce": level } },
          });
          const r = await c.request("POST", `/api/v1/namespaces/${name}/pods`, pod("meshd", name));
          results.push(`${level}: ${r.status === 201 ? "admitted" : `refused (${r.status})`}`);
          if (level === "privileged") assert.equal(r.status, 201, JSON.stringify(r.body));
          else {
            assert.equal(r.status, 403, JSON.stringify(r.body));
            assert.match(String(r.body["message"]), /violates PodSecurity/);
          }
        }
        fact("Pod Security admission", results.join(", "));
      },
    );

    await t.step(
      "bookmarks: a watch from version 0 sends what exists; whether a BOOKMARK follows",
      async () => {
        // meshd's reflector resumes from the last version it saw, so it needs no bookmark, and
        // the server owes none ("clients may not assume the server will send any BOOKMARK
        // event during a session"); when and whether one comes differs by release.
        await c.must("POST", `/api/v1/namespaces/${ns}/services`, {
          metadata: { name: "bookmark-probe" },
          spec: { ports: [{ port: 80 }] },
        });
        const api = new KubeApi(loadKubeConfig(c.kubeconfig));
        const seconds = 12;
        const t0 = performance.now();
        const ac = new AbortController();
        let sawService = false;
        let bookmarkAfter = -1;
        await api.watch(`/api/v1/namespaces/${ns}/services`, "0", (ev) => {
          if (ev.type === "BOOKMARK") {
            bookmarkAfter = (performance.now() - t0) / 1000;
            ac.abort();
          } else if (
            ev.object["metadata"] && (ev.object["metadata"] as Obj)["name"] === "bookmark-probe"
          ) {
            sawService = true;
          }
        }, { signal: ac.signal, timeoutSeconds: seconds }).catch((e) => {
          if (!ac.signal.aborted) throw e;
        });
        fact(
          "watch bookmarks",
          bookmarkAfter < 0
            ? `no BOOKMARK in a ${seconds} s watch from version 0`
            : `BOOKMARK ${bookmarkAfter.toFixed(1)} s into a watch from version 0`,
        );
        assert.ok(sawService, "the watch from version 0 did not send the existing Service");
      },
    );

    await t.step(
      "CRDs: meshd's SMI CRDs apply server-side, twice, and are Established",
      async () => {
        const first = await c.kubectl("apply", "--server-side", "-f", "manifests/crds/");
        assert.equal(first.code, 0, first.out);
        const again = await c.kubectl("apply", "--server-side", "-f", "manifests/crds/");
        assert.equal(again.code, 0, again.out);
        const established = await c.kubectl(
          "wait",
          "--for=condition=Established",
          "--timeout=60s",
          "-f",
          "manifests/crds/",
        );
        assert.equal(established.code, 0, established.out);
        fact(
          "server-side apply of the CRDs",
          `applied twice: ${again.out.trim().split("\n").length} CRDs, Established`,
        );
      },
    );

    await t.step(
      "kustomization: manifests/ applies server-side, as users install meshd",
      async () => {
        // No kubelet runs here: the DaemonSet and Jobs are stored and admitted, nothing starts.
        const r = await c.kubectl("apply", "--server-side", "-k", "manifests/");
        const warnings = r.out.split("\n").filter((l) => /^Warning:/.test(l));
        fact(
          "kubectl apply -k manifests/",
          `exit ${r.code}${warnings.length ? `; ${warnings.join("; ")}` : ", no warnings"}`,
        );
        assert.equal(r.code, 0, r.out);
      },
    );
  } finally {
    await c.stop();
  }
});
