/**
 * Issue 18, item 12: `meshd config dump` on hostile inputs says what is wrong in one line and
 * exits 1: no "internal error" with a stack trace, and no minute-long parse of a 10 MB file.
 * Each run is killed at a generous deadline, so a hang fails the test instead of stalling it.
 */
import assert from "node:assert/strict";

const ROOT = new URL("../../", import.meta.url).pathname;
const DEADLINE_MS = 30_000;

function aliasBomb(): string {
  const lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]'];
  for (let i = 1; i < 10; i++) {
    lines.push(`a${i}: &a${i} [${Array(9).fill(`*a${i - 1}`).join(",")}]`);
  }
  return lines.join("\n") + "\n";
}

/** Each input: a name, the file it writes, and what the one line must say. */
const INPUTS: {
  name: string;
  file: string;
  make: (path: string) => Promise<void>;
  says: RegExp;
}[] = [
  {
    name: "an undefined alias",
    file: "a.yaml",
    make: (p) => Deno.writeTextFile(p, "x: *nope\n"),
    says: /Unresolved alias/,
  },
  {
    name: "an alias bomb",
    file: "a.yaml",
    make: (p) => Deno.writeTextFile(p, aliasBomb()),
    says: /alias/,
  },
  {
    name: "150 aliases",
    file: "a.yaml",
    make: (p) => Deno.writeTextFile(p, `b: &b x\nl: [${Array(150).fill("*b").join(",")}]\n`),
    says: /more than 100 aliases/,
  },
  {
    name: "5,000-deep nesting",
    file: "a.yaml",
    make: (p) => Deno.writeTextFile(p, "[".repeat(5000) + "]".repeat(5000) + "\n"),
    says: /nesting deeper than 64/,
  },
  {
    name: "a 20,000-term circuit-breaker expression",
    file: "a.yaml",
    make: (p) =>
      Deno.writeTextFile(
        p,
        `apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  annotations:\n    meshd.io/circuit-breaker-expression: "${
          Array(20_000).fill("NetworkErrorRatio() > 0.5").join(" && ")
        }"\nspec: { ports: [{ port: 80 }] }\n`,
      ),
    says: /circuit-breaker-expression.*expected at most/,
  },
  {
    name: "binary garbage",
    file: "a.yaml",
    make: (p) =>
      Deno.writeFile(p, Uint8Array.from({ length: 4096 }, (_, i) => (i * 97 + 13) & 255)),
    says: /not valid UTF-8/,
  },
  {
    name: "a FIFO",
    file: "a.yaml",
    make: async (p) => {
      assert.ok((await new Deno.Command("mkfifo", { args: [p] }).output()).success);
    },
    says: /not a regular file/,
  },
  {
    name: "invalid UTF-8 in a Service name",
    file: "a.yaml",
    make: (p) =>
      Deno.writeFile(
        p,
        Uint8Array.from([
          ...new TextEncoder().encode('apiVersion: v1\nkind: Service\nmetadata: { name: "'),
          0xff,
          0xfe,
          ...new TextEncoder().encode('" }\n'),
        ]),
      ),
    says: /not valid UTF-8/,
  },
  {
    name: "a list of scalars",
    file: "a.yaml",
    make: (p) => Deno.writeTextFile(p, "- a\n- b\n"),
    says: /and 1 more like it/,
  },
  {
    name: "null documents",
    file: "a.yaml",
    make: (p) => Deno.writeTextFile(p, "---\n~\n---\nnull\n"),
    says: /found null/,
  },
  {
    name: "a 10 MB file",
    file: "a.yaml",
    make: (p) => Deno.writeTextFile(p, ("# " + "x".repeat(1021) + "\n").repeat(10 * 1024)),
    says: /more than the limit of 4194304/,
  },
];

for (const input of INPUTS) {
  Deno.test(`meshd config dump exits 1 with one line on ${input.name}`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "meshd-sec-dump-" });
    try {
      await input.make(`${dir}/${input.file}`);
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-read",
          "--allow-env",
          `${ROOT}main.ts`,
          "config",
          "dump",
          "--config-dir",
          dir,
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).spawn();
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* ended meanwhile */ }
      }, DEADLINE_MS);
      const out = await child.output();
      clearTimeout(timer);
      const stderr = new TextDecoder().decode(out.stderr).split("\n").filter((l) =>
        l.trim() !== "" &&
        !/^[│╭╰]|Warning|build scripts|Lifecycle scripts|nodeModulesDir|protobufjs/.test(l.trim())
      );
      assert.notEqual(out.signal, "SIGKILL", `still running after ${DEADLINE_MS} ms`);
      assert.equal(out.code, 1, `exit code; stderr:\n${stderr.join("\n")}`);
      assert.equal(stderr.length, 1, `one line on stderr, got:\n${stderr.join("\n")}`);
      assert.match(stderr[0]!, /^meshd config dump: error: /);
      assert.doesNotMatch(stderr[0]!, /internal error|\bat .*\.(ts|js):\d+/);
      assert.match(stderr[0]!, new RegExp(`"${input.file.replace(".", "\\.")}"`), "names the file");
      assert.match(stderr[0]!, input.says);
      assert.ok(stderr[0]!.length < 600, `a short line: ${stderr[0]!.length} characters`);
      assert.equal(out.stdout.length, 0, "no config printed");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
