/**
 * The scripts and files that build and deploy meshd outside CI: they pass shellcheck, and the
 * version, image tag and binary path agree everywhere they are written down.
 */
import assert from "node:assert/strict";
import denoJson from "../deno.json" with { type: "json" };
import {
  FILE_PERMISSIONS,
  MESHD_ENV,
  MESHD_PERMISSIONS,
  MESHD_V8_FLAGS,
  meshdArgv,
} from "./testenv/meshd.ts";

const ROOT = new URL("../", import.meta.url).pathname;

async function run(cmd: string, args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(cmd, {
    args,
    cwd: ROOT,
    env,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("scripts pass shellcheck", async () => {
  const scripts = [...Deno.readDirSync(`${ROOT}scripts`)].map((e) => `scripts/${e.name}`).sort();
  assert.ok(scripts.includes("scripts/kind-up"));
  // Every shell script of the test environment, found rather than listed, so a new one is
  // checked too.
  const testenv: string[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(`${ROOT}${dir}`)) {
      if (e.isDirectory) walk(`${dir}/${e.name}`);
      else if (e.name.endsWith(".sh")) testenv.push(`${dir}/${e.name}`);
    }
  };
  walk("tests/testenv");
  assert.ok(testenv.includes("tests/testenv/nodes/node.sh"));
  const r = await run("shellcheck", [...scripts, ...testenv.sort(), "bpf/build.sh", ".ci/run"])
    .catch(
      (e) => {
        throw new Error(`Cannot run shellcheck (Debian package shellcheck): ${e.message}`);
      },
    );
  assert.equal(r.code, 0, r.stdout + r.stderr);
});

Deno.test("the image tag, the manifests, the chart and deno.json agree on the version", async () => {
  const v = denoJson.version.replace(/\./g, "\\.");
  for (const f of ["daemonset.yaml", "prepare-job.yaml", "cleanup-job.yaml"]) {
    const text = await Deno.readTextFile(`${ROOT}manifests/${f}`);
    const images = [...text.matchAll(/^\s+image: (\S+)$/gm)].map((m) => m[1]);
    assert.ok(images.length > 0, f);
    for (const i of images) assert.match(i!, new RegExp(`^meshd:${v}$`), f);
  }
  const chart = await Deno.readTextFile(`${ROOT}charts/meshd/Chart.yaml`);
  assert.match(chart, new RegExp(`^version: ${v}$`, "m"));
  assert.match(chart, new RegExp(`^appVersion: "${v}"$`, "m"));
  const values = await Deno.readTextFile(`${ROOT}charts/meshd/values.yaml`);
  assert.match(values, new RegExp(`^  tag: "${v}"$`, "m"));
  const docker = await Deno.readTextFile(`${ROOT}Dockerfile`);
  const out = denoJson.tasks.compile.match(/--output (\S+)/)?.[1];
  assert.equal(out, "dist/meshd");
  assert.match(docker, new RegExp(`^COPY ${out} /usr/local/bin/meshd$`, "m"));
  assert.match(await Deno.readTextFile(`${ROOT}.dockerignore`), new RegExp(`^!${out}$`, "m"));
});

Deno.test("every launch of meshd passes MESHD_V8_FLAGS", async () => {
  // The compiled binary (and so the Dockerfile's image) gets them from the compile task.
  const launches: [string, string][] = [
    ["deno.json task meshd", denoJson.tasks.meshd],
    ["deno.json task compile", denoJson.tasks.compile],
    [
      "tests/testenv/image/build.sh",
      await Deno.readTextFile(`${ROOT}tests/testenv/image/build.sh`),
    ],
    ["scripts/quickstart", await Deno.readTextFile(`${ROOT}scripts/quickstart`)],
  ];
  for (const [where, text] of launches) {
    const commands = text.replaceAll("\\\n", " ").split("\n")
      .filter((l) => /deno (run|compile) .*main\.ts/.test(l) && !l.trim().startsWith("#"));
    assert.ok(commands.length > 0, `${where} launches no meshd`);
    for (const c of commands) assert.ok(c.includes(` ${MESHD_V8_FLAGS} `), `${where}: ${c}`);
  }
  assert.ok(meshdArgv([]).includes(MESHD_V8_FLAGS), "spawnMeshd's default");
  assert.ok(FILE_PERMISSIONS.includes(MESHD_V8_FLAGS));
  assert.ok(MESHD_PERMISSIONS.includes(MESHD_V8_FLAGS));
});

Deno.test("every launch of meshd runs it with one glibc malloc arena", async () => {
  // glibc reads MALLOC_ARENA_MAX at start only; per-thread arenas kept 8-12 MiB that no thread
  // used after a 1,000-service config (README, Memory).
  assert.deepEqual(MESHD_ENV, { MALLOC_ARENA_MAX: "1" });
  assert.match(denoJson.tasks.meshd, /^MALLOC_ARENA_MAX=1 deno run /);
  const quickstart = await Deno.readTextFile(`${ROOT}scripts/quickstart`);
  assert.match(quickstart, /^MALLOC_ARENA_MAX=1 deno run .* main\.ts run/m);
  assert.match(await Deno.readTextFile(`${ROOT}Dockerfile`), /^ENV MALLOC_ARENA_MAX=1$/m);
  const image = await Deno.readTextFile(`${ROOT}tests/testenv/image/build.sh`);
  assert.match(image, /"Env":\[[^\]]*"MALLOC_ARENA_MAX=1"/);
});

Deno.test("scripts/kind-up explains itself and stops with a plain message without its tools", async () => {
  const help = await run("bash", ["scripts/kind-up", "--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^scripts\/kind-up \[CLUSTER\]: meshd on a local kind cluster/);
  assert.match(help.stdout, /kind delete cluster --name CLUSTER/);
  // a PATH with what the script needs before its check, and none of docker, kind or kubectl
  const empty = await Deno.makeTempDir({ prefix: "meshd-nopath-" });
  try {
    await Deno.symlink("/usr/bin/dirname", `${empty}/dirname`);
    const r = await run("/bin/bash", ["scripts/kind-up"], { PATH: empty });
    assert.equal(r.code, 1);
    assert.equal(r.stderr, "[meshd-setup] error: kind-up needs docker on PATH\n");
  } finally {
    await Deno.remove(empty, { recursive: true });
  }
});

Deno.test("tests/testenv/image/prune.sh keeps this build's archives and those another may still use", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-prune-" });
  try {
    const old = new Date(Date.now() - 3 * 3600_000);
    for (const f of ["ours.tar", "stale.tar", "theirs.tar"]) {
      await Deno.writeTextFile(`${dir}/${f}`, f);
    }
    await Deno.writeTextFile(`${dir}/stale.tar.sizes`, "1");
    // ours and stale were last named three hours ago; theirs, by another checkout, just now
    await Deno.utime(`${dir}/ours.tar`, old, old);
    await Deno.utime(`${dir}/stale.tar`, old, old);
    const r = await run("bash", ["tests/testenv/image/prune.sh", dir, `${dir}/ours.tar`]);
    assert.equal(r.code, 0, r.stderr);
    const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(left, ["ours.tar", "theirs.tar"]);
    // and ours is marked as in use now
    assert.ok(Date.now() - Deno.statSync(`${dir}/ours.tar`).mtime!.getTime() < 60_000);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
