/**
 * The completion scripts, run by the real shells (bash, zsh and fish from Debian): each is
 * loaded as a user would load it, then asked for the completions of a few command lines.
 */
import assert from "node:assert/strict";
import { main } from "./main.ts";

async function script(shell: string): Promise<string> {
  let out = "";
  let err = "";
  const code = await main(["completion", shell], {
    stdout: (s) => out += s,
    stderr: (s) => err += s,
    env: () => undefined,
  });
  assert.equal(code, 0, err);
  return out;
}

/** Runs `shell` with `args`, the script saved as `file` in a temporary directory. */
async function inShell(
  shell: string,
  file: string,
  text: string,
  args: (path: string) => string[],
): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-completion-" });
  try {
    await Deno.writeTextFile(`${dir}/${file}`, text);
    const out = await new Deno.Command(shell, {
      args: args(`${dir}/${file}`),
      stdout: "piped",
      stderr: "piped",
    })
      .output()
      .catch((e) => {
        throw new Error(`cannot run ${shell} (Debian package ${shell}): ${e.message}`);
      });
    const dec = new TextDecoder();
    assert.ok(out.success, `${shell}: ${dec.decode(out.stderr)}`);
    return dec.decode(out.stdout);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("completionScript() for bash completes commands, flags, flag values and shells", async () => {
  const probe = `source "$1"
t() { COMP_WORDS=("$@"); COMP_CWORD=$((\${#COMP_WORDS[@]} - 1)); COMPREPLY=(); _meshd; echo "\${COMPREPLY[*]}"; }
t meshd r
t meshd run --log-l
t meshd run --log-level ""
t meshd config ""
t meshd config dump --do
t meshd completion ""
t meshd run --datapath ""
t meshd run --http-port ""
t meshd run --l4-worker = ""
t meshd run --l4-worker = a
t meshd run --l4-worker --log-l`;
  const out = await inShell(
    "bash",
    "meshd.bash",
    await script("bash"),
    (p) => ["-c", probe, "x", p],
  );
  assert.deepEqual(out.split("\n").slice(0, 11), [
    "run",
    "--log-level",
    "debug info warn error",
    "dump",
    "--domain",
    "bash zsh fish",
    "auto ebpf userspace",
    "", // a port: nothing to offer
    // bash splits --l4-worker=a at "=": its values after it, and no value taken from the next word
    "auto true false",
    "auto",
    "--log-level",
  ]);
});

Deno.test("completionScript() for fish completes commands, flags, flag values and shells", async () => {
  const out = await inShell("fish", "meshd.fish", await script("fish"), (p) => [
    "-c",
    `source ${p}
for line in "meshd r" "meshd run --log-level " "meshd config " "meshd config dump --do" "meshd completion " "meshd run --l4-worker=" "meshd run --l4-worker --log-l"
  echo "[$line]"; complete -C "$line" | string replace -r '\\t.*' ''
end
true`,
  ]);
  const sections = Object.fromEntries(
    out.split("[").slice(1).map((s) => {
      const [head, ...rest] = s.split("\n");
      return [head!.replace(/]$/, ""), rest.filter((l) => l).sort()];
    }),
  );
  assert.deepEqual(sections["meshd r"], ["run"]);
  assert.deepEqual(sections["meshd run --log-level "], ["debug", "error", "info", "warn"]);
  assert.deepEqual(sections["meshd config "], ["dump"]);
  assert.deepEqual(sections["meshd config dump --do"], ["--domain"]);
  assert.deepEqual(sections["meshd completion "], ["bash", "fish", "zsh"]);
  assert.deepEqual(sections["meshd run --l4-worker="], [
    "--l4-worker=auto",
    "--l4-worker=false",
    "--l4-worker=true",
  ]);
  assert.deepEqual(sections["meshd run --l4-worker --log-l"], ["--log-level"]);
});

Deno.test("completionScript() for zsh registers _meshd and hands each command its own flags", async () => {
  // zsh's completion widgets need a terminal; the script's own dispatch is checked with
  // _arguments, _describe and _values standing in, after compinit-style registration.
  const out = await inShell("zsh", "_meshd", await script("zsh"), (p) => [
    "-f",
    "-c",
    `compdef() { print "compdef $*"; }
source ${p}
_arguments() { print -l -- "$@"; }
_describe() { print -l -- $commands; }
_values() { print "values $*"; }
t() { CURRENT=$1; shift; words=("$@"); print "[$words]"; _meshd; }
t 2 meshd ""
t 4 meshd run --log-level ""
t 3 meshd config ""
t 4 meshd config dump --d
t 3 meshd completion ""`,
  ]);
  assert.match(out, /^compdef _meshd meshd$/m);
  const part = (head: string) => out.split(`[${head}]\n`)[1]!.split("\n[")[0]!;
  assert.match(part("meshd "), /^run:Run the node proxy/m);
  assert.match(part("meshd "), /^completion:/m);
  assert.match(
    part("meshd run --log-level "),
    /^--log-level\[[^\]]+\]:LEVEL:\(debug info warn error\)$/m,
  );
  assert.match(part("meshd run --log-level "), /^--config-dir\[[^\]]+\]:DIR:_files -\/$/m);
  assert.doesNotMatch(part("meshd run --log-level "), /^--coredns-namespace/m);
  // Its value optional (::), and only after "=" in the same word (=-).
  assert.match(
    part("meshd run --log-level "),
    /^--l4-worker=-\[[^\]]+\]::auto\|true\|false:\(auto true false\)$/m,
  );
  assert.equal(part("meshd config ").trim(), "values subcommand dump");
  assert.match(part("meshd config dump --d"), /^--domain\[/m);
  assert.doesNotMatch(part("meshd config dump --d"), /^--http-port/m);
  assert.match(part("meshd completion "), /^1:shell:\(bash zsh fish\)$/m);
});

Deno.test("main() completion refuses a missing or unknown shell as a usage error", async () => {
  for (const args of [["completion"], ["completion", "tcsh"], ["completion", "bash", "zsh"]]) {
    let err = "";
    const code = await main(args, {
      stdout: () => {},
      stderr: (s) => err += s,
      env: () => undefined,
    });
    assert.equal(code, 2, args.join(" "));
    assert.equal(err.trim().split("\n").length, 1, err);
    assert.match(err, /^meshd completion: /);
  }
});
