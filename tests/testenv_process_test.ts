/**
 * The test harness's own promise: children a crashed test process left behind are stopped by
 * the next one, and nothing else is.
 */
import assert from "node:assert/strict";
import {
  Child,
  isAlive,
  runToEnd,
  sweepOrphanedChildren,
  timeScale,
  waitFor,
} from "./testenv/process.ts";

Deno.test("sweepOrphanedChildren() stops what a dead test process recorded, and only that", async () => {
  // a test process that has exited: its PID is no longer a deno
  const gone = new Deno.Command("true").spawn();
  await gone.status;
  const orphan = new Deno.Command("sleep", { args: ["60"] }).spawn();
  const bystander = new Deno.Command("sleep", { args: ["61"] }).spawn();
  const file = `/tmp/meshd-test-children/${gone.pid}`;
  try {
    await Deno.mkdir("/tmp/meshd-test-children", { recursive: true });
    await Deno.writeTextFile(
      file,
      [
        { pid: orphan.pid, argv: ["sleep", "60"] },
        // a PID that now runs something else than what was recorded: left alone
        { pid: bystander.pid, argv: ["sleep", "999"] },
      ].map((r) => JSON.stringify(r)).join("\n") + "\n",
    );
    assert.equal(sweepOrphanedChildren(), 1);
    const st = await orphan.status;
    assert.equal(st.signal, "SIGKILL");
    assert.ok(isAlive(bystander.pid));
    assert.equal(await Deno.stat(file).then(() => true, () => false), false, "the record goes");
  } finally {
    try {
      orphan.kill("SIGKILL");
    } catch { /* stopped */ }
    bystander.kill("SIGKILL");
    await bystander.status;
    await Deno.remove(file).catch(() => {});
  }
});

Deno.test("sweepOrphanedChildren() goes on past a record another sweeper removed first, or a bad line", async () => {
  // Test processes that start together (this one, the coordinator's, another helper's) sweep
  // the same records: one of them may find a record gone between listing and reading it.
  const dir = await Deno.makeTempDir({ prefix: "meshd-children-" });
  const dead = async () => {
    const p = new Deno.Command("true").spawn();
    await p.status;
    return p.pid;
  };
  const orphan = new Deno.Command("sleep", { args: ["62"] }).spawn();
  try {
    // listed, but gone by the time it is read: what a record removed meanwhile looks like
    await Deno.symlink(`${dir}/removed-meanwhile`, `${dir}/${await dead()}`);
    await Deno.writeTextFile(
      `${dir}/${await dead()}`,
      '{"pid": 1, "argv": ["sle\n' + JSON.stringify({ pid: orphan.pid, argv: ["sleep", "62"] }) +
        "\n",
    );
    assert.equal(sweepOrphanedChildren(dir), 1);
    assert.equal((await orphan.status).signal, "SIGKILL");
    assert.deepEqual([...Deno.readDirSync(dir)], [], "both records go");
  } finally {
    try {
      orphan.kill("SIGKILL");
    } catch { /* stopped */ }
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("waitFor() stretches its deadline by MESHD_TEST_TIME_SCALE, which must be a number >= 1", async () => {
  const before = Deno.env.get("MESHD_TEST_TIME_SCALE");
  try {
    Deno.env.delete("MESHD_TEST_TIME_SCALE");
    assert.equal(timeScale(), 1);
    Deno.env.set("MESHD_TEST_TIME_SCALE", "4");
    assert.equal(timeScale(), 4);
    // A 50 ms wait, stretched 4 times, still sees a value that turns up after 120 ms.
    const start = performance.now();
    const v = await waitFor(
      "a late value",
      () => performance.now() - start > 120 ? "late" : undefined,
      50,
      10,
    );
    assert.equal(v, "late");
    await assert.rejects(
      waitFor("nothing", () => undefined, 10, 5),
      /Timed out after 40 ms waiting for nothing/,
    );
    for (const bad of ["0.5", "fast"]) {
      Deno.env.set("MESHD_TEST_TIME_SCALE", bad);
      assert.throws(
        () => timeScale(),
        new RegExp(`MESHD_TEST_TIME_SCALE "${bad}": expected a number >= 1`),
      );
    }
  } finally {
    if (before === undefined) Deno.env.delete("MESHD_TEST_TIME_SCALE");
    else Deno.env.set("MESHD_TEST_TIME_SCALE", before);
  }
});

Deno.test("Child keeps stdout and stderr apart and together, feeds stdin, and calls onLine", async () => {
  const seen: string[] = [];
  const c = new Child("sh", ["-c", 'read x; echo "out $x"; echo err >&2; echo \'{"n":1}\''], {
    command: "sh",
    stdin: true,
    onLine: (line, stream) => seen.push(`${stream}:${line}`),
  });
  await c.write("hello\n");
  await c.closeStdin();
  const st = await c.wait(10_000);
  assert.equal(st.code, 0);
  assert.deepEqual(c.stdout, ["out hello", '{"n":1}']);
  assert.deepEqual(c.stderr, ["err"]);
  assert.deepEqual([...c.lines].sort(), ["err", "out hello", '{"n":1}']);
  assert.deepEqual(seen.sort(), ["stderr:err", "stdout:out hello", 'stdout:{"n":1}']);
  assert.deepEqual(c.last<{ n: number }>(), { n: 1 });
});

Deno.test("Child.wait() kills a process that outlives its deadline, by its PID", async () => {
  const c = new Child("sleep", ["30"], { command: "sleep" });
  const st = await c.wait(100);
  assert.equal(st.signal, "SIGKILL");
  assert.equal(isAlive(c.pid), false);
});

Deno.test("runToEnd() returns the exit code and each stream's lines", async () => {
  const r = await runToEnd("sh", ["-c", "echo a; echo b >&2; exit 3"], { timeoutMs: 10_000 });
  assert.deepEqual(r, { code: 3, stdout: "a", stderr: "b" });
});
