/**
 * `meshd status`, `stat` and `check` against a kubeconfig or an API server that is hostile or
 * broken: binary files, a server that accepts and never answers, one whose error text spans
 * lines and carries terminal escapes. Each ends in bounded time with exit 1 and one line (the
 * check report: one line per check) with no raw control character and no stack trace. Run as
 * real processes against a TLS server of the test's own on 127.0.69.50.
 */
import assert from "node:assert/strict";
import { issueCert, makeCa } from "../../src/_testing_tls.ts";
import { freePort } from "../testenv/process.ts";
import { parseFlags } from "../../src/cli/flags.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const HOST = "127.0.69.50";

/** Runs meshd; a run past 40 s is killed. */
async function meshd(
  argv: string[],
): Promise<{ code: number | "killed"; err: string; ms: number }> {
  const deadline = AbortSignal.timeout(40_000);
  const started = Date.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", "--allow-all", MAIN, ...argv],
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: deadline,
  }).output();
  const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
  return { code: deadline.aborted ? "killed" : out.code, err: text, ms: Date.now() - started };
}

// deno-lint-ignore no-control-regex -- the characters a terminal acts on
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/;

/** What a server that answers does with each request. */
type Answer = "hang" | "status" | "html";

/**
 * Runs `fn` with a kubeconfig for a TLS API server on HOST that answers every request as
 * `answer` says: never (holding the connection), a 403 Status whose message has line breaks
 * and escapes, or a 502 HTML page.
 */
async function withApi(answer: Answer, fn: (kubeconfig: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-cli-hostile-" });
  await makeCa(dir, "meshd test CA");
  const srv = await issueCert(dir, "srv", {
    subj: "/CN=srv",
    ext: `subjectAltName=IP:${HOST}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`,
  });
  const port = freePort(HOST);
  const kubeconfig = `${dir}/kubeconfig`;
  await Deno.writeTextFile(
    kubeconfig,
    [
      "apiVersion: v1",
      "kind: Config",
      `clusters: [{ name: c, cluster: { server: "https://${HOST}:${port}", ` +
      `certificate-authority-data: ${btoa(await Deno.readTextFile(`${dir}/ca.crt`))} } }]`,
      "users: [{ name: u, user: { token: t } }]",
      "contexts: [{ name: x, context: { cluster: c, user: u } }]",
      "current-context: x",
      "",
    ].join("\n"),
  );
  const listener = Deno.listenTls({ hostname: HOST, port, cert: srv.cert, key: srv.key });
  const conns: Deno.Conn[] = [];
  const enc = new TextEncoder();
  const serving = (async () => {
    for await (const c of listener) {
      conns.push(c);
      (async () => {
        await c.read(new Uint8Array(64 * 1024));
        if (answer === "hang") return;
        const [status, type, body] = answer === "status"
          ? [
            "403 Forbidden",
            "application/json",
            JSON.stringify({
              kind: "Status",
              message: "line one\nline two \x1b]0;pwned\x07 \x1b[31mred\r\n\x9b2J",
              reason: "Forbidden",
            }),
          ]
          : [
            "502 Bad Gateway",
            "text/html",
            "<html><body>\n<h1>502 Bad Gateway</h1>\n<p>nginx \x1b[2J</p>\n</body></html>\n",
          ];
        await c.write(enc.encode(
          `HTTP/1.1 ${status}\r\ncontent-type: ${type}\r\ncontent-length: ${
            enc.encode(body).length
          }\r\nconnection: close\r\n\r\n${body}`,
        ));
        c.close();
      })().catch(() => {});
    }
  })().catch(() => {});
  try {
    await fn(kubeconfig);
  } finally {
    listener.close();
    for (const c of conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await serving;
    await Deno.remove(dir, { recursive: true });
  }
}

/** Checks an error run: exit 1, no stack trace, no raw control character, `lines` lines. */
function assertClean(r: { code: number | "killed"; err: string }, lines = 1): void {
  assert.equal(r.code, 1, `exit ${r.code}:\n${r.err}`);
  assert.doesNotMatch(r.err, /^\s+at /m, `a stack trace:\n${r.err}`);
  assert.doesNotMatch(r.err, /internal error/, r.err);
  const bad = CONTROL.exec(r.err);
  assert.equal(bad, null, `a raw ${JSON.stringify(bad?.[0])} in:\n${r.err}`);
  if (lines === 1) assert.equal(r.err.trim().split("\n").length, 1, `not one line:\n${r.err}`);
}

for (const command of [["status"], ["stat", "--window", "1s"]]) {
  for (const answer of ["hang", "status", "html"] as const) {
    Deno.test(
      `meshd ${command[0]} exits 1 with one clean line when the API server ${
        {
          hang: "never answers",
          status: "sends a Status with line breaks and escapes",
          html: "sends an HTML 502 page",
        }[answer]
      }`,
      async () => {
        await withApi(answer, async (kubeconfig) => {
          const r = await meshd([...command, "--kubeconfig", kubeconfig]);
          assertClean(r);
        });
      },
    );
  }
}

Deno.test("meshd check prints no raw control character or extra line of an API server's error text", async () => {
  await withApi("status", async (kubeconfig) => {
    const r = await meshd(["check", "--kubeconfig", kubeconfig]);
    assertClean(r, 0);
    assert.doesNotMatch(r.err, /^line two/m, r.err);
  });
});

Deno.test("meshd status exits 1 with one clean line for a kubeconfig that is binary", async () => {
  const file = await Deno.makeTempFile({ prefix: "meshd-cli-hostile-" });
  try {
    const bytes = new Uint8Array(4096);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 131 + 7) % 256;
    await Deno.writeFile(file, bytes);
    assertClean(await meshd(["status", "--kubeconfig", file]));
  } finally {
    await Deno.remove(file);
  }
});

// A timer of more than 2^31-1 ms fires at once (Deno sets it to 1 ms), so a duration flag
// above that did the opposite of what it said: --tcp-idle-timeout 600h closed every connection
// as idle at once, and check --wait 99999999999h never ended.
for (
  const argv of [
    ["check", "--wait", "99999999999h"],
    ["check", "--wait", "597h"],
    ["stat", "--window", "2147483648ms"],
    ["run", "--tcp-idle-timeout", "600h"],
  ]
) {
  Deno.test(`meshd ${argv.join(" ")} is a usage error (exit 2, one line)`, async () => {
    const r = await meshd(argv);
    assert.equal(r.code, 2, `exit ${r.code}:\n${r.err}`);
    assert.equal(r.err.trim().split("\n").length, 1, r.err);
    assert.match(r.err, /at most 596h/, r.err);
  });
}

Deno.test("parseFlags() takes a duration up to 2^31-1 ms", () => {
  const spec = [{ name: "wait", kind: "duration" as const, help: "" }];
  assert.equal(parseFlags(["--wait", "596h"], spec, () => undefined).values["wait"], 2_145_600_000);
  assert.equal(
    parseFlags(["--wait", "2147483647ms"], spec, () => undefined).values["wait"],
    2 ** 31 - 1,
  );
  assert.throws(
    () => parseFlags(["--wait", "2147483648ms"], spec, () => undefined),
    /at most 596h/,
  );
});

// --domain was checked only in kube mode: a file-mode meshd ran with an empty or malformed
// mesh domain, and a bad --domain-aliases was refused with exit 1 after "meshd starting".
for (
  const argv of [
    ["run", "--domain", ""],
    ["run", "--domain", "a..b"],
    ["run", "--domain", "web mesh"],
    ["run", "--domain-aliases", "traefik.mesh,bad alias"],
    // A run needs no config to be refused; a dump reads this empty one (and printed it).
    ["config", "dump", "--domain", "-mesh", "--config-dir", "EMPTY"],
  ]
) {
  Deno.test(`meshd ${JSON.stringify(argv)} is a usage error (exit 2, one line)`, async () => {
    const empty = await Deno.makeTempDir({ prefix: "meshd-cli-hostile-" });
    const r = await meshd(argv.map((a) => a === "EMPTY" ? empty : a)).finally(() =>
      Deno.remove(empty, { recursive: true })
    );
    assert.equal(r.code, 2, `exit ${r.code}:\n${r.err}`);
    assert.equal(r.err.trim().split("\n").length, 1, r.err);
    assert.match(r.err, /expected (each item )?a domain name such as "mesh"/, r.err);
  });
}
