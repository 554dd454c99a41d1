import assert from "node:assert/strict";
import { main, VERSION } from "./main.ts";

interface Run {
  code: number;
  out: string;
  err: string;
}

async function run(argv: string[], env: Record<string, string> = {}): Promise<Run> {
  let out = "";
  let err = "";
  const code = await main(argv, {
    stdout: (s) => out += s,
    stderr: (s) => err += s,
    env: (k) => env[k],
  });
  return { code, out, err };
}

async function withDir(files: Record<string, string>, fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "meshd-cli-" });
  try {
    for (const [name, text] of Object.entries(files)) {
      await Deno.writeTextFile(`${dir}/${name}`, text);
    }
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const SERVICE = `apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop, annotations: { meshd.io/traffic-type: tcp } }
spec: { ports: [{ name: http, port: 80 }] }
`;

Deno.test("main() prints help for each command and exits 0", async () => {
  const top = await run(["--help"]);
  assert.equal(top.code, 0);
  assert.match(
    top.out,
    /Commands:\n {2}run .*\n {2}prepare .*\n {2}cleanup .*\n {2}check .*\n {2}config dump .*\n {2}version /,
  );
  const runHelp = await run(["run", "--help"]);
  assert.equal(runHelp.code, 0);
  for (
    const flag of [
      "--config-dir",
      "--http-port",
      "--domain-aliases",
      "--api-port",
      "--acl",
      "--log-format",
    ]
  ) {
    assert.match(runHelp.out, new RegExp(`^ {2}${flag}`, "m"), flag);
  }
  const dumpHelp = await run(["config", "dump", "--help"]);
  assert.equal(dumpHelp.code, 0);
  assert.match(dumpHelp.out, /Usage: meshd config dump --config-dir DIR/);
  assert.doesNotMatch(dumpHelp.out, /--http-port/);
  const flagsOf: Record<string, string[]> = {
    prepare: [
      "--kubeconfig",
      "--domain",
      "--domain-aliases",
      "--dns-service",
      "--coredns-configmap",
      "--dns-ttl",
    ],
    cleanup: ["--kubeconfig", "--coredns-namespace", "--lease-name", "--force"],
    check: [
      "--kubeconfig",
      "--domain",
      "--domain-aliases",
      "--dns-service",
      "--kernel-release",
      "--libbpf",
    ],
  };
  for (const [cmd, flags] of Object.entries(flagsOf)) {
    const h = await run([cmd, "--help"]);
    assert.equal(h.code, 0);
    for (const flag of flags) {
      assert.match(h.out, new RegExp(`^ {2}${flag}`, "m"), `${cmd} ${flag}`);
    }
    assert.doesNotMatch(h.out, /--http-port/, cmd);
  }
  for (const flag of ["--dns-address", "--dns-port", "--dns-ttl"]) {
    assert.match(runHelp.out, new RegExp(`^ {2}${flag}`, "m"), flag);
  }
});

Deno.test("main() reports usage errors with exit code 2", async () => {
  const none = await run([]);
  assert.equal(none.code, 2);
  assert.match(none.err, /Usage: meshd <command>/);
  const unknown = await run(["serve"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.err, /unknown command "serve"/);
  const badFlag = await run(["run", "--bogus"]);
  assert.equal(badFlag.code, 2);
  assert.match(badFlag.err, /^meshd run: Unknown flag "--bogus"; run "meshd run --help"/);
  const extra = await run(["version", "now"]);
  assert.equal(extra.code, 2);
  assert.match(extra.err, /unexpected argument "now"/);
});

Deno.test("main() version prints the version from deno.json", async () => {
  const r = await run(["version"]);
  assert.equal(r.code, 0);
  assert.match(r.out, new RegExp(`^meshd ${VERSION.replaceAll(".", "\\.")} \\(deno `));
  assert.match(VERSION, /^\d+\.\d+\.\d+/);
});

Deno.test("main() config dump prints the MeshConfig as JSON", async () => {
  await withDir({ "svc.yaml": SERVICE }, async (dir) => {
    const r = await run(["config", "dump", "--config-dir", dir, "--tcp-ports", "20000-20010"]);
    assert.equal(r.code, 0, r.err);
    const config = JSON.parse(r.out);
    assert.equal(config.version, 1);
    assert.equal(config.services[0].name, "web");
    assert.equal(config.services[0].ports[0].listenPort, 20000);
    // The same through the environment.
    const env = await run(["config", "dump"], { MESHD_CONFIG_DIR: dir, MESHD_DOMAIN: "corp" });
    assert.equal(env.code, 0, env.err);
    assert.equal(JSON.parse(env.out).domain, "corp");
  });
});

Deno.test("main() config dump exits 1 with one clear line on bad input", async () => {
  const bad = SERVICE.replace("port: 80", "port: eighty");
  await withDir({ "svc.yaml": bad }, async (dir) => {
    const r = await run(["config", "dump", "--config-dir", dir]);
    assert.equal(r.code, 1);
    assert.equal(r.out, "");
    assert.match(r.err, /svc\.yaml/);
    assert.match(r.err, /spec\.ports\[0\]\.port/);
    assert.doesNotMatch(r.err, /^\s+at /m, "no stack trace");
  });
  const missing = await run(["config", "dump", "--config-dir", "/nonexistent/meshd"]);
  assert.equal(missing.code, 1);
  assert.match(missing.err, /\/nonexistent\/meshd/);
  assert.doesNotMatch(missing.err, /^\s+at /m);
  const noDir = await run(["config", "dump"]);
  assert.notEqual(noDir.code, 0);
  assert.match(noDir.err, /--config-dir/);
});

Deno.test("main() run --provider kube says what is wrong in one line, before starting", async () => {
  const missing = await run(["run", "--provider", "kube", "--kubeconfig", "/nonexistent/kc"]);
  assert.equal(missing.code, 1);
  assert.match(
    missing.err,
    /^meshd run: Cannot load Kubernetes credentials from "\/nonexistent\/kc"/,
  );
  assert.equal(missing.err.trim().split("\n").length, 1, missing.err);
  await withDir({
    "kc.yaml": `apiVersion: v1
kind: Config
clusters: [{ name: c, cluster: { server: "https://127.0.0.1:1" } }]
users: [{ name: u, user: { token: t } }]
contexts: [{ name: x, context: { cluster: c, user: u } }]
current-context: x
`,
  }, async (dir) => {
    const timing = await run([
      "run",
      "--provider=kube",
      `--kubeconfig=${dir}/kc.yaml`,
      "--lease-duration=10s",
      "--renew-deadline=10s",
    ]);
    assert.equal(timing.code, 1);
    assert.match(timing.err, /renew deadline must be shorter than the lease duration/);
    const selector = await run([
      "run",
      "--provider=kube",
      `--kubeconfig=${dir}/kc.yaml`,
      "--meshd-selector=app",
    ]);
    assert.equal(selector.code, 1);
    assert.match(selector.err, /--meshd-selector: "app" is not KEY=VALUE/);
  });
});

Deno.test("main.ts loads the YAML, Kubernetes, gRPC and HTTP/2 libraries only on demand", async () => {
  // The serving thread of a file-mode meshd never parses (its reading thread does), and a
  // library imported statically costs every process its memory: about 6 MB for YAML.
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", new URL("../../main.ts", import.meta.url).pathname],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    roots: string[];
    modules: {
      specifier: string;
      dependencies?: { code?: { specifier: string }; isDynamic?: boolean }[];
    }[];
  };
  const byName = new Map(info.modules.map((m) => [m.specifier, m]));
  const seen = new Set<string>();
  const todo = [...info.roots];
  while (todo.length > 0) {
    const s = todo.pop()!;
    if (seen.has(s)) continue;
    seen.add(s);
    for (const d of byName.get(s)?.dependencies ?? []) {
      if (d.code && !d.isDynamic) todo.push(d.code.specifier);
    }
  }
  // npm packages are leaves here, named `npm:yaml@2.9.1` (or `npm:/yaml@2.9.1`).
  const npm = [...seen].filter((s) => s.startsWith("npm:")).map((s) => s.replace(/^npm:\/?/, ""));
  assert.ok(seen.size > 50, `only ${seen.size} modules found: the graph was not walked`);
  for (const lib of ["yaml", "@kubernetes/client-node", "@grpc/grpc-js"]) {
    assert.ok(!npm.some((s) => s.startsWith(`${lib}@`)), `${lib} in ${npm.join(", ")}`);
  }
  // The HTTP/2 side only once an h2c client or service needs it; node:http2 (about 11 MiB
  // resident) never.
  const h2 = [...seen].filter((s) => s === "node:http2" || s.endsWith("/src/proxy/h2_proxy.ts"));
  assert.deepEqual(h2, [], "HTTP/2 is loaded with main.ts");
  // Dynamic imports included: meshd speaks HTTP/2 with its own frame layer (src/proxy/h2/).
  const http2Users = info.modules
    .filter((m) => m.dependencies?.some((d) => d.code?.specifier === "node:http2"))
    .map((m) => m.specifier);
  assert.deepEqual(http2Users, [], "node:http2 is imported");
});
