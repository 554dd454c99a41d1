import assert from "node:assert/strict";
import { buildInfo, formatBuildInfo, gitCommit, isCompiled } from "./version.ts";

const A = "a".repeat(40);
const B = "b".repeat(40);

/** A reader over an in-memory tree. */
const files = (tree: Record<string, string>) => (path: string) => tree[path] ?? null;

Deno.test("isCompiled() tells deno compile's virtual root from a checkout", () => {
  assert.equal(isCompiled("file:///tmp/deno-compile-meshd/src/cli/version.ts"), true);
  assert.equal(isCompiled("file:///work/meshd/src/cli/version.ts"), false);
  assert.equal(isCompiled("file:///work/deno-compile-notes.ts"), false);
});

Deno.test("gitCommit() follows HEAD to a loose ref, a packed ref, a detached HEAD and a worktree", () => {
  assert.equal(
    gitCommit(
      "/r/",
      files({ "/r/.git/HEAD": "ref: refs/heads/main\n", "/r/.git/refs/heads/main": `${A}\n` }),
    ),
    A,
  );
  assert.equal(
    gitCommit(
      "/r/",
      files({
        "/r/.git/HEAD": "ref: refs/heads/main\n",
        "/r/.git/packed-refs":
          `# pack-refs with: peeled\n${B} refs/heads/other\n${A} refs/heads/main\n`,
      }),
    ),
    A,
  );
  assert.equal(gitCommit("/r/", files({ "/r/.git/HEAD": `${B}\n` })), B);
  assert.equal(
    gitCommit(
      "/w/",
      files({
        "/w/.git": "gitdir: /r/.git/worktrees/w\n",
        "/r/.git/worktrees/w/HEAD": "ref: refs/heads/feature\n",
        "/r/.git/worktrees/w/commondir": "../..\n",
        "/r/.git/worktrees/w/../../refs/heads/feature": `${B}\n`,
      }),
    ),
    B,
  );
  assert.equal(gitCommit("/r/", files({})), null);
  assert.equal(gitCommit("/r/", files({ "/r/.git/HEAD": "garbage" })), null);
});

Deno.test("buildInfo() of a compiled binary reads the embedded build info, not git", () => {
  const url = "file:///tmp/deno-compile-meshd/src/cli/version.ts";
  const info = buildInfo(
    "1.2.3",
    url,
    files({
      "/tmp/deno-compile-meshd/dist/build-info.json":
        `{"commit":"${A}","built":"2026-11-29T10:00:00Z"}`,
    }),
  );
  assert.equal(info.compiled, true);
  assert.equal(info.commit, A);
  assert.equal(info.built, "2026-11-29T10:00:00Z");
  const text = formatBuildInfo(info);
  assert.match(text, /^meshd 1\.2\.3\n/);
  assert.match(text, /^ {2}binary {2}compiled \(deno compile\)$/m);
  // Without the file (or with a broken one) it says unknown rather than failing.
  const bare = buildInfo(
    "1.2.3",
    url,
    files({ "/tmp/deno-compile-meshd/dist/build-info.json": "{" }),
  );
  assert.equal(bare.commit, "unknown");
  assert.equal(bare.built, null);
});
