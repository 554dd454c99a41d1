import assert from "node:assert/strict";
import type { ConfigLimits, SourceFile } from "./config_limits.ts";
import { decodeFile } from "./decode_file.ts";
import { ConfigError } from "../topology/mod.ts";
import { decodeDecodedFile, encodeDecodedFile, ObjectLoader } from "./object_loader.ts";
import { readConfigFiles } from "./read_config_files.ts";

/** Decodes `files` here and merges them, as `FileProvider` does with its thread's answer. */
const load = (loader: ObjectLoader, files: SourceFile[], limits?: ConfigLimits) =>
  loader.merge(files.map((f) => decodeFile(f, limits)));

const svc = (name: string, port: number | string) =>
  `apiVersion: v1\nkind: Service\nmetadata: { name: ${name}, namespace: default }\nspec: { ports: [{ port: ${port} }] }\n`;

const names = (r: ReturnType<ObjectLoader["merge"]>) =>
  r.objects.map((o) => `${o.kind}/${o.meta.name}`).sort();

Deno.test("ObjectLoader reads multi-document YAML, List items and JSON", () => {
  const loader = new ObjectLoader();
  const r = load(loader, [
    { path: "a.yaml", text: `${svc("a", 80)}---\n---\n${svc("b", 81)}` },
    {
      path: "list.yml",
      text: "apiVersion: v1\nkind: List\nitems:\n" +
        "  - { apiVersion: v1, kind: Service, metadata: { name: c }, spec: { ports: [{ port: 1 }] } }\n" +
        "  - { apiVersion: v1, kind: Pod, metadata: { name: p }, spec: {} }\n",
    },
    {
      path: "d.json",
      text: JSON.stringify({
        apiVersion: "v1",
        kind: "List",
        items: [{
          apiVersion: "v1",
          kind: "Service",
          metadata: { name: "d" },
          spec: { ports: [{ port: 2 }] },
        }],
      }),
    },
  ]);
  assert.deepEqual(r.errors, []);
  assert.deepEqual(names(r), ["Pod/p", "Service/a", "Service/b", "Service/c", "Service/d"]);
});

Deno.test("ObjectLoader keeps a file's last good objects while it does not parse", () => {
  const loader = new ObjectLoader();
  load(loader, [{ path: "a.yaml", text: svc("a", 80) }, { path: "b.yaml", text: svc("b", 80) }]);
  const broken = load(loader, [
    { path: "a.yaml", text: "kind: [unclosed" },
    { path: "b.yaml", text: svc("b", 81) },
  ]);
  assert.equal(broken.errors.length, 1);
  assert.match(
    broken.errors[0]!.message,
    /^Cannot parse file "a\.yaml", document 1, as YAML: .*line 1/,
  );
  assert.deepEqual(names(broken), ["Service/a", "Service/b"]);
  assert.match(broken.warnings.join("\n"), /Keeping the 1 object\(s\) last read from "a\.yaml"/);
  // A broken JSON file too.
  const json = load(loader, [{ path: "a.yaml", text: svc("a", 80) }, {
    path: "b.json",
    text: "{",
  }]);
  assert.match(json.errors[0]!.message, /^Cannot parse file "b\.json" as JSON/);
});

Deno.test("ObjectLoader keeps an object's last good version while it is invalid", () => {
  const loader = new ObjectLoader();
  load(loader, [{ path: "a.yaml", text: `${svc("a", 80)}---\n${svc("b", 80)}` }]);
  const r = load(loader, [{ path: "a.yaml", text: `${svc("a", "eighty")}---\n${svc("b", 81)}` }]);
  assert.equal(r.errors.length, 1);
  assert.match(
    r.errors[0]!.message,
    /Service "default\/a" in file "a\.yaml", document 1: field "spec\.ports\[0\]\.port"/,
  );
  const a = r.objects.find((o) => o.meta.name === "a");
  assert.ok(a && a.kind === "Service");
  assert.equal(a.ports[0]!.port, 80, "the last good version stays");
  const b = r.objects.find((o) => o.meta.name === "b");
  assert.ok(b && b.kind === "Service" && b.ports[0]!.port === 81, "the good change applies");
  // A new object that was never good has nothing to keep.
  const fresh = load(new ObjectLoader(), [{ path: "x.yaml", text: svc("x", "bad") }]);
  assert.deepEqual(fresh.objects, []);
});

Deno.test("ObjectLoader drops alone an object with a bad name, label or annotation", () => {
  // `retry-attempts: 3` and `version: 2` unquoted, and `name: Web_1`, are common slips. The
  // object's kind and name are read, so it is that object's error, as Kubernetes refuses it
  // alone; the file's other objects apply. They once were all dropped, as for a file that does
  // not parse: after a restart, such a file routed nothing.
  const labelled = (name: string, meta: string) =>
    `apiVersion: v1\nkind: Service\nmetadata: { name: ${name}, namespace: default, ${meta} }\n` +
    `spec: { ports: [{ port: 80 }] }\n`;
  const r = load(new ObjectLoader(), [{
    path: "a.yaml",
    text: `${svc("good", 80)}---\n${
      labelled("a", "annotations: { mesh.traefik.io/retry-attempts: 3 }")
    }---\n${labelled("b", "labels: { version: 2 }")}---\n${svc("Web_1", 80)}`,
  }]);
  assert.deepEqual(names(r), ["Service/good"]);
  assert.deepEqual(r.errors.map((e) => [e.key, e.field]), [
    ["Service/default/a", 'metadata.annotations["mesh.traefik.io/retry-attempts"]'],
    ["Service/default/b", 'metadata.labels["version"]'],
    ["Service/default/Web_1", "metadata.name"],
  ]);
  assert.match(r.errors[0]!.message, /^Cannot read Service "default\/a" in file "a\.yaml"/);
});

Deno.test("ObjectLoader drops the objects of a deleted file and warns about skipped kinds", () => {
  const loader = new ObjectLoader();
  load(loader, [{ path: "a.yaml", text: svc("a", 80) }, { path: "b.yaml", text: svc("b", 80) }]);
  const r = load(loader, [{
    path: "b.yaml",
    text: `${svc("b", 80)}---\napiVersion: example.com/v1\nkind: Widget\nmetadata: { name: s }\n`,
  }]);
  assert.deepEqual(names(r), ["Service/b"]);
  assert.deepEqual(r.warnings, [
    'Skipping file "b.yaml", document 2: kind "Widget" is not used by meshd',
  ]);
});

Deno.test("ObjectLoader skips the kinds of a normal manifest quietly, ServiceAccounts included", () => {
  // Traefik Mesh's manifests carry ServiceAccounts beside the Pods that run as them.
  const other = [
    "apiVersion: v1\nkind: ServiceAccount\nmetadata: { name: server, namespace: test }",
    "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: server }",
    "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: { name: rb }",
    // The kind of another group's name is not the manifest kind: it still warns.
    "apiVersion: example.com/v1\nkind: Deployment\nmetadata: { name: d }",
  ];
  const r = load(new ObjectLoader(), [{
    path: "a.yaml",
    text: [svc("a", 80), ...other].join("\n---\n"),
  }]);
  assert.deepEqual(names(r), ["Service/a"]);
  assert.deepEqual(r.errors, []);
  assert.deepEqual(r.warnings, [
    'Skipping file "a.yaml", document 5: kind "Deployment" is not used by meshd',
  ]);
  assert.deepEqual(r.notes, [
    'Skipping file "a.yaml", document 2: kind "ServiceAccount" is not used by meshd',
    'Skipping file "a.yaml", document 3: kind "Deployment" is not used by meshd',
    'Skipping file "a.yaml", document 4: kind "RoleBinding" is not used by meshd',
  ]);
});

Deno.test("decodeDecodedFile() keeps the key of an object that did not decode", () => {
  const bad = "apiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { ports: 7 }";
  const wire = JSON.parse(
    JSON.stringify(encodeDecodedFile(decodeFile({ path: "a.yaml", text: bad }))),
  );
  const r = new ObjectLoader().merge([decodeDecodedFile(wire)]);
  assert.deepEqual(r.errors.map((e) => e.key), ["Service/default/web"]);
});

Deno.test("readConfigFiles() reads YAML and JSON recursively, skipping hidden and other files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-files-" });
  try {
    await Deno.mkdir(`${dir}/sub`);
    await Deno.mkdir(`${dir}/..data`);
    for (
      const f of ["b.yaml", "a.yml", "sub/c.json", ".hidden.yaml", "..data/d.yaml", "notes.txt"]
    ) {
      await Deno.writeTextFile(`${dir}/${f}`, f);
    }
    const files = await readConfigFiles(dir);
    assert.deepEqual(files.map((f) => f.path), ["a.yml", "b.yaml", "sub/c.json"]);
    assert.equal(files[2]!.text, "sub/c.json");
    await assert.rejects(readConfigFiles(`${dir}/missing`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readConfigFiles() reads each folder once through links to folders above it", async () => {
  // `ln -s . loop`: the walk once read everything again at each of 40 levels (the kernel's
  // ELOOP), and with two such links the whole read failed.
  const dir = await Deno.makeTempDir({ prefix: "meshd-files-" });
  try {
    await Deno.mkdir(`${dir}/sub`);
    await Deno.writeTextFile(`${dir}/a.yaml`, "a");
    await Deno.writeTextFile(`${dir}/sub/b.yaml`, "b");
    await Deno.symlink(".", `${dir}/loop`);
    await Deno.symlink("..", `${dir}/sub/up`);
    const files = await readConfigFiles(dir);
    assert.deepEqual(files.map((f) => [f.path, f.skipped !== undefined]), [
      ["a.yaml", false],
      ["loop", true],
      ["sub/b.yaml", false],
      ["sub/up", true],
    ]);
    assert.match(files[1]!.skipped!, /a link to a folder already read/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ObjectLoader keeps a file's last good objects when a document is not an object", () => {
  // Issue 18, item 11: each of these once removed the Service with no error.
  const cases: [string, string, RegExp][] = [
    ["a scalar (the file cut to `apiV`)", "apiV\n", /expected a map, found string "apiV"/],
    ["a list of scalars", "- a\n- b\n", /found string "a" \(and 1 more like it\)/],
    ["an explicit null document", "~\n", /found null/],
    ["a kind cut short", "apiVersion: v1\nkind: Serv\nmetadata: { name: a }\n", /field "kind"/],
    [
      "a kind of a meshd group cut short",
      "apiVersion: discovery.k8s.io/v1\nkind: Endpoi\nmetadata: { name: a }\n",
      /"Endpoi": is it "EndpointSlice" cut short/,
    ],
    ["an apiVersion cut short", "apiVersion: discovery.k8s.io/v\nkind: Service\n", /apiVersion/],
    ["metadata cut off", "apiVersion: v1\nkind: Service\nmetadata:\n", /field "metadata"/],
  ];
  for (const [name, text, re] of cases) {
    const loader = new ObjectLoader();
    load(loader, [{ path: "a.yaml", text: svc("a", 80) }]);
    const r = load(loader, [{ path: "a.yaml", text }]);
    assert.equal(r.errors.length, 1, `${name}: ${r.errors.map((e) => e.message).join("; ")}`);
    assert.match(r.errors[0]!.message, re, name);
    assert.match(r.errors[0]!.message, /"a\.yaml"/, name);
    assert.deepEqual(names(r), ["Service/a"], `${name}: the last good Service must stay`);
  }
});

Deno.test("ObjectLoader turns limits and unreadable files into errors naming the file", () => {
  const limits = { maxFileBytes: 1000, maxAliases: 3, maxDepth: 8, maxDocuments: 50 };
  const cases: [string, string, RegExp][] = [
    ["an undefined alias", "x: *nope\n", /Unresolved alias/],
    [
      "too many aliases",
      `a: &a 1\nb: [${Array(5).fill("*a").join(", ")}]\n`,
      /more than 3 aliases/,
    ],
    ["deep nesting", `${"[".repeat(20)}${"]".repeat(20)}\n`, /nesting deeper than 8 levels/],
    ["a file too large", `# ${"x".repeat(2000)}\n`, /more than 1000 bytes/],
  ];
  for (const [name, text, re] of cases) {
    const loader = new ObjectLoader();
    load(loader, [{ path: "a.yaml", text: svc("a", 80) }], limits);
    const r = load(loader, [{ path: "a.yaml", text }], limits);
    assert.equal(r.errors.length, 1, name);
    assert.match(r.errors[0]!.message, /^Cannot (parse|read) file "a\.yaml"/, name);
    assert.match(r.errors[0]!.message, re, name);
    assert.deepEqual(names(r), ["Service/a"], name);
  }
  const unreadable = load(new ObjectLoader(), [{ path: "b.yaml", text: "", error: "boom" }]);
  assert.equal(unreadable.errors[0]!.message, 'Cannot read file "b.yaml": boom');
});

Deno.test("ObjectLoader keeps the last good objects through failures in a row, and keep()", () => {
  const loader = new ObjectLoader();
  load(loader, [{ path: "a.yaml", text: `${svc("a", 80)}---\n${svc("b", 80)}` }]);
  for (let i = 0; i < 2; i++) {
    const r = load(loader, [{ path: "a.yaml", text: "kind: [unclosed" }]);
    assert.deepEqual(names(r), ["Service/a", "Service/b"], `failure ${i + 1}`);
  }
  // An invalid object keeps its last version, and so does the next load that fails with it.
  load(loader, [{ path: "a.yaml", text: `${svc("a", "eighty")}---\n${svc("b", 81)}` }]);
  const r = load(loader, [{ path: "a.yaml", text: `${svc("a", "eighty")}---\n${svc("b", 82)}` }]);
  const ports = r.objects.map((o) =>
    o.kind === "Service" ? `${o.meta.name}:${o.ports[0]!.port}` : ""
  )
    .sort();
  assert.deepEqual(ports, ["a:80", "b:82"]);
  const kept = loader.keep(new ConfigError("the reading thread died"));
  const keptPorts = kept.objects.map((o) =>
    o.kind === "Service" ? `${o.meta.name}:${o.ports[0]!.port}` : ""
  ).sort();
  assert.deepEqual(keptPorts, ["a:80", "b:82"]);
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

Deno.test("ObjectLoader picks the same one of two definitions whatever order the files come in", () => {
  // File names that English collation cannot tell apart, though they differ: é precomposed
  // and decomposed (a file from macOS and one from Linux), a soft hyphen and a control
  // character (both ignorable). The directory listing's order, which differs between
  // filesystems and runs, must not pick the winner.
  const pairs: [string, string][] = [
    ["caf\u00e9.yaml", "cafe\u0301.yaml"],
    ["web.yaml", "we\u00adb.yaml"],
    ["web.yaml", "web\u0001.yaml"],
  ];
  const svc = (port: number) =>
    `apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: default }\n` +
    `spec: { ports: [{ port: ${port} }] }\n`;
  const port = (r: ReturnType<ObjectLoader["merge"]>) =>
    (r.objects.find((o) => o.kind === "Service") as { ports?: { port: number }[] }).ports?.[0]
      ?.port;
  for (const [a, b] of pairs) {
    const files = [{ path: a, text: svc(81) }, { path: b, text: svc(82) }];
    const forward = port(load(new ObjectLoader(), files));
    const backward = port(load(new ObjectLoader(), [...files].reverse()));
    assert.equal(forward, backward, `${JSON.stringify(a)} and ${JSON.stringify(b)}`);
  }
});
