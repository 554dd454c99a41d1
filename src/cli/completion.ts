/**
 * `meshd completion bash|zsh|fish`: shell completion scripts made from the commands' own flag
 * specs, so they list exactly the flags `--help` does, and the values of flags that have a
 * fixed set (`--log-level debug|info|warn|error`).
 *
 * @module
 */
import type { FlagSpec } from "./flags.ts";

/** A command as completion sees it: `config dump` is two words. */
export interface CompletionCommand {
  name: string;
  summary: string;
  flags: readonly FlagSpec[];
}

/** The shells `meshd completion` writes a script for. */
export const SHELLS = ["bash", "zsh", "fish"] as const;

/** One of {@linkcode SHELLS}. */
export type Shell = typeof SHELLS[number];

/** How a flag's value is completed. */
function valueKind(f: FlagSpec): "none" | "after-eq" | "values" | "file" | "dir" | "free" {
  if (f.kind === "bool") return "none";
  // A switch whose value, when given, follows `=` in the same word (`--l4-worker=auto`).
  if (f.kind === "bool-or-auto") return "after-eq";
  if (f.values) return "values";
  if (f.arg === "DIR") return "dir";
  if (f.arg === "FILE" || f.arg === "PATH") return "file";
  return "free";
}

/** The help's first clause, short and free of the characters the shells' syntaxes use. */
function short(help: string): string {
  const first = help.split(/[;:(]/)[0]!.trim();
  return (first.length > 70 ? `${first.slice(0, 67)}...` : first).replace(/[[\]`$\\"']/g, "");
}

/** The first word of each command, with `config` once. */
function topWords(commands: readonly CompletionCommand[]): string[] {
  return [...new Set(commands.map((c) => c.name.split(" ")[0]!))];
}

function bash(commands: readonly CompletionCommand[]): string {
  const cases = commands.map((c) => {
    const flags = [...c.flags.map((f) => `--${f.name}`), "--help"].join(" ");
    const values = c.flags.filter((f) => ["values", "file", "dir"].includes(valueKind(f))).map(
      (f) => {
        const k = valueKind(f);
        const gen = k === "values" ? `-W "${f.values!.join(" ")}"` : k === "dir" ? "-d" : "-f";
        return `        --${f.name}) mapfile -t COMPREPLY < <(compgen ${gen} -- "$cur"); return ;;`;
      },
    );
    const free = c.flags.filter((f) => valueKind(f) === "free").map((f) => `--${f.name}`);
    // bash splits `--l4-worker=au` at the "=" (COMP_WORDBREAKS): "=" is then the word before.
    const afterEq = c.flags.filter((f) => valueKind(f) === "after-eq").map((f) =>
      `        --${f.name}) mapfile -t COMPREPLY < <(compgen -W "${
        (f.values ?? ["true", "false"]).join(" ")
      }" -- "$cur"); return ;;`
    );
    return [
      `    "${c.name}")`,
      ...(afterEq.length ? [`      case "$eq" in`, ...afterEq, `      esac`] : []),
      `      case "$prev" in`,
      ...values,
      ...(free.length ? [`        ${free.join("|")}) return ;;`] : []),
      `      esac`,
      `      flags="${flags}" ;;`,
    ].join("\n");
  });
  const subs = commands.filter((c) => c.name.includes(" ")).map((c) => c.name.split(" ")[1]!);
  return `# bash completion for meshd: source it, or put it in
# /etc/bash_completion.d/meshd (meshd completion bash > /etc/bash_completion.d/meshd).
_meshd() {
  local cur prev cmd flags="" at=2 eq=""
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  if [ "$prev" = "=" ] && [ "$COMP_CWORD" -ge 2 ]; then eq="\${COMP_WORDS[COMP_CWORD-2]}"; fi
  if [ "$COMP_CWORD" -eq 1 ]; then
    mapfile -t COMPREPLY < <(compgen -W "${topWords(commands).join(" ")}" -- "$cur")
    return
  fi
  cmd="\${COMP_WORDS[1]}"
  if [ "$cmd" = config ]; then
    if [ "$COMP_CWORD" -eq 2 ]; then
      mapfile -t COMPREPLY < <(compgen -W "${subs.join(" ")}" -- "$cur")
      return
    fi
    cmd="config \${COMP_WORDS[2]}"
    at=3
  fi
  case "$cmd" in
${cases.join("\n")}
    *) return ;;
  esac
  if [ "$cmd" = completion ] && [ "$COMP_CWORD" -eq "$at" ] && [[ "$cur" != -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "${SHELLS.join(" ")}" -- "$cur")
    return
  fi
  mapfile -t COMPREPLY < <(compgen -W "$flags" -- "$cur")
}
complete -F _meshd meshd
`;
}

function zsh(commands: readonly CompletionCommand[]): string {
  const q = (s: string) => s.replaceAll(":", "\\:");
  const spec = (f: FlagSpec): string => {
    const k = valueKind(f);
    const head = `--${f.name}[${q(short(f.help))}]`;
    if (k === "none") return `'${head}'`;
    const arg = q(f.arg ?? "VALUE");
    // `=-`: the value only in the same word, after "="; `::`: it is optional.
    if (k === "after-eq") {
      const vs = f.values ?? ["true", "false"];
      return `'--${f.name}=-[${q(short(f.help))}]::${vs.join("|")}:(${vs.join(" ")})'`;
    }
    if (k === "values") return `'${head}:${arg}:(${f.values!.join(" ")})'`;
    if (k === "dir") return `'${head}:${arg}:_files -/'`;
    if (k === "file") return `'${head}:${arg}:_files'`;
    return `'${head}:${arg}: '`;
  };
  const described = topWords(commands).map((w) => {
    const c = commands.find((x) => x.name === w) ?? commands.find((x) => x.name.startsWith(w))!;
    return `    '${w}:${q(short(c.summary))}'`;
  });
  const cases = commands.map((c) => {
    const extra = c.name === "completion" ? ` '1:shell:(${SHELLS.join(" ")})'` : "";
    return `    "${c.name}") _arguments ${
      [...c.flags.map(spec), "'--help[Show this help]'"].join(" ")
    }${extra} ;;`;
  });
  return `#compdef meshd
# zsh completion for meshd: put it as _meshd in a directory on $fpath
# (meshd completion zsh > "\${fpath[1]}/_meshd"), or source it after compinit.
_meshd() {
  local -a commands
  commands=(
${described.join("\n")}
  )
  if (( CURRENT == 2 )); then
    _describe -t commands command commands
    return
  fi
  local cmd=$words[2]
  shift words
  (( CURRENT-- ))
  if [[ $cmd == config ]]; then
    if (( CURRENT == 2 )); then
      _values subcommand dump
      return
    fi
    cmd="config $words[2]"
    shift words
    (( CURRENT-- ))
  fi
  case $cmd in
${cases.join("\n")}
  esac
}
if [ "$funcstack[1]" = _meshd ]; then
  _meshd "$@"
else
  compdef _meshd meshd
fi
`;
}

function fish(commands: readonly CompletionCommand[]): string {
  const lines = [
    "# fish completion for meshd: meshd completion fish > ~/.config/fish/completions/meshd.fish",
    "complete -c meshd -f",
  ];
  const tops = topWords(commands);
  for (const w of tops) {
    const c = commands.find((x) => x.name === w) ?? commands.find((x) => x.name.startsWith(w))!;
    lines.push(
      `complete -c meshd -n "not __fish_seen_subcommand_from ${tops.join(" ")}" -a ${w} -d '${
        short(c.summary)
      }'`,
    );
  }
  for (const c of commands) {
    const [first, second] = c.name.split(" ");
    const when = second
      ? `__fish_seen_subcommand_from ${first}; and __fish_seen_subcommand_from ${second}`
      : `__fish_seen_subcommand_from ${first}`;
    if (second) {
      lines.push(
        `complete -c meshd -n "__fish_seen_subcommand_from ${first}; and not __fish_seen_subcommand_from ${second}" -a ${second} -d '${
          short(c.summary)
        }'`,
      );
    }
    if (c.name === "completion") {
      lines.push(`complete -c meshd -n "${when}" -a "${SHELLS.join(" ")}"`);
    }
    const help: FlagSpec = { name: "help", kind: "bool", help: "Show this help" };
    for (const f of [...c.flags, help]) {
      const k = valueKind(f);
      const how = k === "none"
        ? ""
        : k === "after-eq"
        ? ` -a "${(f.values ?? ["true", "false"]).join(" ")}"`
        : k === "values"
        ? ` -x -a "${f.values!.join(" ")}"`
        : k === "dir"
        ? ` -x -a "(__fish_complete_directories)"`
        : k === "file"
        ? " -r -F"
        : " -x";
      lines.push(`complete -c meshd -n "${when}" -l ${f.name}${how} -d '${short(f.help)}'`);
    }
  }
  return lines.join("\n") + "\n";
}

/** The completion script for `shell`. */
export function completionScript(shell: Shell, commands: readonly CompletionCommand[]): string {
  return shell === "bash" ? bash(commands) : shell === "zsh" ? zsh(commands) : fish(commands);
}
