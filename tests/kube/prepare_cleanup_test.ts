/**
 * `meshd prepare` and `meshd cleanup` against a real API server, with the Corefile of several
 * CoreDNS releases: prepare adds one block between markers and is idempotent, cleanup gives
 * back the very same Corefile and removes the shadow Services, and neither touches what it did
 * not add.
 */
import assert from "node:assert/strict";
import { TestCluster } from "../testenv/cluster.ts";
import { meshd } from "../testenv/cli.ts";
import { applyManifests, kustomizationObjects } from "../testenv/manifests.ts";
import { corefileFixture, corefileFixtureNames, putCorefile } from "../testenv/coredns.ts";

const CM = "/api/v1/namespaces/kube-system/configmaps";
const ALIASES = ["traefik.mesh", "maesh"];
/** The aliases each fixture already serves in a block of Traefik Mesh's (or Maesh's). */
const SERVED_BY_TRAEFIK_MESH: Record<string, string[]> = {
  "coredns-1.11-with-traefik-mesh.Corefile": ["traefik.mesh"],
  "coredns-1.8-with-traefik-mesh-1.4.Corefile": ["traefik.mesh"],
  "coredns-1.6-with-maesh.Corefile": ["maesh"],
};
const leftOutWarning = (alias: string) =>
  `meshd prepare: warning: the Corefile already serves "${alias}:53" in a block meshd did not add (Traefik ` +
  `Mesh's?), so CoreDNS does not forward ${alias} to meshd; run meshd prepare again after ` +
  "Traefik Mesh's cleanup removes that block\n";

Deno.test("meshd prepare and cleanup edit only meshd's block in CoreDNS's Corefile", async (t) => {
  const cluster = await TestCluster.start({ controllerManager: false });
  const kc = `--kubeconfig=${cluster.kubeconfig}`;
  try {
    const corefile = async () => {
      const cm = await cluster.must("GET", `${CM}/coredns`);
      return {
        text: (cm["data"] as Record<string, string>)["Corefile"]!,
        rv: (cm["metadata"] as { resourceVersion: string }).resourceVersion,
      };
    };
    const setCorefile = (text: string) => putCorefile(cluster, text);

    await t.step("prepare says what is missing before meshd is installed", async () => {
      let r = await meshd("prepare", kc);
      assert.equal(r.code, 1);
      assert.match(
        r.err,
        /^meshd prepare: error: cannot find the Service "meshd\/meshd-dns".*kubectl apply -k manifests\/\)\n$/,
      );
      // only the namespace and the DNS Service: the CoreDNS ConfigMap is still missing
      const objects = await kustomizationObjects();
      await applyManifests(
        cluster,
        objects.filter((o) => o.kind === "Namespace" || o.metadata.name === "meshd-dns"),
      );
      r = await meshd("prepare", kc);
      assert.equal(r.code, 1);
      assert.match(r.err, /cannot find the CoreDNS ConfigMap "kube-system\/coredns"/);
      assert.doesNotMatch(r.err, /\n.+\n/, "one line, no stack trace");
    });

    const dnsSvc = await cluster.must("GET", "/api/v1/namespaces/meshd/services/meshd-dns");
    const dnsIp = (dnsSvc["spec"] as { clusterIP: string }).clusterIP;
    const fixtures = corefileFixtureNames();
    assert.ok(fixtures.length >= 4);

    for (const f of fixtures) {
      await t.step(`prepare, prepare again, cleanup: ${f}`, async () => {
        const original = await corefileFixture(f);
        await setCorefile(original);
        const leftOut = SERVED_BY_TRAEFIK_MESH[f] ?? [];
        const zones = ["mesh", ...ALIASES.filter((a) => !leftOut.includes(a))];
        const r1 = await meshd("prepare", kc);
        assert.equal(r1.code, 0, r1.err);
        assert.equal(
          r1.out,
          `CoreDNS (kube-system/coredns) now forwards ${zones.join(", ")} to ${dnsIp}\n`,
        );
        // every fixture has the reload plugin: the only warnings are for the aliases left out
        assert.equal(r1.err, leftOut.map(leftOutWarning).join(""));
        const after = await corefile();
        assert.ok(after.text.startsWith(original));
        assert.ok(
          after.text.endsWith(`${zones.map((z) => `${z}:53`).join(" ")} {
    errors
    cache 5
    forward . ${dnsIp}:53
}
# END meshd
`),
          after.text,
        );
        // Idempotent: no write at all, so the resource version stays.
        const r2 = await meshd("prepare", kc);
        assert.equal(r2.code, 0);
        assert.equal(
          r2.out,
          `CoreDNS (kube-system/coredns) already forwards ${zones.join(", ")} to ${dnsIp}; ` +
            "nothing changed\n",
        );
        assert.equal(r2.err, r1.err, "the same warnings while Traefik Mesh's block stays");
        assert.equal((await corefile()).rv, after.rv);
        const r3 = await meshd("cleanup", kc);
        assert.equal(r3.code, 0, r3.err);
        assert.match(r3.out, /^Removed meshd's block/);
        assert.equal((await corefile()).text, original, "byte for byte what was there");
        const r4 = await meshd("cleanup", kc);
        assert.match(r4.out, /has no meshd block; nothing changed/);
      });
    }

    await t.step("prepare refuses a Corefile that already serves the domain", async () => {
      const traefik = await corefileFixture("coredns-1.11-with-traefik-mesh.Corefile");
      await setCorefile(traefik);
      const before = await corefile();
      const r = await meshd("prepare", kc, "--domain=traefik.mesh");
      assert.equal(r.code, 1);
      assert.match(
        r.err,
        /already has a server block for "traefik\.mesh:53" that meshd did not add/,
      );
      assert.equal((await corefile()).rv, before.rv, "nothing written");
    });

    await t.step(
      "prepare adds an alias once Traefik Mesh's cleanup removed its block; cleanup restores",
      async () => {
        const theirs = await corefileFixture("coredns-1.8-with-traefik-mesh-1.4.Corefile");
        await setCorefile(theirs);
        const r1 = await meshd("prepare", kc);
        assert.equal(r1.code, 0, r1.err);
        assert.match(r1.out, /now forwards mesh, maesh to /);
        assert.equal(r1.err, leftOutWarning("traefik.mesh"), "one line naming the alias");
        // Traefik Mesh's cleanup takes out its lines from its begin marker to its end marker
        const migrated = (await corefile()).text.replace(
          /#### Begin Traefik Mesh Block\n[^]*?#### End Traefik Mesh Block\n/,
          "",
        );
        assert.doesNotMatch(migrated, /traefik\.mesh/);
        await setCorefile(migrated);
        const r2 = await meshd("prepare", kc);
        assert.equal(r2.code, 0, r2.err);
        assert.equal(
          r2.out,
          `CoreDNS (kube-system/coredns) now forwards mesh, traefik.mesh, maesh to ${dnsIp}\n`,
        );
        assert.equal(r2.err, "");
        const after = (await corefile()).text;
        assert.match(after, /\nmesh:53 traefik\.mesh:53 maesh:53 \{\n/);
        assert.equal(after.split("# BEGIN meshd").length, 2, "replaced in place");
        assert.equal((await meshd("cleanup", kc)).code, 0);
        assert.equal(
          (await corefile()).text,
          theirs.replace(/#### Begin Traefik Mesh Block\n[^]*?#### End Traefik Mesh Block\n/, ""),
          "byte for byte what was there before meshd",
        );
        // --domain-aliases "" turns them off: the domain alone
        await setCorefile(theirs);
        const r3 = await meshd("prepare", kc, "--domain-aliases=");
        assert.equal(r3.code, 0, r3.err);
        assert.equal(r3.err, "");
        assert.match((await corefile()).text, /\nmesh:53 \{\n/);
        // a name that is not a domain name would become Corefile syntax
        const bad = await meshd("prepare", kc, "--domain-aliases=traefik.mesh,x {");
        // A usage error, found when the flags are read (exit 2), naming the item.
        assert.equal(bad.code, 2);
        assert.equal(
          bad.err,
          'meshd prepare: error: invalid value "traefik.mesh,x {" for --domain-aliases: expected ' +
            'each item a domain name such as "mesh" or "traefik.mesh", and "x {" is not; run ' +
            '"meshd prepare --help" for the flags\n',
        );
      },
    );

    await t.step("prepare warns when CoreDNS will not reload the Corefile", async () => {
      await setCorefile(".:53 {\n    forward . /etc/resolv.conf\n}\n");
      const r = await meshd("prepare", kc, "--dns-ttl=30s");
      assert.equal(r.code, 0);
      assert.match(
        r.err,
        /^meshd prepare: warning: the Corefile has no reload plugin.*rollout restart/,
      );
      assert.match((await corefile()).text, /cache 30\n/);
    });

    await t.step("cleanup removes the shadow Services and leaves other Services", async () => {
      const svc = (name: string, labels: Record<string, string>) =>
        cluster.must("POST", "/api/v1/namespaces/meshd/services", {
          apiVersion: "v1",
          kind: "Service",
          metadata: { name, labels },
          spec: { ports: [{ port: 80 }] },
        });
      const shadow = { "app.kubernetes.io/managed-by": "meshd", "meshd.io/role": "shadow" };
      await svc("m-a-shop-000000000001", shadow);
      await svc("m-b-shop-000000000002", shadow);
      // a look-alike someone else manages
      await svc("m-c-shop-000000000003", { "meshd.io/role": "shadow" });
      // a live controller would write them again: cleanup refuses unless forced
      const now = new Date().toISOString().replace(/\.(\d{3})\d*Z$/, ".$1000Z");
      await cluster.must("POST", "/apis/coordination.k8s.io/v1/namespaces/meshd/leases", {
        apiVersion: "coordination.k8s.io/v1",
        kind: "Lease",
        metadata: { name: "meshd-controller" },
        spec: { holderIdentity: "meshd-node-1", leaseDurationSeconds: 60, renewTime: now },
      });
      const refused = await meshd("cleanup", kc);
      assert.equal(refused.code, 1);
      assert.match(refused.err, /"meshd-node-1" holds the Lease meshd\/meshd-controller/);
      assert.match((await corefile()).text, /# END meshd/, "nothing removed");

      const r = await meshd("cleanup", kc, "--force");
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, /Deleted 2 shadow Services in meshd\n$/);
      const left = await cluster.must("GET", "/api/v1/namespaces/meshd/services");
      assert.deepEqual(
        (left["items"] as { metadata: { name: string } }[]).map((i) => i.metadata.name).sort(),
        ["m-c-shop-000000000003", "meshd-dns"],
      );
      assert.doesNotMatch((await corefile()).text, /meshd/);
    });
  } finally {
    await cluster.stop();
  }
});
