import assert from "node:assert/strict";
import { mallocTrimmer } from "./malloc_trim.ts";

const rssMiB = () =>
  Number(/^VmRSS:\s+(\d+) kB/m.exec(Deno.readTextFileSync("/proc/self/status"))![1]) / 1024;

Deno.test("mallocTrimmer gives the free pages in the middle of the malloc heap back", async () => {
  const trim = mallocTrimmer();
  assert.ok(trim, "the test runs with --allow-ffi on glibc");
  // 64 MiB in 32 KiB blocks (under glibc's mmap threshold, so from the heap), every page
  // touched, then all freed but the last, which keeps glibc from trimming the heap's top.
  const libc = Deno.dlopen("libc.so.6", {
    malloc: { parameters: ["usize"], result: "pointer" },
    free: { parameters: ["pointer"], result: "void" },
    memset: { parameters: ["pointer", "i32", "usize"], result: "pointer" },
  });
  try {
    const blocks = [];
    for (let i = 0; i < 2048; i++) {
      const p = libc.symbols.malloc(32n * 1024n);
      assert.ok(p);
      libc.symbols.memset(p, 1, 32n * 1024n);
      blocks.push(p);
    }
    const last = blocks.pop();
    for (const p of blocks) libc.symbols.free(p);
    const before = rssMiB();
    await trim();
    const after = rssMiB();
    libc.symbols.free(last!);
    assert.ok(
      before - after >= 48,
      `RSS ${before.toFixed(1)} MiB before, ${after.toFixed(1)} after`,
    );
  } finally {
    libc.close();
  }
});

Deno.test("mallocTrimmer is null without FFI permission", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const script = `${dir}/probe.ts`;
    await Deno.writeTextFile(
      script,
      `import { mallocTrimmer } from "${new URL("./malloc_trim.ts", import.meta.url).href}";\n` +
        "console.log(mallocTrimmer() === null);\n",
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", "--allow-read", script],
      env: { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" },
    }).output();
    assert.equal(new TextDecoder().decode(out.stdout).trim(), "true");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
