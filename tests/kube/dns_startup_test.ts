/**
 * meshd's mesh DNS responder binds only once it has names to give: bound earlier, it answered
 * NXDOMAIN for every mesh name while a restarted node was still loading (a rollout saw
 * CoreDNS cache that), where no answer at all lets resolvers ask again. Here the API server
 * accepts connections and never answers, so the API never gives meshd a name.
 */
import assert from "node:assert/strict";
import { ZONE_STORE_FORMAT } from "../../src/node/zone_store.ts";
import { dig } from "../../src/dns/_testing.ts";
import { type Child, freePort, waitFor } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";
import { makePki } from "../../src/_testing_tls.ts";

const HOST = "127.0.61.1";

async function withSilentApi(
  body: (dir: string, kubeconfig: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-dns-startup-" });
  const port = freePort(HOST);
  const listener = Deno.listen({ hostname: HOST, port });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const c of listener) held.push(c);
  })();
  try {
    const pki = await makePki(["localhost"]);
    const kubeconfig = `${dir}/kubeconfig`;
    await Deno.writeTextFile(
      kubeconfig,
      [
        "apiVersion: v1",
        "kind: Config",
        "clusters:",
        `- { name: silent, cluster: { server: "https://${HOST}:${port}", certificate-authority-data: ${
          btoa(pki.caCert)
        } } }`,
        "users: [{ name: u, user: { token: t } }]",
        "contexts: [{ name: x, context: { cluster: silent, user: u } }]",
        "current-context: x",
        "",
      ].join("\n"),
    );
    await body(dir, kubeconfig);
  } finally {
    listener.close();
    await accepting.catch(() => {});
    for (const c of held) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Starts meshd against the silent API server and resolves once `until` is in its log (by then
 * its start-up has passed the point where the DNS responder may bind).
 */
async function startMeshd(
  kubeconfig: string,
  stateDir: string,
  dnsPort: number,
  until: string,
): Promise<Child> {
  const meshd = spawnMeshd([
    "--provider=kube",
    `--kubeconfig=${kubeconfig}`,
    `--state-dir=${stateDir}`,
    "--datapath=userspace",
    `--proxy-address=${HOST}`,
    `--http-port=${freePort(HOST)}`,
    `--api-address=${HOST}`,
    `--api-port=${freePort(HOST)}`,
    `--distribution-address=${HOST}`,
    `--distribution-port=${freePort(HOST)}`,
    "--dns-address=127.0.0.1",
    `--dns-port=${dnsPort}`,
    "--identity=dns-startup-test",
  ], { deno: ["--allow-all"] });
  await waitFor(until, () => meshd.lines.some((l) => l.includes(until)) || undefined, 60_000, 50)
    .catch(async (e) => {
      await meshd.stop();
      throw new Error(`${e.message}\n${meshd.lines.slice(-20).join("\n")}`);
    });
  return meshd;
}

Deno.test("meshd run leaves the mesh DNS port unbound until it has names, and never says NXDOMAIN meanwhile", async () => {
  await withSilentApi(async (dir, kubeconfig) => {
    await Deno.mkdir(`${dir}/state`);
    const dnsPort = freePort("127.0.0.1");
    // The campaign for the Lease starts after the step that binds DNS when it has names: its
    // first failed renewal (the API never answers) says meshd is past it.
    const meshd = await startMeshd(kubeconfig, `${dir}/state`, dnsPort, "lease update failed");
    try {
      const r = await dig(dnsPort, "web.shop.mesh", "A");
      assert.match(r.status, /^no answer/, `meshd answered ${r.status} with no names loaded`);
      assert.ok(
        !meshd.lines.some((l) => l.includes("DNS responder listening")),
        meshd.lines.join("\n"),
      );
    } finally {
      await meshd.stop();
    }
  });
});

Deno.test("meshd run answers the saved mesh DNS names at start, before the API server answers", async () => {
  await withSilentApi(async (dir, kubeconfig) => {
    await Deno.mkdir(`${dir}/state`);
    await Deno.writeTextFile(
      `${dir}/state/dns.json`,
      JSON.stringify({
        format: ZONE_STORE_FORMAT,
        entries: [{ namespace: "shop", name: "web", ipv4: ["198.51.100.7"], ipv6: [] }],
      }),
    );
    const dnsPort = freePort("127.0.0.1");
    const meshd = await startMeshd(kubeconfig, `${dir}/state`, dnsPort, "DNS names restored");
    try {
      const r = await dig(dnsPort, "web.shop.mesh", "A");
      assert.equal(r.status, "NOERROR", meshd.lines.slice(-20).join("\n"));
      assert.match(r.answer.join("\n"), /198\.51\.100\.7/);
      const missing = await dig(dnsPort, "nope.shop.mesh", "A");
      assert.equal(missing.status, "NXDOMAIN");
    } finally {
      await meshd.stop();
    }
  });
});
