/**
 * `meshd check` against a real API server: a check per line (read here from `-o json`), exit 1
 * while something blocks meshd, and RBAC judged for whoever runs it (meshd's own
 * ServiceAccount included). The installed mesh's checks are tests/kube/ops_test.ts's.
 */
import assert from "node:assert/strict";
import { TestCluster } from "../testenv/cluster.ts";
import { type CliRun, meshd } from "../testenv/cli.ts";
import { applyManifests, tokenKubeconfig } from "../testenv/manifests.ts";
import { corefileFixture, putCorefile } from "../testenv/coredns.ts";
import { freePort } from "../testenv/process.ts";
import { runPermissions } from "../../src/kube/mod.ts";

/** The checks of a `meshd check -o json` run as `{ level, name, text, hint }`. */
function lines(r: CliRun): { level: string; name: string; text: string; hint?: string }[] {
  let parsed: { checks: { level: string; name: string; message: string; hint?: string }[] };
  try {
    parsed = JSON.parse(r.out);
  } catch {
    throw new Error(`not JSON:\n${r.out}${r.err}`);
  }
  // The installed mesh's checks (no DaemonSet runs here) are ops_test.ts's.
  return parsed.checks.filter((c) => !["version", "daemonset", "leader", "node"].includes(c.name))
    .map((c) => ({ level: c.level, name: c.name, text: c.message, hint: c.hint }));
}

/**
 * Whether a check of those here failed. (The exit code also counts the installed mesh's
 * checks, which fail here: no meshd runs.)
 */
const blocked = (r: CliRun) => lines(r).some((l) => l.level === "fail");

/** `meshd check -o json` with these flags. */
const check = (...argv: string[]) => meshd("check", "-o", "json", ...argv);

const level = (r: CliRun, name: string) =>
  lines(r).filter((l) => l.name === name).map((l) => l.level);

Deno.test("meshd check reports each check on one line and fails while meshd is blocked", async (t) => {
  const cluster = await TestCluster.start({ controllerManager: false });
  const kc = `--kubeconfig=${cluster.kubeconfig}`;
  try {
    await t.step("a bare cluster: SMI missing is a warning, no CoreDNS block blocks", async () => {
      const r = await check(kc, `--bpffs=${cluster.dir}/no-bpffs`);
      assert.equal(r.code, 1, r.out + r.err);
      assert.deepEqual(lines(r).map((l) => l.name), [
        "api",
        "rbac",
        "smi",
        "smi",
        "smi",
        "coredns",
        "datapath",
      ]);
      assert.match(
        lines(r)[0]!.text,
        new RegExp(`answers, Kubernetes ${cluster.version.replace(/\./g, "\\.")}$`),
      );
      assert.deepEqual(level(r, "rbac"), ["ok"]);
      assert.match(
        lines(r)[1]!.text,
        new RegExp(
          `^meshd-test-admin may do all ${runPermissions("meshd").length} things meshd run does$`,
        ),
      );
      assert.deepEqual(level(r, "smi"), ["warn", "warn", "warn"]);
      assert.deepEqual(level(r, "coredns"), ["fail"]);
      // A data path that falls back is a warning: meshd runs, on the userspace proxy.
      assert.deepEqual(level(r, "datapath"), ["warn"]);
      assert.match(
        lines(r).find((l) => l.name === "datapath")!.text,
        new RegExp(`^userspace: no bpffs mounted at ${cluster.dir}/no-bpffs`),
      );
    });

    await applyManifests(cluster);
    await putCorefile(cluster, await corefileFixture("coredns-1.11-kubeadm-1.30.Corefile"));

    await t.step("installed but not prepared: CoreDNS is what blocks", async () => {
      const r = await check(kc);
      assert.equal(r.code, 1);
      assert.deepEqual(level(r, "smi"), ["ok", "ok", "ok"]);
      const dns = lines(r).find((l) => l.name === "coredns")!;
      assert.equal(dns.level, "fail");
      assert.match(dns.text, /kube-system\/coredns has no meshd block$/);
      assert.match(dns.hint!, /^run meshd prepare/);
    });

    await t.step("prepared: every check passes, as meshd's own ServiceAccount too", async () => {
      assert.equal((await meshd("prepare", kc)).code, 0);
      const admin = await check(kc);
      assert.equal(blocked(admin), false, admin.out);
      const sa = await check(`--kubeconfig=${await tokenKubeconfig(cluster, "meshd", "meshd")}`);
      assert.equal(blocked(sa), false, sa.out);
      assert.match(
        lines(sa).find((l) => l.name === "rbac")!.text,
        new RegExp(
          `^system:serviceaccount:meshd:meshd may do all ${runPermissions("meshd").length} things`,
        ),
      );
      assert.match(
        lines(sa).find((l) => l.name === "coredns")!.text,
        /^kube-system\/coredns forwards mesh, traefik\.mesh, maesh to \S+$/,
      );
    });

    await t.step("a moved DNS Service address makes the block stale", async () => {
      // the block points at an address the Service no longer has
      const cm = await cluster.must("GET", "/api/v1/namespaces/kube-system/configmaps/coredns");
      const data = cm["data"] as Record<string, string>;
      const svc = await cluster.must("GET", "/api/v1/namespaces/meshd/services/meshd-dns");
      const ip = (svc["spec"] as { clusterIP: string }).clusterIP;
      assert.ok(data["Corefile"]!.includes(`forward . ${ip}:53\n`));
      data["Corefile"] = data["Corefile"]!.replace(
        `forward . ${ip}:53\n`,
        "forward . 198.51.100.250:53\n",
      );
      await cluster.must("PUT", "/api/v1/namespaces/kube-system/configmaps/coredns", cm);
      const r = await check(kc);
      assert.equal(r.code, 1);
      assert.match(
        lines(r).find((l) => l.name === "coredns")!.text,
        /forwards mesh to 198\.51\.100\.250, but meshd-dns is at \S+$/,
      );
      assert.equal((await meshd("prepare", kc)).code, 0);
      assert.equal(blocked(await check(kc)), false);
    });

    await t.step("an alias CoreDNS does not forward is a warning naming it", async () => {
      const dns = (r: CliRun) => lines(r).find((l) => l.name === "coredns")!;
      // Traefik Mesh's own block still serves traefik.mesh: prepare leaves it out
      await putCorefile(
        cluster,
        await corefileFixture("coredns-1.8-with-traefik-mesh-1.4.Corefile"),
      );
      assert.equal((await meshd("prepare", kc)).code, 0);
      const held = await check(kc);
      assert.equal(blocked(held), false, "a warning does not block meshd");
      assert.equal(dns(held).level, "warn");
      assert.match(
        dns(held).text,
        /^kube-system\/coredns forwards mesh, maesh to \S+, not the alias traefik\.mesh: a block meshd did not add serves traefik\.mesh \(Traefik Mesh's\?\)$/,
      );
      assert.equal(dns(held).hint, "run meshd prepare after removing that block");
      // without aliases asked for, the primary alone is what matters
      assert.equal(dns(await check(kc, "--domain-aliases=")).level, "ok");
      // a block prepared with --domain-aliases "" lacks both
      await putCorefile(cluster, await corefileFixture("coredns-1.11-kubeadm-1.30.Corefile"));
      assert.equal((await meshd("prepare", kc, "--domain-aliases=")).code, 0);
      const bare = await check(kc);
      assert.equal(dns(bare).level, "warn");
      assert.match(
        dns(bare).text,
        /^kube-system\/coredns forwards mesh to \S+, not the aliases traefik\.mesh, maesh$/,
      );
      assert.equal(dns(bare).hint, "run meshd prepare");
      assert.equal((await meshd("prepare", kc)).code, 0);
      assert.equal(dns(await check(kc)).level, "ok");
    });

    await t.step("an identity without meshd's RBAC fails, naming what it lacks", async () => {
      await cluster.must("POST", "/api/v1/namespaces/meshd/serviceaccounts", {
        apiVersion: "v1",
        kind: "ServiceAccount",
        metadata: { name: "nobody" },
      });
      const r = await check(`--kubeconfig=${await tokenKubeconfig(cluster, "meshd", "nobody")}`);
      assert.equal(r.code, 1);
      const rbac = lines(r).find((l) => l.name === "rbac")!;
      assert.equal(rbac.level, "fail");
      assert.match(
        rbac.text,
        /^system:serviceaccount:meshd:nobody may not list services in every namespace \(the topology\);/,
      );
      assert.match(rbac.text, /update leases\.coordination\.k8s\.io in meshd \(leader election\)/);
      assert.equal(lines(r).find((l) => l.name === "coredns")!.level, "fail");
    });

    await t.step("the data path line says why, and follows --kernel-release", async () => {
      const r = await check(kc, "--kernel-release=5.4.0-150-generic");
      const dp = lines(r).find((l) => l.name === "datapath")!;
      assert.match(dp.text, /^userspace: kernel 5\.4\.0-150-generic is older than 5\.10/);
      const missing = await check(kc, "--libbpf=/nonexistent/libbpf.so.1");
      assert.match(
        lines(missing).find((l) => l.name === "datapath")!.text,
        /^userspace: no libbpf at \/nonexistent\/libbpf\.so\.1/,
      );
    });

    await t.step(
      "with a bpffs, check loads the programs (the verifier runs) and attaches none",
      async () => {
        const bpffs = `${cluster.dir}/bpffs`;
        await Deno.mkdir(bpffs);
        const mount = await new Deno.Command("mount", { args: ["-t", "bpf", "bpf", bpffs] })
          .output();
        assert.ok(mount.success, "mount a bpffs for the test");
        try {
          const r = await check(kc, `--bpffs=${bpffs}`);
          const dp = lines(r).find((l) => l.name === "datapath")!;
          assert.equal(dp.level, "ok", dp.text);
          assert.match(dp.text, /^ebpf: kernel .*, the programs load \(not attached by check\)$/);
          assert.deepEqual(
            [...Deno.readDirSync(bpffs)].filter((e) => e.name.startsWith("meshd")),
            [],
          );
          const missing = await check(kc, `--bpffs=${bpffs}`, "--bpf-object=/nonexistent.o");
          assert.match(
            lines(missing).find((l) => l.name === "datapath")!.text,
            /^userspace: cannot read the BPF object \/nonexistent\.o: .*\(bash bpf\/build\.sh builds it\)/,
          );
        } finally {
          await new Deno.Command("umount", { args: [bpffs] }).output();
        }
      },
    );
  } finally {
    await cluster.stop();
  }
});

Deno.test("meshd check with the API unreachable fails on the api line and skips the rest", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-check-" });
  try {
    const port = freePort(); // nothing listens there
    const file = `${dir}/kubeconfig`;
    await Deno.writeTextFile(
      file,
      `apiVersion: v1
kind: Config
clusters:
- name: gone
  cluster: { server: "https://127.0.0.1:${port}" }
users:
- name: u
  user: { token: abc }
contexts:
- name: gone
  context: { cluster: gone, user: u }
current-context: gone
`,
    );
    const r = await check(`--kubeconfig=${file}`, `--bpffs=${dir}/no-bpffs`);
    assert.equal(r.code, 1);
    assert.deepEqual(lines(r).map((l) => `${l.level} ${l.name}`), [
      "fail api",
      "skip rbac",
      "skip smi",
      "skip coredns",
      "skip meshd",
      "warn datapath",
    ]);
    assert.match(lines(r)[0]!.text, new RegExp(`127\\.0\\.0\\.1:${port}`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
