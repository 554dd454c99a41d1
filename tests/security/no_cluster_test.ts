/**
 * The kube commands on a machine with no cluster credentials at all: no Pod ServiceAccount, no
 * $KUBECONFIG, no ~/.kube/config. client-node then falls back to http://localhost:8080, where
 * `run` used to retry forever and `prepare`/`cleanup` died with a stack trace. Each must exit 1
 * with one line that says where it looked. Run as real processes with a bare environment, as a
 * user would meet them.
 */
import assert from "node:assert/strict";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
/** Deno's own cache, kept so the bare environment does not download the npm packages again. */
const DENO_DIR = Deno.env.get("DENO_DIR") ??
  `${Deno.env.get("XDG_CACHE_HOME") ?? `${Deno.env.get("HOME")}/.cache`}/deno`;

/** Runs meshd with only HOME (empty), PATH and DENO_DIR set; a run past 30 s is killed. */
async function bare(
  argv: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | "killed"; err: string }> {
  const home = await Deno.makeTempDir({ prefix: "meshd-nocluster-" });
  const deadline = AbortSignal.timeout(30_000);
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--quiet", "--allow-all", MAIN, ...argv],
      clearEnv: true,
      env: {
        HOME: home,
        PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
        DENO_DIR,
        NO_COLOR: "1",
        ...env,
      },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
      signal: deadline,
    }).output();
    return {
      code: deadline.aborted ? "killed" : out.code,
      err: new TextDecoder().decode(out.stderr),
    };
  } finally {
    await Deno.remove(home, { recursive: true });
  }
}

for (
  const argv of [
    ["run", "--provider", "kube", "--api-port", "0", "--http-port", "0", "--dns-port", "0"],
    ["prepare"],
    ["cleanup"],
  ]
) {
  Deno.test(`meshd ${argv[0]} with no kubeconfig anywhere exits 1 with one line`, async () => {
    const { code, err } = await bare(argv);
    assert.equal(code, 1, `exit ${code}, stderr:\n${err}`);
    const lines = err.trim().split("\n");
    assert.equal(lines.length, 1, `expected one line, got:\n${err}`);
    assert.match(
      lines[0]!,
      new RegExp(`^meshd ${argv[0]}: error: no Kubernetes credentials found`),
    );
    assert.match(lines[0]!, /KUBERNETES_SERVICE_HOST is unset/);
    assert.match(lines[0]!, /\$KUBECONFIG is unset and ".*\/\.kube\/config" does not exist/);
  });
}

Deno.test("meshd prepare names the $KUBECONFIG files that do not exist", async () => {
  const { code, err } = await bare(["prepare"], { KUBECONFIG: "/nonexistent/a:/nonexistent/b" });
  assert.equal(code, 1, err);
  assert.match(
    err,
    /^meshd prepare: error: no Kubernetes credentials found: .*\$KUBECONFIG names "\/nonexistent\/a", "\/nonexistent\/b", none of which exists; pass --kubeconfig\n$/,
  );
});

Deno.test("meshd run refuses a kubeconfig whose server is plain http://", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-nocluster-" });
  try {
    await Deno.writeTextFile(
      `${dir}/kc.yaml`,
      `apiVersion: v1
kind: Config
clusters: [{ name: local, cluster: { server: "http://127.0.0.1:1" } }]
users: [{ name: u, user: { token: t } }]
contexts: [{ name: x, context: { cluster: local, user: u } }]
current-context: x
`,
    );
    const { code, err } = await bare([
      "run",
      "--provider=kube",
      `--kubeconfig=${dir}/kc.yaml`,
      "--api-port=0",
      "--http-port=0",
      "--dns-port=0",
    ]);
    assert.equal(code, 1, err);
    assert.match(
      err,
      /^meshd run: error: the kubeconfig's cluster "local" has server "http:\/\/127\.0\.0\.1:1", expected an https:\/\/ address/,
    );
    assert.equal(err.trim().split("\n").length, 1, err);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
