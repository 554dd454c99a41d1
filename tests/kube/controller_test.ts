/**
 * What the elected controller writes: shadow Services for meshed services, kept in line and
 * removed when stale, written by the leader only.
 */
import assert from "node:assert/strict";
import { shadowServiceName } from "../../src/controller/mod.ts";
import { TestCluster } from "../testenv/cluster.ts";
import { MeshdProcess } from "../testenv/meshd.ts";
import { meshdKubeconfig } from "../testenv/manifests.ts";
import { waitFor } from "../testenv/process.ts";
import { dig } from "../../src/dns/_testing.ts";
import { CoreDns, corednsBinary, corefileFixture, putCorefile } from "../testenv/coredns.ts";
import { meshd } from "../testenv/cli.ts";
import { kustomizationObjects } from "../testenv/manifests.ts";
import { serverSideApply } from "../testenv/cluster.ts";
import { freePort } from "../testenv/process.ts";
import { currentMeshBlock } from "../../src/controller/mod.ts";

const TIMING = ["--lease-duration=4s", "--renew-deadline=3s", "--retry-period=500ms"];

Deno.test("the leader writes node-local shadow Services and removes stale ones", async () => {
  const cluster = await TestCluster.start({ controllerManager: false });
  const procs: MeshdProcess[] = [];
  try {
    for (const ns of ["meshd", "shop"]) {
      await cluster.must("POST", "/api/v1/namespaces", {
        apiVersion: "v1",
        kind: "Namespace",
        metadata: { name: ns },
      });
    }
    const longNs = "n".repeat(60);
    await cluster.must("POST", "/api/v1/namespaces", {
      apiVersion: "v1",
      kind: "Namespace",
      metadata: { name: longNs },
    });
    const svc = (ns: string, name: string, ports: unknown[], annotations = {}) =>
      cluster.must("POST", `/api/v1/namespaces/${ns}/services`, {
        apiVersion: "v1",
        kind: "Service",
        metadata: { name, namespace: ns, annotations },
        spec: { selector: { app: name }, ports },
      });
    await svc("shop", "cart", [{ name: "web", port: 80 }, { name: "admin", port: 8081 }]);
    await svc("shop", "db", [{ name: "pg", port: 5432 }], { "meshd.io/traffic-type": "tcp" });
    await svc(longNs, "s".repeat(60), [{ port: 80 }]);

    const kc = await meshdKubeconfig(cluster);
    for (const n of ["meshd-a", "meshd-b"]) {
      procs.push(MeshdProcess.start(kc, n, [...TIMING, "--tcp-ports=20000-20099"]));
    }
    const list = async () => {
      const r = await cluster.must(
        "GET",
        "/api/v1/namespaces/meshd/services?labelSelector=meshd.io%2Frole%3Dshadow",
      );
      return r["items"] as {
        metadata: { name: string; labels: Record<string, string> };
        spec: {
          clusterIP: string;
          internalTrafficPolicy: string;
          selector: Record<string, string>;
          ports: { port: number; targetPort: number; protocol: string }[];
        };
      }[];
    };
    const items = await waitFor("three shadow Services", async () => {
      const l = await list();
      return l.length === 3 ? l : undefined;
    }, 30_000).catch((e) => {
      const logs = procs.map((p) => `--- ${p.identity}\n${p.child.lines.slice(-10).join("\n")}`);
      throw new Error(`${e.message}\n${logs.join("\n")}`);
    });
    const byName = new Map(items.map((i) => [i.metadata.name, i]));
    const cart = byName.get(shadowServiceName("shop", "cart"))!;
    assert.ok(cart, [...byName.keys()].join(", "));
    assert.equal(cart.spec.internalTrafficPolicy, "Local");
    assert.deepEqual(cart.spec.selector, { "app.kubernetes.io/name": "meshd" });
    const httpPort = procs[0]!.httpPort; // the leader's; both have their own
    assert.deepEqual(
      cart.spec.ports.map((p) => p.port),
      [80, 8081],
    );
    assert.ok(
      cart.spec.ports.every((p) => procs.some((m) => m.httpPort === p.targetPort)),
      `HTTP ports go to the HTTP entrypoint (${httpPort})`,
    );
    const db = byName.get(shadowServiceName("shop", "db"))!;
    const dbPort = db.spec.ports[0]!;
    assert.equal(dbPort.port, 5432);
    assert.ok(dbPort.targetPort >= 20000 && dbPort.targetPort <= 20099, String(dbPort.targetPort));
    for (const name of byName.keys()) assert.ok(name.length <= 63, name);
    assert.equal(cart.metadata.labels["meshd.io/shadow-of-namespace"], "shop");

    // Exactly one process wrote them: the leader. It logs once its pass is done, which can be
    // a moment after the Services are visible.
    const wrote = (p: MeshdProcess) =>
      p.events().some((e) => e["msg"] === "shadow services updated");
    await waitFor("the writer's log line", () => procs.some(wrote) || undefined, 10_000);
    const writers = procs.filter(wrote);
    const leaders = procs.filter((p) => p.events().some((e) => e["msg"] === "started leading"));
    assert.equal(leaders.length, 1);
    assert.deepEqual(writers.map((p) => p.identity), leaders.map((p) => p.identity));

    // Every node's DNS answers the mesh names with the shadow Services' ClusterIPs.
    for (const p of procs) {
      for (const [ns, n] of [["shop", "cart"], ["shop", "db"]] as const) {
        const ip = byName.get(shadowServiceName(ns, n))!.spec.clusterIP;
        assert.match(ip, /^198\.51\.100\./);
        const r = await waitFor(`${p.identity} to resolve ${n}.${ns}.mesh`, async () => {
          const r = await dig(p.dnsPort, `${n}.${ns}.mesh`, "A");
          return r.answer.length > 0 ? r : undefined;
        }, 10_000);
        assert.deepEqual(r.answer, [`${n}.${ns}.mesh. 5 IN A ${ip}`]);
      }
      assert.equal((await dig(p.dnsPort, "nope.shop.mesh", "A")).status, "NXDOMAIN");
      assert.equal((await dig(p.dnsPort, "cart.shop.mesh", "AAAA")).status, "NOERROR");
    }

    // As clients resolve, through CoreDNS: meshd prepare writes its block into the Corefile,
    // and a real CoreDNS serving that block sends the mesh names to meshd.
    await putCorefile(cluster, await corefileFixture("coredns-1.11-kubeadm-1.30.Corefile"));
    const dnsSvc = (await kustomizationObjects()).find((o) => o.metadata.name === "meshd-dns")!;
    const applied = await serverSideApply(cluster, dnsSvc);
    const dnsIp = (applied["spec"] as { clusterIP: string }).clusterIP;
    const prepared = await meshd("prepare", `--kubeconfig=${cluster.kubeconfig}`);
    assert.equal(prepared.code, 0, prepared.err);
    const cm = await cluster.must("GET", "/api/v1/namespaces/kube-system/configmaps/coredns");
    const block = currentMeshBlock((cm["data"] as { Corefile: string }).Corefile)!;
    assert.ok(block.includes(`forward . ${dnsIp}:53\n`), block);
    // The domain and both aliases of Traefik Mesh are keys of the one server block.
    assert.match(block, /^mesh:53 traefik\.mesh:53 maesh:53 \{$/m);
    // The one change to the block: nothing on the host may connect to a ClusterIP (no
    // kube-proxy routes it here), so CoreDNS forwards to one meshd's DNS port directly, and it
    // listens on a free loopback port instead of 53.
    const corePort = freePort();
    const onLoopback = (text: string, to: string) =>
      text
        .replace(/^(\s*forward \. ).*$/m, `$1${to}`)
        .replace(/^([^#\s].*) \{$/m, (_, keys: string) =>
          `${keys.replaceAll(":53", `:${corePort}`)} {\n    bind 127.0.0.1`);
    const local = onLoopback(block, `127.0.0.1:${procs[0]!.dnsPort}`);
    assert.match(
      local,
      new RegExp(`^mesh:${corePort} traefik\\.mesh:${corePort} maesh:${corePort} \\{$`, "m"),
    );
    const coredns = await CoreDns.start(cluster, local, corePort, "mesh");
    try {
      for (const domain of ["mesh", "traefik.mesh", "maesh"]) {
        for (const [ns, n] of [["shop", "cart"], ["shop", "db"]] as const) {
          const ip = byName.get(shadowServiceName(ns, n))!.spec.clusterIP;
          const r = await dig(coredns.port, `${n}.${ns}.${domain}`, "A");
          assert.equal(r.status, "NOERROR", `${n}.${ns}.${domain}`);
          assert.deepEqual(r.answer.map((a) => a.replace(/ \d+ IN /, " IN ")), [
            `${n}.${ns}.${domain}. IN A ${ip}`,
          ]);
        }
        assert.equal((await dig(coredns.port, `nope.shop.${domain}`, "A")).status, "NXDOMAIN");
      }
    } finally {
      await coredns.stop();
    }

    // During a migration Traefik Mesh's own block still serves traefik.mesh: prepare leaves that
    // alias out, and CoreDNS, which refuses one zone in two blocks, loads both blocks.
    const theirs = await corefileFixture("coredns-1.8-with-traefik-mesh-1.4.Corefile");
    await putCorefile(cluster, theirs);
    const held = await meshd("prepare", `--kubeconfig=${cluster.kubeconfig}`);
    assert.equal(held.code, 0, held.err);
    assert.match(held.err, /already serves "traefik\.mesh:53"/);
    const cm2 = await cluster.must("GET", "/api/v1/namespaces/kube-system/configmaps/coredns");
    const ours = currentMeshBlock((cm2["data"] as { Corefile: string }).Corefile)!;
    assert.match(ours, /^mesh:53 maesh:53 \{$/m);
    // Theirs as the fixture has it, sent to a loopback port where nothing answers, so a name
    // that reaches it fails (SERVFAIL) where one that reaches meshd gets its address.
    const theirBlock = theirs.slice(theirs.indexOf("#### Begin Traefik Mesh Block"));
    const both = onLoopback(theirBlock, `127.0.0.1:${freePort()}`) + "\n" +
      onLoopback(ours, `127.0.0.1:${procs[0]!.dnsPort}`);
    const withTheirs = await CoreDns.start(cluster, both, corePort, "mesh");
    try {
      const ip = byName.get(shadowServiceName("shop", "cart"))!.spec.clusterIP;
      for (const domain of ["mesh", "maesh"]) {
        const r = await dig(withTheirs.port, `cart.shop.${domain}`, "A");
        assert.deepEqual(r.answer.map((a) => a.replace(/ \d+ IN /, " IN ")), [
          `cart.shop.${domain}. IN A ${ip}`,
        ]);
      }
      const r = await dig(withTheirs.port, "cart.shop.traefik.mesh", "A");
      assert.equal(r.status, "SERVFAIL", "traefik.mesh still goes to Traefik Mesh's block");
    } finally {
      await withTheirs.stop();
    }
    // Had meshd's block named traefik.mesh too, CoreDNS would not have started at all.
    const clash = `${cluster.dir}/Corefile.clash`;
    await Deno.writeTextFile(
      clash,
      both.replace(/^mesh:(\d+) maesh:\d+ \{$/m, "mesh:$1 traefik.mesh:$1 {"),
    );
    const refused = await new Deno.Command(await corednsBinary(), {
      args: ["-conf", clash],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(30_000),
    }).output();
    assert.equal(refused.success, false);
    assert.match(
      new TextDecoder().decode(refused.stdout) + new TextDecoder().decode(refused.stderr),
      /traefik\.mesh.*already defined/,
    );

    // Stale: the Service goes, so does its shadow.
    await cluster.must("DELETE", "/api/v1/namespaces/shop/services/db");
    await waitFor("the db shadow Service to be removed", async () => {
      const l = await list();
      return l.some((i) => i.metadata.name === shadowServiceName("shop", "db")) ? undefined : true;
    }, 15_000);
    // and its name with it, on every node
    for (const p of procs) {
      await waitFor(`${p.identity} to answer NXDOMAIN for db.shop.mesh`, async () => {
        return (await dig(p.dnsPort, "db.shop.mesh", "A")).status === "NXDOMAIN" || undefined;
      }, 10_000);
    }
  } finally {
    for (const p of procs) await p.stop();
    await cluster.stop();
  }
});
