import assert from "node:assert/strict";
import { main, VERSION } from "./main.ts";
import { clause } from "./common.ts";

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

/** The commands `meshd --help` lists, in its order. */
const COMMAND_NAMES = [
  "run",
  "prepare",
  "cleanup",
  "check",
  "status",
  "stat",
  "config dump",
  "completion",
  "version",
];

const SERVICE = `apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop, annotations: { meshd.io/traffic-type: tcp } }
spec: { ports: [{ name: http, port: 80 }] }
`;

Deno.test("main() prints help for each command and exits 0", async () => {
  const top = await run(["--help"]);
  assert.equal(top.code, 0);
  assert.deepEqual(
    [...top.out.matchAll(/^ {2}(\S+(?: dump)?) {2,}/gm)].map((m) => m[1]),
    COMMAND_NAMES,
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
      "--pre",
      "--wait",
      "-o, --output",
      "--metrics-port",
    ],
    status: ["-o, --output", "--kubeconfig", "--mesh-namespace", "--daemonset", "--metrics-port"],
    stat: ["--window", "-o, --output", "--kubeconfig", "--metrics-port"],
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
  assert.match(badFlag.err, /^meshd run: error: unknown flag "--bogus"; run "meshd run --help"/);
  const extra = await run(["version", "now"]);
  assert.equal(extra.code, 2);
  assert.match(extra.err, /unexpected argument "now"/);
});

Deno.test("main() run --workers takes a count from 1 or auto, else exits 2 with one line", async () => {
  for (const bad of ["0", "abc", "-1", "1.5", "65", "2000", ""]) {
    const r = await run(["run", "--config-dir", "/nonexistent", "--workers", bad]);
    assert.equal(r.code, 2, `--workers "${bad}": ${r.err}`);
    assert.equal(r.err.trimEnd().split("\n").length, 1, r.err);
    assert.match(
      r.err,
      new RegExp(
        `^meshd run: error: invalid value "${bad}" for --workers: expected a whole number ` +
          `from 1 to 64, or auto; run "meshd run --help"`,
      ),
    );
  }
  const env = await run(["run", "--config-dir", "/nonexistent"], { MESHD_WORKERS: "none" });
  assert.equal(env.code, 2);
  assert.match(env.err, /invalid value "none" for MESHD_WORKERS/);
  // Good values get past the flags (to the missing directory).
  for (const good of ["1", "2", "auto"]) {
    const r = await run(["run", "--config-dir", "/nonexistent", "--workers", good]);
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /cannot read config directory/);
  }
  const help = await run(["run", "--help"]);
  const workers = help.out.split("\n  --workers N|auto")[1]?.split("\n  --")[0] ?? "";
  assert.match(workers, /^ +Proxy workers, /);
  assert.match(workers.replace(/\s+/g, " "), /\[default 1; env MESHD_WORKERS\]$/);
});

Deno.test('main() run --l4-worker takes auto, true or false after "=", and says so of a value after a space', async () => {
  const bad = await run(["run", "--config-dir", "/nonexistent", "--l4-worker=on"]);
  assert.equal(bad.code, 2, bad.err);
  assert.equal(bad.err.trimEnd().split("\n").length, 1, bad.err);
  assert.match(
    bad.err,
    /^meshd run: error: invalid value "on" for --l4-worker: expected true, false or auto; /,
  );
  const spaced = await run(["run", "--l4-worker", "auto", "--config-dir", "/nonexistent"]);
  assert.equal(spaced.code, 2, spaced.err);
  assert.equal(
    spaced.err,
    'meshd run: error: unexpected argument "auto"; --l4-worker takes its value after "=", as ' +
      "in --l4-worker=auto\n",
  );
  // Good values get past the flags (to the missing directory).
  for (const good of ["--l4-worker", "--l4-worker=auto", "--l4-worker=false", "--no-l4-worker"]) {
    const r = await run(["run", "--config-dir", "/nonexistent", good]);
    assert.equal(r.code, 1, `${good}: ${r.err}`);
    assert.match(r.err, /cannot read config directory/);
  }
  const help = await run(["run", "--help"]);
  const l4 = help.out.split("\n  --l4-worker[=auto|true|false]")[1]?.split("\n  --")[0] ?? "";
  assert.match(l4.replace(/\s+/g, " "), /auto: probe FFI, libc and epoll first/);
  assert.match(l4.replace(/\s+/g, " "), /\[default false; env MESHD_L4_WORKER\]$/);
});

Deno.test("main() run --stream-idle-timeout takes a duration or 0, else exits 2 with one line", async () => {
  for (const bad of ["abc", "-1", "5", "1x", "0.5ms", "597h"]) {
    const r = await run(["run", "--config-dir", "/nonexistent", "--stream-idle-timeout", bad]);
    assert.equal(r.code, 2, `--stream-idle-timeout "${bad}": ${r.err}`);
    assert.equal(r.err.trimEnd().split("\n").length, 1, r.err);
    assert.match(
      r.err,
      new RegExp(`^meshd run: error: invalid value "${bad}" for --stream-idle-timeout: expected a`),
    );
  }
  const env = await run(["run", "--config-dir", "/nonexistent"], {
    MESHD_STREAM_IDLE_TIMEOUT: "never",
  });
  assert.equal(env.code, 2);
  assert.match(env.err, /invalid value "never" for MESHD_STREAM_IDLE_TIMEOUT/);
  // Good values get past the flags (to the missing directory).
  for (const good of ["0", "500ms", "5m"]) {
    const r = await run(["run", "--config-dir", "/nonexistent", "--stream-idle-timeout", good]);
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /cannot read config directory/);
  }
  const help = await run(["run", "--help"]);
  const flag = help.out.split("\n  --stream-idle-timeout DURATION")[1]?.split("\n  --")[0] ?? "";
  assert.match(flag.replace(/\s+/g, " "), /no byte of its body for this long.* 0: no limit/);
  assert.match(flag.replace(/\s+/g, " "), /\[default 5m; env MESHD_STREAM_IDLE_TIMEOUT\]$/);
});

Deno.test("main() version prints the version, this checkout's commit, from source, and Deno's", async () => {
  const r = await run(["version"]);
  assert.equal(r.code, 0);
  assert.match(r.out, new RegExp(`^meshd ${VERSION.replaceAll(".", "\\.")}\n`));
  assert.match(VERSION, /^\d+\.\d+\.\d+/);
  const head = await new Deno.Command("git", { args: ["rev-parse", "HEAD"], stdout: "piped" })
    .output();
  const commit = new TextDecoder().decode(head.stdout).trim();
  assert.match(r.out, new RegExp(`^ {2}commit {2}${commit}$`, "m"));
  assert.match(r.out, /^ {2}built {3}not built \(run from source\)$/m);
  assert.match(r.out, /^ {2}binary {2}from source \(deno run\)$/m);
  assert.match(
    r.out,
    new RegExp(`^ {2}deno {4}${Deno.version.deno.replaceAll(".", "\\.")} \\(v8 `, "m"),
  );
  assert.equal((await run(["--version"])).out, r.out);
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
    /^meshd run: error: cannot load Kubernetes credentials from "\/nonexistent\/kc"/,
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

Deno.test("main() --help of every command fits 100 columns and lists each of its flags once", async () => {
  const top = await run(["--help"]);
  const commands = [...top.out.matchAll(/^ {2}(\S+(?: dump)?) {2,}/gm)].map((m) => m[1]!);
  assert.ok(commands.length >= 6, top.out);
  for (const text of [top.out]) {
    for (const line of text.split("\n")) assert.ok(line.length < 100, `${line.length}: ${line}`);
  }
  for (const c of commands) {
    const h = await run([...c.split(" "), "--help"]);
    assert.equal(h.code, 0, c);
    for (const line of h.out.split("\n")) {
      assert.ok(line.length < 100, `meshd ${c} --help, ${line.length} columns: ${line}`);
    }
    const names = [...h.out.matchAll(/^ {2}--([a-z0-9-]+)/gm)].map((m) => m[1]!);
    assert.equal(new Set(names).size, names.length, `meshd ${c}: a flag listed twice`);
  }
});

Deno.test("main() run --help groups its flags by topic and lists the values of --log-level", async () => {
  const h = await run(["run", "--help"]);
  const headings = [...h.out.matchAll(/^(\S[^\n]*):$/gm)].map((m) => m[1]);
  assert.deepEqual(headings, [
    "Where the config comes from",
    "Proxy",
    "Kubernetes (--provider kube)",
    "Config distribution (--provider kube)",
    "Mesh DNS (--provider kube)",
    "API, health and metrics",
    "eBPF data path",
    "Logging",
  ]);
  const section = (title: string) => h.out.split(`${title}:\n`)[1]!.split("\n\n")[0]!;
  assert.match(section("Proxy"), /^ {2}--http-port PORT/m);
  assert.match(section("eBPF data path"), /^ {2}--datapath /m);
  assert.match(section("Logging"), /^ {2}--log-level debug\|info\|warn\|error$/m);
  assert.match(section("Logging"), /^ {2}--help +Show this help$/m);
});

Deno.test("main() errors have one shape in every command: one line, `error:`, exit 2 for usage and 1 for failures", async () => {
  const shape = (who: string) => new RegExp(`^${who}: error: [a-z"-]`);
  const oneLine = (r: Run, argv: string[]) => {
    assert.equal(r.out, "", argv.join(" "));
    assert.equal(r.err.split("\n").filter((l) => l).length, 1, `${argv.join(" ")}:\n${r.err}`);
    assert.doesNotMatch(r.err, /\bat .*\.ts:\d+/, "no stack trace");
  };
  const unknown = await run(["serve"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.err, shape("meshd"));
  const commands = COMMAND_NAMES;
  for (const c of commands) {
    const words = c.split(" ");
    for (const argv of [[...words, "--bogus"], [...words, "--log-level", "loud"]]) {
      const levelled = ["run", "prepare", "cleanup", "check", "status", "stat"];
      if (argv.includes("--log-level") && !levelled.includes(c)) {
        continue; // no --log-level there; --bogus covers the flag error
      }
      const r = await run(argv);
      assert.equal(r.code, 2, argv.join(" "));
      oneLine(r, argv);
      assert.match(r.err, shape(`meshd ${c}`), r.err);
      assert.match(r.err, new RegExp(`; run "meshd ${c} --help"`));
    }
  }
  for (
    const argv of [
      ["version", "now"],
      ["completion", "tcsh"],
      ["completion"],
      ["stat", "shop", "extra"],
      ["check", "-o", "yaml"],
      ["status", "-x"],
    ]
  ) {
    const r = await run(argv);
    assert.equal(r.code, 2, argv.join(" "));
    oneLine(r, argv);
    assert.match(r.err, shape(`meshd ${argv[0]}`));
  }
  // Failures: the input is well formed but cannot be used.
  const missing = ["--kubeconfig", "/nonexistent/kc"];
  for (
    const argv of [
      ["run", "--provider", "kube", ...missing],
      ["prepare", ...missing],
      ["cleanup", ...missing],
      ["status", ...missing],
      ["stat", ...missing],
      ["config", "dump", "--config-dir", "/nonexistent/dir"],
    ]
  ) {
    const r = await run(argv);
    assert.equal(r.code, 1, `${argv.join(" ")}: ${r.err}`);
    const who = argv[0] === "config" ? "meshd config dump" : `meshd ${argv[0]}`;
    assert.match(r.err, shape(who), r.err);
    oneLine(r, argv);
  }
  // check's failures are its report on stdout, a line per check, and exit 1.
  const check = await run(["check", ...missing]);
  assert.equal(check.code, 1);
  assert.match(check.out, /^Kubernetes API\n-+\n✘ Cannot load Kubernetes credentials/m);
  const json = await run(["check", "-o", "json", ...missing]);
  assert.equal(json.code, 1);
  assert.equal(JSON.parse(json.out).checks[0].level, "fail");
});

Deno.test("clause() lowers an ordinary first word and keeps names", () => {
  assert.equal(clause("Unknown flag"), "unknown flag");
  assert.equal(clause("Cannot read it"), "cannot read it");
  assert.equal(clause("CoreDNS has no block"), "CoreDNS has no block");
  assert.equal(clause("TLS failed"), "TLS failed");
  assert.equal(clause("Kubernetes said 403"), "Kubernetes said 403");
  assert.equal(clause('"x" is bad'), '"x" is bad');
});

/**
 * The modules `main.ts` loads before any command runs: the closure of its static imports, from
 * `deno info --json` (which marks each `import()` as dynamic).
 */
async function staticImports(entry: URL): Promise<Set<string>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", entry.pathname],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    roots: string[];
    modules: {
      specifier: string;
      dependencies?: { isDynamic?: boolean; code?: { specifier?: string } }[];
    }[];
  };
  const bySpecifier = new Map(info.modules.map((m) => [m.specifier, m]));
  const seen = new Set<string>();
  const todo = [...info.roots];
  while (todo.length > 0) {
    const s = todo.pop()!;
    if (seen.has(s)) continue;
    seen.add(s);
    for (const d of bySpecifier.get(s)?.dependencies ?? []) {
      if (!d.isDynamic && d.code?.specifier) todo.push(d.code.specifier);
    }
  }
  return seen;
}

Deno.test("main() loads the cluster and ops commands only when one of them runs", async () => {
  // `meshd run` stays up for days: modules it never calls cost it RSS (issue 21).
  const loaded = await staticImports(new URL("../../main.ts", import.meta.url));
  assert.ok(loaded.has(new URL("./run_command.ts", import.meta.url).href), "run_command.ts");
  for (const lazy of ["cluster_commands.ts", "ops_commands.ts", "../kube/mod.ts"]) {
    assert.ok(!loaded.has(new URL(lazy, import.meta.url).href), `${lazy} is imported statically`);
  }
});

Deno.test("main() loads the kube provider's mode and the DNS room only for --provider kube", async () => {
  // A file-mode meshd never runs them (issue 21).
  const loaded = await staticImports(new URL("../../main.ts", import.meta.url));
  assert.ok(loaded.has(new URL("./file_mode.ts", import.meta.url).href), "file_mode.ts");
  for (const lazy of ["kube_mode.ts", "leader_lookup.ts", "dns_feed.ts", "../dns/mod.ts"]) {
    assert.ok(!loaded.has(new URL(lazy, import.meta.url).href), `${lazy} is imported statically`);
  }
});
