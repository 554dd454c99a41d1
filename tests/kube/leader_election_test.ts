/**
 * Lease leader election with three real meshd processes against the test cluster: one leads,
 * a SIGKILLed leader is replaced within the lease duration, a clean shutdown hands over at
 * once, and the leading intervals of all three never overlap.
 */
import assert from "node:assert/strict";
import { TestCluster } from "../testenv/cluster.ts";
import { MeshdProcess } from "../testenv/meshd.ts";
import { meshdKubeconfig } from "../testenv/manifests.ts";
import { waitFor } from "../testenv/process.ts";

const LEASE_MS = 4000;
const RETRY_MS = 500;
const TIMING = ["--lease-duration=4s", "--renew-deadline=3s", "--retry-period=500ms"];

interface Interval {
  who: string;
  start: number;
  end: number;
}

/** Each process's leading intervals, from its logs; a killed leader's ends at the kill. */
function intervals(procs: MeshdProcess[], killedAt: Map<string, number>): Interval[] {
  const out: Interval[] = [];
  for (const p of procs) {
    let start: number | null = null;
    for (const e of p.events()) {
      if (e["msg"] === "started leading") start = e["at"] as number;
      if (e["msg"] === "stopped leading" && start !== null) {
        out.push({ who: p.identity, start, end: e["at"] as number });
        start = null;
      }
    }
    if (start !== null) {
      out.push({ who: p.identity, start, end: killedAt.get(p.identity) ?? Date.now() });
    }
  }
  return out.sort((a, b) => a.start - b.start);
}

/** A test cluster with meshd's namespace, and a kubeconfig for meshd processes. */
async function clusterWithMeshNamespace(): Promise<{ cluster: TestCluster; kc: string }> {
  const cluster = await TestCluster.start({ controllerManager: false });
  try {
    await cluster.must("POST", "/api/v1/namespaces", {
      apiVersion: "v1",
      kind: "Namespace",
      metadata: { name: "meshd" },
    });
    return { cluster, kc: await meshdKubeconfig(cluster) };
  } catch (e) {
    await cluster.stop();
    throw e;
  }
}

Deno.test("leader election: one leads, a killed leader is replaced, leading never overlaps", async () => {
  const { cluster, kc } = await clusterWithMeshNamespace();
  const procs: MeshdProcess[] = [];
  const killedAt = new Map<string, number>();
  try {
    for (const n of ["meshd-a", "meshd-b", "meshd-c"]) {
      procs.push(MeshdProcess.start(kc, n, TIMING));
    }
    const leading = () =>
      procs.filter((p) => {
        const ev = p.events().filter((e) => /^(started|stopped) leading$/.test(`${e["msg"]}`));
        return ev.at(-1)?.["msg"] === "started leading" && !killedAt.has(p.identity);
      });

    const first = await waitFor("one meshd to lead", () => {
      const l = leading();
      return l.length === 1 ? l[0] : undefined;
    }, 30_000).catch((e) => {
      const logs = procs.map((p) => `--- ${p.identity}\n${p.child.lines.slice(-8).join("\n")}`);
      throw new Error(`${e.message}\n${logs.join("\n")}`);
    });
    assert.equal(await cluster.leaseHolder(), first.identity);
    // Stays alone for a few renewals.
    await new Promise((r) => setTimeout(r, 3 * RETRY_MS));
    assert.deepEqual(leading().map((p) => p.identity), [first.identity]);

    // A crash: SIGKILL, no lease released.
    const killed = Date.now();
    await first.kill();
    killedAt.set(first.identity, killed);
    const second = await waitFor("another meshd to lead", () => {
      const l = leading();
      return l.length === 1 ? l[0] : undefined;
    }, 3 * LEASE_MS);
    const startedAt = (await second.waitLog("started leading"))["at"] as number;
    const takeover = startedAt - killed;
    // The candidates wait a lease duration after the last renewal they saw, which came at
    // most one retry period before the kill.
    assert.ok(
      takeover <= LEASE_MS + 2 * RETRY_MS,
      `took over ${takeover} ms after the kill; lease ${LEASE_MS} ms`,
    );
    assert.equal(await cluster.leaseHolder(), second.identity);

    // A clean shutdown gives the lease up, so the third takes over well within a lease.
    const stoppedAt = Date.now();
    const st = await second.stop();
    assert.equal(st.code, 0);
    await second.waitLog("released the lease");
    const third = procs.find((p) => p !== first && p !== second)!;
    const thirdStart = (await third.waitLog("started leading", () =>
      true, LEASE_MS))["at"] as number;
    assert.ok(
      thirdStart - stoppedAt < LEASE_MS,
      `handover after a clean stop took ${thirdStart - stoppedAt} ms`,
    );
    killedAt.set(second.identity, Date.now());

    const ivs = intervals(procs, killedAt);
    assert.deepEqual(ivs.map((i) => i.who), [first.identity, second.identity, third.identity]);
    for (let i = 1; i < ivs.length; i++) {
      assert.ok(
        ivs[i]!.start >= ivs[i - 1]!.end,
        `${ivs[i]!.who} started leading at ${ivs[i]!.start}, before ${ivs[i - 1]!.who} stopped ` +
          `at ${ivs[i - 1]!.end}`,
      );
    }
  } finally {
    for (const p of procs) await p.stop();
    await cluster.stop();
  }
});

Deno.test("leader election: a successor on its predecessor's ports (--reuse-port) takes the config stream's port and the Lease once the predecessor has left", async () => {
  // A DaemonSet rollout with hostNetwork: the new pod starts while the old one, the leader,
  // still holds the config stream's port, which cannot be shared.
  const { cluster, kc } = await clusterWithMeshNamespace();
  const procs: MeshdProcess[] = [];
  try {
    const flags = [...TIMING, "--reuse-port"];
    const old = MeshdProcess.start(kc, "meshd-old", flags);
    procs.push(old);
    await old.waitLog("started leading", () => true, 30_000);
    const successor = MeshdProcess.start(kc, "meshd-new", flags, "", undefined, old);
    procs.push(successor);
    await successor.waitLog(
      "the config stream's port is held, by the meshd this one replaces; retrying",
    );
    // Two retries fail while the predecessor holds the port.
    await new Promise((r) => setTimeout(r, 2 * 1000 + 500));
    assert.equal(await cluster.leaseHolder(), old.identity);
    const st = await old.stop();
    assert.equal(st.code, 0);
    await successor.waitLog("config stream listening", () => true, 5000).catch((e) => {
      throw new Error(`${e.message}\n${successor.child.lines.slice(-10).join("\n")}`);
    });
    await successor.waitLog("started leading", () => true, LEASE_MS);
    assert.equal(await cluster.leaseHolder(), successor.identity);
    const status = JSON.parse((await successor.api("/api/status/nodes")).body);
    assert.equal(status.leading, true);
  } finally {
    for (const p of procs) await p.stop();
    await cluster.stop();
  }
});
