import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import { FileProvider } from "./file_provider.ts";
import type { LoadResult } from "../topology/mod.ts";
import { waitFor } from "../_testing.ts";

const svc = (name: string) =>
  `apiVersion: v1\nkind: Service\nmetadata: { name: ${name}, namespace: default }\n` +
  `spec: { ports: [{ name: http, port: 80 }] }\n`;

Deno.test("FileProvider reads a file written in two parts once, whole", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-settle-" });
  const loads: LoadResult[] = [];
  const provider = new FileProvider({
    dir,
    logger: new Logger({ level: "error", write: () => {} }),
    onLoad: (r) => void loads.push(r),
    // Polled often, and the second write comes after a reader without a settle time (one
    // reading thread started per read, up to a second here) had read the first part.
    pollMs: 20,
    settleMs: 3_000,
  });
  try {
    await Deno.writeTextFile(`${dir}/a.yaml`, svc("a"));
    await provider.start();
    assert.equal(loads.length, 1);
    // An editor or kubectl writing in two writes: the first ends mid-document.
    const whole = svc("b");
    await Deno.writeTextFile(`${dir}/b.yaml`, whole.slice(0, 30));
    await new Promise((r) => setTimeout(r, 1_500));
    await Deno.writeTextFile(`${dir}/b.yaml`, whole);
    await waitFor("the second file to apply", () => {
      const last = loads.at(-1)!;
      return last.objects.some((o) => o.meta.name === "b") ? true : undefined;
    }, 15_000);
    assert.deepEqual(
      loads.flatMap((l) => l.errors.map((e) => e.message)),
      [],
      "no load saw the half-written file",
    );
    assert.equal(loads.length, 2);
  } finally {
    await provider.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("FileProvider says a link to a file outside the directory is not read there", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-link-" });
  const elsewhere = await Deno.makeTempDir({ prefix: "meshd-link-target-" });
  const loads: LoadResult[] = [];
  const provider = new FileProvider({
    dir,
    logger: new Logger({ level: "error", write: () => {} }),
    onLoad: (r) => void loads.push(r),
  });
  try {
    await Deno.writeTextFile(`${elsewhere}/b.yaml`, svc("b"));
    await Deno.writeTextFile(`${dir}/a.yaml`, svc("a"));
    await Deno.symlink(`${elsewhere}/b.yaml`, `${dir}/b.yaml`);
    await provider.start();
    const errors = loads[0]!.errors.map((e) => e.message);
    // Not Deno's "run again with the --allow-read flag", which a user of meshd cannot do.
    assert.deepEqual(errors, [
      'Cannot read file "b.yaml": it leads outside the config directory (a link to a file ' +
      "elsewhere?), where meshd does not read",
    ]);
    assert.deepEqual(loads[0]!.objects.map((o) => o.meta.name), ["a"]);
  } finally {
    await provider.stop();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(elsewhere, { recursive: true });
  }
});
