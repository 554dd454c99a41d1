/**
 * Issue 18, items 9 and 11: meshd with the file provider, driven through hostile and broken
 * files. After each one, the error is at /api/status naming the file, the last good routes
 * keep answering, and a good change made afterwards applies (it once never did again).
 */
import assert from "node:assert/strict";
import { waitFor } from "../testenv/process.ts";
import {
  apiGet,
  type FilesMesh,
  rawGet,
  serviceYaml,
  startFilesMesh,
  type Status,
} from "./_meshd_files.ts";

/** A bad file: its name, how to make it, and what the error at /api/status must say. */
interface BadFile {
  name: string;
  file: string;
  make: (path: string) => Promise<void>;
  /** The error naming the file; `null` for a file that is skipped with a warning instead. */
  error: RegExp | null;
  field?: string;
}

const write = (text: string) => (path: string) => Deno.writeTextFile(path, text);

function aliasBomb(): string {
  const lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]'];
  for (let i = 1; i < 10; i++) {
    lines.push(`a${i}: &a${i} [${Array(9).fill(`*a${i - 1}`).join(",")}]`);
  }
  return lines.join("\n") + "\n";
}

const NEW_FILES: BadFile[] = [
  {
    name: "an undefined alias",
    file: "bad.yaml",
    make: write("x: *nope\n"),
    error: /Unresolved alias/,
  },
  { name: "an alias bomb", file: "bomb.yaml", make: write(aliasBomb()), error: /alias/ },
  {
    name: "150 aliases",
    file: "aliases.yaml",
    make: write(`base: &b x\nlist: [${Array(150).fill("*b").join(", ")}]\n`),
    error: /more than 100 aliases/,
  },
  {
    name: "5,000-deep nesting",
    file: "deep.yaml",
    make: write(`${"[".repeat(5000)}${"]".repeat(5000)}\n`),
    error: /nesting deeper than 64 levels/,
  },
  {
    name: "a 20,000-term circuit-breaker expression",
    file: "breaker.yaml",
    make: write(
      `apiVersion: v1\nkind: Service\nmetadata:\n  name: breaker\n  namespace: sec\n  annotations:\n    meshd.io/circuit-breaker-expression: "${
        Array(20_000).fill("NetworkErrorRatio() > 0.5").join(" && ")
      }"\nspec: { ports: [{ port: 80 }] }\n`,
    ),
    error: /circuit-breaker-expression.*expected at most/,
  },
  {
    name: "a FIFO named *.yaml",
    file: "fifo.yaml",
    make: async (path) => {
      const out = await new Deno.Command("mkfifo", { args: [path] }).output();
      assert.ok(out.success, "mkfifo failed");
    },
    error: null,
  },
  {
    name: "a 10 MB file",
    file: "huge.yaml",
    make: async (path) => {
      const line = "# " + "x".repeat(1021) + "\n";
      await Deno.writeTextFile(path, line.repeat(10 * 1024));
    },
    error: /more than the limit of 4194304/,
  },
  {
    name: "binary garbage",
    file: "garbage.yaml",
    make: (path) =>
      Deno.writeFile(path, Uint8Array.from({ length: 4096 }, (_, i) => (i * 97 + 13) & 255)),
    error: /not valid UTF-8/,
  },
];

/** Changes to the good file web.yaml that must keep its Service routing (item 11). */
function brokenWeb(port: number): BadFile[] {
  const good = serviceYaml("web", port);
  return [
    {
      name: "web.yaml cut to a scalar",
      file: "web.yaml",
      make: write("apiV\n"),
      error: /found string "apiV"/,
    },
    {
      name: "a broken kind",
      file: "web.yaml",
      make: write(good.replace("kind: Service", "kind: Serv")),
      error: /field "kind"/,
    },
    {
      name: "a broken apiVersion",
      file: "web.yaml",
      make: write(
        good.replace("apiVersion: discovery.k8s.io/v1", "apiVersion: discovery.k8s.io/v"),
      ),
      error: /field "apiVersion"/,
    },
    {
      name: "broken metadata",
      file: "web.yaml",
      make: write(good.replace("metadata: { name: web, namespace: sec }", "metadata: 5")),
      error: /field "metadata"/,
    },
    {
      name: "an EndpointSlice cut inside an address",
      file: "web.yaml",
      make: write(good.replace('["127.0.60.1"]', '["127.0.60."]')),
      error: /expected an IPv4 address, found "127\.0\.60\."/,
      field: "endpoints[0].addresses[0]",
    },
    {
      name: "an endpoint address 999.1.1.1",
      file: "web.yaml",
      make: write(good.replace('["127.0.60.1"]', '["999.1.1.1"]')),
      error: /found "999\.1\.1\.1"/,
      field: "endpoints[0].addresses[0]",
    },
  ];
}

async function waitForProblem(mesh: FilesMesh, bad: BadFile): Promise<void> {
  await waitFor(`/api/status to report ${bad.name} in "${bad.file}"`, async () => {
    const s = await apiGet<Status>(mesh, "/api/status");
    if (bad.error === null) {
      return s.warnings.some((w) => w.includes(`"${bad.file}"`) && /not a regular file/.test(w))
        ? true
        : undefined;
    }
    const e = s.errors.find((e) => e.file === bad.file && bad.error!.test(e.message));
    if (!e) return undefined;
    if (bad.field) assert.equal(e.field, bad.field, `the field of ${e.message}`);
    assert.ok(!e.message.includes("\n"), `one line: ${e.message}`);
    assert.ok(e.message.length < 600, `a short message: ${e.message.length} characters`);
    return true;
  }, 15_000);
}

async function assertRoutes(mesh: FilesMesh, service: string, why: string): Promise<void> {
  await waitFor(`${service}.sec.mesh to answer 200 (${why})`, async () => {
    const r = await rawGet(mesh.http, `${service}.sec.mesh`);
    return r.status === 200 && /name: whoami/.test(r.body) ? true : undefined;
  }, 15_000);
}

async function runCases(mesh: FilesMesh, cases: BadFile[], restore?: () => Promise<void>) {
  for (const [i, bad] of cases.entries()) {
    const path = `${mesh.dir}/${bad.file}`;
    await bad.make(path);
    await waitForProblem(mesh, bad);
    // The last good routes stay.
    const web = await rawGet(mesh.http, "web.sec.mesh");
    assert.equal(web.status, 200, `web.sec.mesh must keep answering after ${bad.name}`);
    // A good change made while the bad file is there applies.
    const name = `after-${bad.file.replace(/\W/g, "-")}-${i}`.toLowerCase();
    await Deno.writeTextFile(`${mesh.dir}/${name}.yaml`, serviceYaml(name, mesh.backendPort));
    await assertRoutes(mesh, name, `added after ${bad.name}`);
    // And once the bad file is gone (or fixed), its error goes too.
    if (restore) await restore();
    else await Deno.remove(path);
    await waitFor(`the problem with "${bad.file}" to clear`, async () => {
      const s = await apiGet<Status>(mesh, "/api/status");
      const left = s.errors.filter((e) => e.file === bad.file).length +
        s.warnings.filter((w) => w.includes(`"${bad.file}"`)).length;
      return left === 0 ? true : undefined;
    }, 15_000);
    await Deno.remove(`${mesh.dir}/${name}.yaml`);
  }
}

Deno.test("FileProvider reports each hostile file at /api/status and keeps applying later changes", async () => {
  const mesh = await startFilesMesh();
  try {
    await runCases(mesh, NEW_FILES);
    const exit = mesh.meshd.lines.filter((l) => l.includes("meshd stopping"));
    assert.deepEqual(exit, [], "meshd must still run");
  } finally {
    await mesh.stop();
  }
});

Deno.test("FileProvider keeps a file's last good objects when it stops being Kubernetes objects", async () => {
  const mesh = await startFilesMesh();
  try {
    const good = serviceYaml("web", mesh.backendPort);
    await runCases(
      mesh,
      brokenWeb(mesh.backendPort),
      () => Deno.writeTextFile(`${mesh.dir}/web.yaml`, good),
    );
    // An invalid Service name is rejected with the field named.
    await Deno.writeTextFile(`${mesh.dir}/named.yaml`, serviceYaml("Bad_Name", mesh.backendPort));
    await waitForProblem(mesh, {
      name: "an invalid Service name",
      file: "named.yaml",
      make: () => Promise.resolve(),
      error: /DNS-1035 label.*"Bad_Name"/,
      field: "metadata.name",
    });
    const services = await apiGet<{ service: string }[]>(mesh, "/api/services");
    assert.ok(!services.some((s) => s.service === "Bad_Name"), JSON.stringify(services));
  } finally {
    await mesh.stop();
  }
});
