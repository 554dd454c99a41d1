/**
 * The Helm chart (charts/meshd): `helm lint` passes, its default render is object by object
 * what `kubectl kustomize manifests/` gives (so the two cannot drift apart), and its values
 * reach the objects. Helm and kubectl are built from the Go module proxy
 * (tests/testenv/helm/build.sh, tests/testenv/kube/build.sh), once per version.
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";

const ROOT = new URL("../../", import.meta.url).pathname;

async function run(
  cmd: string,
  args: string[],
): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(cmd, { args, cwd: ROOT, stdout: "piped", stderr: "piped" })
    .output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

async function built(script: string): Promise<string> {
  const r = await run("bash", [script]);
  assert.equal(r.code, 0, r.err);
  return r.out.trim();
}

type Obj = { kind: string; metadata: { name: string; namespace?: string }; [k: string]: unknown };

function objects(yaml: string): Map<string, Obj> {
  const out = new Map<string, Obj>();
  for (const doc of parseAllDocuments(yaml)) {
    if (doc.errors.length) throw new Error(String(doc.errors[0]));
    const o = doc.toJS() as Obj | null;
    if (!o) continue;
    out.set(`${o.kind} ${o.metadata.namespace ?? ""}/${o.metadata.name}`, o);
  }
  return out;
}

const helm = built("tests/testenv/helm/build.sh").then((h) => h);
const kubectl = built("tests/testenv/kube/build.sh").then((d) => `${d}/kubectl`);

Deno.test("helm lint charts/meshd passes", async () => {
  const r = await run(await helm, ["lint", "--strict", "charts/meshd"]);
  assert.equal(r.code, 0, r.out + r.err);
  assert.match(r.out, /1 chart\(s\) linted, 0 chart\(s\) failed/);
});

Deno.test("helm template charts/meshd renders what kubectl kustomize manifests/ does, object by object", async () => {
  const chart = await run(await helm, ["template", "meshd", "charts/meshd", "--include-crds"]);
  assert.equal(chart.code, 0, chart.err);
  const kustomized = await run(await kubectl, ["kustomize", "manifests/"]);
  assert.equal(kustomized.code, 0, kustomized.err);
  const fromChart = objects(chart.out);
  const fromManifests = objects(kustomized.out);
  assert.deepEqual([...fromChart.keys()].sort(), [...fromManifests.keys()].sort());
  for (const [key, o] of fromManifests) assert.deepEqual(fromChart.get(key), o, key);
});

Deno.test("helm template charts/meshd takes image, log level, ACL, mode, namespaces, data path, L4 worker, tolerations and resources from values", async () => {
  const r = await run(await helm, [
    "template",
    "meshd",
    "charts/meshd",
    "--set",
    "image.repository=registry.example/meshd,image.tag=9.9.9,logLevel=debug,acl=true",
    "--set",
    "defaultMode=tcp,datapath=userspace,namespace=mesh-system,drainTimeoutSeconds=40,l4Worker=false",
    "--set",
    "watchNamespaces={shop,web},ignoreNamespaces={kube-system,batch},prepare=false",
    "--set",
    "tolerations[0].key=gpu,tolerations[0].operator=Exists,resources.limits.memory=1Gi",
  ]);
  assert.equal(r.code, 0, r.err);
  const all = objects(r.out);
  const ds = all.get("DaemonSet mesh-system/meshd");
  assert.ok(ds, [...all.keys()].join("\n"));
  const spec = (ds["spec"] as { template: { spec: Record<string, unknown> } }).template.spec as {
    containers: { image: string; args: string[]; resources: unknown }[];
    initContainers: { image: string }[];
    tolerations: unknown[];
    terminationGracePeriodSeconds: number;
  };
  const c = spec.containers[0]!;
  assert.equal(c.image, "registry.example/meshd:9.9.9");
  assert.equal(spec.initContainers[0]!.image, "registry.example/meshd:9.9.9");
  for (
    const a of [
      "--log-level=debug",
      "--acl",
      "--default-mode=tcp",
      "--datapath=userspace",
      "--watch-namespaces=shop,web",
      "--ignore-namespaces=kube-system,batch",
      "--drain-timeout=40s",
    ]
  ) assert.ok(c.args.includes(a), `${a} in ${c.args.join(" ")}`);
  assert.ok(!c.args.some((a) => a.startsWith("--l4-worker")), `l4Worker=false: ${c.args}`);
  assert.equal(spec.terminationGracePeriodSeconds, 50);
  assert.deepEqual(spec.tolerations, [{ key: "gpu", operator: "Exists" }]);
  assert.deepEqual(c.resources, {
    requests: { cpu: "100m", memory: "160Mi" },
    limits: { memory: "1Gi" },
  });
  assert.ok(all.has("Namespace /mesh-system"));
  assert.ok(!all.has("Job mesh-system/meshd-prepare"), "prepare=false leaves the Job out");
  for (const o of all.values()) {
    if (o.metadata.namespace && o.metadata.namespace !== "kube-system") {
      assert.equal(o.metadata.namespace, "mesh-system", `${o.kind} ${o.metadata.name}`);
    }
  }
});

Deno.test("helm template charts/meshd takes l4Worker auto (the default), true or false, and refuses another value", async () => {
  const l4Args = async (set: string[]): Promise<string[]> => {
    const r = await run(await helm, ["template", "meshd", "charts/meshd", ...set]);
    assert.equal(r.code, 0, r.err);
    const ds = objects(r.out).get("DaemonSet meshd/meshd");
    assert.ok(ds, r.out);
    const spec = (ds["spec"] as { template: { spec: { containers: { args: string[] }[] } } })
      .template.spec;
    return spec.containers[0]!.args.filter((a) => a.startsWith("--l4-worker"));
  };
  const cases: [string, string[], string[]][] = [
    ["unset: auto, so a node where the loop cannot run does not crash-loop", [], [
      "--l4-worker=auto",
    ]],
    ["auto", ["--set", "l4Worker=auto"], ["--l4-worker=auto"]],
    ["true: required, as before auto", ["--set", "l4Worker=true"], ["--l4-worker"]],
    ['"true" as a string', ["--set-string", "l4Worker=true"], ["--l4-worker"]],
    ["false: meshd's default, off", ["--set", "l4Worker=false"], []],
    ["null: the default", ["--set", "l4Worker=null"], ["--l4-worker=auto"]],
  ];
  for (const [name, set, want] of cases) assert.deepEqual(await l4Args(set), want, name);
  const bad = await run(await helm, ["template", "meshd", "charts/meshd", "--set", "l4Worker=on"]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.err, /l4Worker must be auto, true or false, not "on"/);
});
