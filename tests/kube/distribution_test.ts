/**
 * Config distribution between real meshd processes against the real API server, on loopback:
 * the elected leader alone watches the cluster and streams the config (TLS, nodes checked by
 * TokenReview); every node applies it, saves it, and keeps it through a leader crash, an API
 * server outage and its own restart. (Traffic through the mesh is the netns e2e tier's.)
 */
import assert from "node:assert/strict";
import { TestCluster } from "../testenv/cluster.ts";
import { MeshdProcess } from "../testenv/meshd.ts";
import { meshdKubeconfig } from "../testenv/manifests.ts";
import { waitFor } from "../testenv/process.ts";

const TIMING = ["--lease-duration=4s", "--renew-deadline=3s", "--retry-period=500ms"];

interface Config {
  version: number;
  services: { name: string; ports: { endpoints: { address: string }[] }[] }[];
}

async function configOf(p: MeshdProcess): Promise<Config | null> {
  const r = await p.api("/api/config").catch(() => null);
  return r?.status === 200 ? JSON.parse(r.body) : null;
}

/** The addresses of `name`'s first port, as the node routes them; null without the service. */
async function endpointsOn(p: MeshdProcess, name: string): Promise<string[] | null> {
  const c = await configOf(p);
  const s = c?.services.find((s) => s.name === name);
  return s ? s.ports[0]!.endpoints.map((e) => e.address).sort() : null;
}

function slice(name: string, service: string, addresses: string[]) {
  return {
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: { name, namespace: "shop", labels: { "kubernetes.io/service-name": service } },
    addressType: "IPv4",
    ports: [{ name: "web", port: 8080, protocol: "TCP" }],
    endpoints: addresses.map((a) => ({ addresses: [a], conditions: { ready: true } })),
  };
}

const leaderOf = (procs: MeshdProcess[]) =>
  procs.find((p) => {
    const ev = p.events().filter((e) => /^controller (started|stopped)$/.test(`${e["msg"]}`));
    return ev.at(-1)?.["msg"] === "controller started";
  });

/** Waits until every node in `procs` routes `name` to exactly `want`. */
async function everyNodeHas(procs: MeshdProcess[], name: string, want: string[]) {
  await waitFor(`${name} -> ${want.join(",")} on every node`, async () => {
    for (const p of procs) {
      if (JSON.stringify(await endpointsOn(p, name)) !== JSON.stringify(want)) return undefined;
    }
    return true;
  }, 20_000).catch(async (e) => {
    const seen = await Promise.all(
      procs.map(async (p) =>
        `${p.identity}: ${JSON.stringify(await endpointsOn(p, name))}\n${
          p.child.lines.slice(-8).join("\n")
        }`
      ),
    );
    throw new Error(`${e.message}\n${seen.join("\n")}`);
  });
}

Deno.test("distribution: the leader streams the config to every authenticated node, and it survives a leader crash, an API outage and a node restart", async (t) => {
  const cluster = await TestCluster.start({ controllerManager: false });
  const procs = new Map<string, MeshdProcess>();
  const live = () => [...procs.values()];
  try {
    const kc = await meshdKubeconfig(cluster);
    await cluster.must("POST", "/api/v1/namespaces", {
      apiVersion: "v1",
      kind: "Namespace",
      metadata: { name: "shop" },
    });
    await cluster.must("POST", "/api/v1/namespaces/shop/services", {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "cart", namespace: "shop" },
      spec: { ports: [{ name: "web", port: 80, targetPort: 8080 }] },
    });
    const slicePath = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices";
    await cluster.must("POST", slicePath, slice("cart-1", "cart", ["203.0.113.10"]));
    const start = (n: string) => {
      const p = MeshdProcess.start(kc, n, TIMING, `${cluster.dir}/state-${n}`);
      procs.set(n, p);
      return p;
    };
    for (const n of ["meshd-a", "meshd-b", "meshd-c"]) start(n);

    await t.step("every node gets the config from the leader alone", async () => {
      await everyNodeHas(live(), "cart", ["203.0.113.10"]);
      const leader = leaderOf(live())!;
      assert.ok(leader, "one meshd runs the controller");
      for (const p of live()) {
        // only the leader watches the cluster's objects
        const watched = p.events().some((e) => e["msg"] === "config published");
        assert.equal(watched, p === leader, `${p.identity} published: ${watched}`);
        await p.waitLog("config applied", (e) => e["from"] === "leader");
        const ready = await p.api("/readyz");
        assert.equal(ready.status, 200, ready.body);
      }
      const status = await waitFor("the leader to see every node in sync", async () => {
        const s = JSON.parse((await leader.api("/api/status/nodes")).body);
        return s.nodes.length === 3 && s.nodes.every((n: { inSync: boolean }) => n.inSync)
          ? s
          : undefined;
      });
      assert.equal(status.leading, true);
      assert.equal(status.leader, leader.identity);
      assert.deepEqual(status.nodes.map((n: { node: string }) => n.node), [
        "meshd-a",
        "meshd-b",
        "meshd-c",
      ]);
      const metrics = (await leader.api("/metrics")).body;
      assert.match(metrics, /^meshd_distribution_nodes\{state="in_sync"\} 3$/m);
      assert.match(metrics, /^meshd_controller_leading 1$/m);
      const other = live().find((p) => p !== leader)!;
      const theirs = JSON.parse((await other.api("/api/status/nodes")).body);
      assert.equal(theirs.leading, false);
      assert.equal(theirs.leader, leader.identity, "a node says who leads");
      assert.match((await other.api("/metrics")).body, /^meshd_distribution_connected 1$/m);
    });

    await t.step("a change reaches every node as a delta", async () => {
      await cluster.must(
        "PUT",
        `${slicePath}/cart-1`,
        {
          ...slice("cart-1", "cart", ["203.0.113.10", "203.0.113.11"]),
          metadata: {
            ...slice("cart-1", "cart", []).metadata,
            resourceVersion: ((await cluster.must("GET", `${slicePath}/cart-1`))["metadata"] as {
              resourceVersion: string;
            }).resourceVersion,
          },
        },
      );
      await everyNodeHas(live(), "cart", ["203.0.113.10", "203.0.113.11"]);
      for (const p of live()) {
        assert.match(
          (await p.api("/metrics")).body,
          /^meshd_distribution_updates_total\{kind="delta"\} [1-9]/m,
        );
      }
    });

    await t.step("a meshd without the ServiceAccount's token gets no config", async () => {
      const intruder = MeshdProcess.start(cluster.kubeconfig, "intruder", TIMING);
      try {
        const leader = leaderOf(live())!;
        const refused = await leader.waitLog("node refused", (e) => e["node"] === "intruder");
        assert.match(String(refused["reason"]), /sent no token/);
        assert.equal((await intruder.api("/readyz")).status, 503);
        assert.equal(await configOf(intruder), null);
      } finally {
        await intruder.stop();
      }
    });

    await t.step("the leader crashes: another takes over, and changes flow again", async () => {
      const old = leaderOf(live())!;
      await old.kill();
      procs.delete(old.identity);
      const next = await waitFor(
        "another meshd to run the controller",
        () => leaderOf(live()),
        30_000,
      );
      assert.notEqual(next.identity, old.identity);
      // the nodes kept routing on what they had
      await everyNodeHas(live(), "cart", ["203.0.113.10", "203.0.113.11"]);
      await cluster.must("POST", slicePath, slice("cart-2", "cart", ["203.0.113.12"]));
      await everyNodeHas(live(), "cart", ["203.0.113.10", "203.0.113.11", "203.0.113.12"]);
      const started = await next.waitLog("controller started");
      assert.ok(started["from"], "the new leader started from the config its node had");
    });

    await t.step(
      "the API server stops: nodes keep routing, and a restarted node routes from disk",
      async () => {
        await cluster.stopApiServer();
        const want = ["203.0.113.10", "203.0.113.11", "203.0.113.12"];
        // the leader cannot renew, stops leading, and every stream ends
        await waitFor("the controller to stop", () => leaderOf(live()) ? undefined : true, 15_000);
        for (const p of live()) {
          assert.deepEqual(await endpointsOn(p, "cart"), want, p.identity);
          assert.equal((await p.api("/readyz")).status, 200);
        }
        const [victim] = live();
        await victim!.stop();
        const again = start(victim!.identity);
        await again.waitLog("config applied", (e) => e["from"] === "disk", 20_000);
        assert.deepEqual(await endpointsOn(again, "cart"), want);
        assert.equal((await again.api("/readyz")).status, 200, "ready from its saved config");
        assert.equal(JSON.parse((await again.api("/api/status")).body).from, "disk");
      },
    );

    await t.step("the API server returns: changes flow to every node again", async () => {
      await cluster.startApiServer();
      await waitFor("a meshd to run the controller", () => leaderOf(live()), 30_000);
      await cluster.must("DELETE", `${slicePath}/cart-1`);
      await everyNodeHas(live(), "cart", ["203.0.113.12"]);
      for (const p of live()) {
        await p.waitLog("config applied", (e) => e["from"] === "leader");
      }
    });
  } finally {
    for (const p of procs.values()) await p.stop();
    await cluster.stop();
  }
});
