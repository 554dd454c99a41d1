import assert from "node:assert/strict";
import { compareNames } from "./_compare_names.ts";

const english = new Intl.Collator("en").compare;

Deno.test("compareNames() orders names as English collation does", () => {
  // Every name of up to two characters from the alphabet compared without a collator, and
  // names with what it does not cover: upper case, "_", a non-ASCII letter.
  const plain = "abcdefghijklmnopqrstuvwxyz0123456789-./".split("");
  const names = ["", ...plain, ...plain.flatMap((a) => plain.map((b) => a + b))];
  names.push("B.yaml", "a.yaml", "A", "_x", "a_b", "é.yaml", "e.yaml", "svc-10", "svc-9", "Z");
  let checked = 0;
  for (const a of names) {
    for (const b of names) {
      const got = Math.sign(compareNames(a, b));
      if (got !== Math.sign(english(a, b))) {
        assert.fail(`compareNames("${a}", "${b}") is ${got}, English collation says otherwise`);
      }
      checked++;
    }
  }
  assert.equal(checked, names.length ** 2);
});

Deno.test("readConfigFiles() and ObjectLoader order files alike in every locale", async () => {
  // In Danish collation "aa" sorts after "z": the process's locale must not pick which of two
  // files defining the same Service wins.
  const dir = await Deno.makeTempDir({ prefix: "meshd-compare-names-" });
  try {
    const svc = (port: number) =>
      `apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: default }\n` +
      `spec: { ports: [{ port: ${port} }] }\n`;
    await Deno.mkdir(`${dir}/config`);
    await Deno.writeTextFile(`${dir}/config/aa.yaml`, svc(81));
    await Deno.writeTextFile(`${dir}/config/z.yaml`, svc(82));
    const here = (f: string) => new URL(f, import.meta.url).href;
    await Deno.writeTextFile(
      `${dir}/order.ts`,
      `import { readConfigFiles } from "${here("./read_config_files.ts")}";
import { decodeFile } from "${here("./decode_file.ts")}";
import { ObjectLoader } from "${here("./object_loader.ts")}";
const files = await readConfigFiles(Deno.args[0]!);
const r = new ObjectLoader().merge(files.map((f) => decodeFile(f)));
const web = r.objects.find((o) => o.kind === "Service") as { ports?: { port: number }[] };
console.log(JSON.stringify({ files: files.map((f) => f.path), port: web.ports?.[0]?.port }));
`,
    );
    for (const locale of ["da_DK.UTF-8", "en_US.UTF-8"]) {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--config",
          new URL("../../deno.json", import.meta.url).pathname,
          `--allow-read=${dir}`,
          "--allow-env=LOG_TOKENS,LOG_STREAM",
          `${dir}/order.ts`,
          `${dir}/config`,
        ],
        env: { LANG: locale, LC_ALL: locale, DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const err = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, err);
      assert.deepEqual(
        JSON.parse(new TextDecoder().decode(out.stdout)),
        { files: ["aa.yaml", "z.yaml"], port: 82 },
        `in ${locale}`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
