/** A command-line flag, also settable as the environment variable `MESHD_<NAME>`. */
/**
 * The most a `count-or-auto` flag takes (`--workers`): each worker is an isolate of its own
 * (tens of MiB), and HAProxy's threads stop at the same number by default.
 */
export const MAX_COUNT = 64;

export interface FlagSpec {
  /** Long name without dashes, such as `config-dir`. */
  name: string;
  kind:
    | "string"
    | "int"
    | "count"
    | "duration"
    | "bool"
    | "bool-or-auto"
    | "list"
    | "range"
    | "count-or-auto";
  /** Allowed values for a `string` flag; for a `bool-or-auto` flag, how help and completion list them. */
  values?: readonly string[];
  /**
   * What a `string` flag's value, or each item of a `list` flag, must match, and how a usage
   * error says it (`expected ...`).
   */
  pattern?: { re: RegExp; expected: string };
  /** The default, as it would be written on the command line; `undefined` for none. */
  default?: string;
  /** Placeholder in help, such as `DIR`. */
  arg?: string;
  /** A `duration` flag that also takes `0` (any unit, or none): the feature is off. */
  zeroOff?: boolean;
  /** The shortest a `duration` flag takes, in ms (default 1). */
  minMs?: number;
  /** A one-letter form, such as `o` for `-o json`. */
  short?: string;
  help: string;
}

/** A flag value after parsing. */
export type FlagValue =
  | string
  | number
  | boolean
  | string[]
  | { first: number; last: number }
  | undefined;

/** Wrong usage: an unknown flag, a bad value. The CLI prints it with the help hint and exits 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** The environment variable for a flag: `config-dir` is `MESHD_CONFIG_DIR`. */
export function envName(flag: string): string {
  return "MESHD_" + flag.toUpperCase().replaceAll("-", "_");
}

/**
 * Parses `argv` against `specs`. A flag on the command line beats its environment variable,
 * which beats the default. Returns the values and the positional arguments.
 *
 * @example
 * ```ts
 * const { values } = parseFlags(["--api-port", "9100"], specs, (k) => Deno.env.get(k));
 * ```
 */
export function parseFlags(
  argv: readonly string[],
  specs: readonly FlagSpec[],
  env: (name: string) => string | undefined = () => undefined,
): { values: Record<string, FlagValue>; positionals: string[]; help: boolean } {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const raw = new Map<string, { value: string; from: string }>();
  const positionals: string[] = [];
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--help" || a === "-h") {
      help = true;
      continue;
    }
    if (a === "--") {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    const short = /^-([a-zA-Z])(?:=(.*))?$/.exec(a);
    if (!a.startsWith("--") && !short) {
      positionals.push(a);
      continue;
    }
    const eq = short ? (short[2] === undefined ? -1 : 2) : a.indexOf("=");
    let name = short
      ? specs.find((s) => s.short === short[1])?.name ?? a
      : eq > 0
      ? a.slice(2, eq)
      : a.slice(2);
    if (name === a) throw new UsageError(`Unknown flag "${a}"`);
    let value: string | undefined = eq > 0 ? a.slice(eq + 1) : undefined;
    let spec = byName.get(name);
    if (
      !spec && name.startsWith("no-") && isSwitch(byName.get(name.slice(3))) && value === undefined
    ) {
      name = name.slice(3);
      spec = byName.get(name);
      value = "false";
    }
    if (!spec) throw new UsageError(`Unknown flag "--${name}"`);
    if (value === undefined) {
      // A switch alone is on; `bool-or-auto` takes its other values after `=` only, so a bare
      // `--l4-worker` never eats the next argument.
      if (isSwitch(spec)) value = "true";
      else {
        const next = argv[i + 1];
        if (next === undefined || (next.startsWith("--") && next.length > 2)) {
          throw new UsageError(`Flag "--${name}" needs a value${spec.arg ? ` (${spec.arg})` : ""}`);
        }
        value = next;
        i++;
      }
    }
    raw.set(name, { value, from: `--${name}` });
  }
  const values: Record<string, FlagValue> = {};
  for (const spec of specs) {
    let r = raw.get(spec.name);
    if (!r) {
      const e = env(envName(spec.name));
      if (e !== undefined && e !== "") r = { value: e, from: envName(spec.name) };
    }
    if (!r && spec.default !== undefined) r = { value: spec.default, from: "the default" };
    values[spec.name] = r ? convert(spec, r.value, r.from) : undefined;
  }
  return { values, positionals, help };
}

/** A flag that stands alone (`--acl`, `--no-acl`): `bool` and `bool-or-auto`. */
export function isSwitch(spec: FlagSpec | undefined): boolean {
  return spec?.kind === "bool" || spec?.kind === "bool-or-auto";
}

/** The longest timer: 2^31-1 ms, just over 596 hours. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function convert(spec: FlagSpec, v: string, from: string): FlagValue {
  const bad = (expected: string): never => {
    throw new UsageError(`Invalid value "${v}" for ${from}: expected ${expected}`);
  };
  switch (spec.kind) {
    case "string":
      if (spec.values && !spec.values.includes(v)) bad(spec.values.join(", "));
      if (spec.pattern && !spec.pattern.re.test(v)) bad(spec.pattern.expected);
      return v;
    case "int": {
      if (!/^\d+$/.test(v) || Number(v) > 65535) bad("a port number from 0 to 65535");
      return Number(v);
    }
    case "count": {
      if (!/^\d+$/.test(v) || Number(v) < 1 || !Number.isSafeInteger(Number(v))) {
        bad("a whole number of at least 1");
      }
      return Number(v);
    }
    case "count-or-auto": {
      // A count up to MAX_COUNT, or "auto" (the caller decides what auto is).
      if (v === "auto") return v;
      if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > MAX_COUNT) {
        bad(`a whole number from 1 to ${MAX_COUNT}, or auto`);
      }
      return Number(v);
    }
    case "duration": {
      // Milliseconds, from a number and a unit: 500ms, 5s, 2m, 1h.
      const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(v.trim());
      const ms = m ? Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2]!]! : NaN;
      if (spec.zeroOff && (ms === 0 || v.trim() === "0")) return 0;
      if (!m || !(ms >= 1) || !Number.isFinite(ms)) {
        bad(`a duration such as 500ms, 5s, 2m or 1h${spec.zeroOff ? ", or 0 for none" : ""}`);
      }
      // A timer longer than 2^31-1 ms fires at once (it is set to 1 ms).
      if (Math.round(ms) > MAX_TIMER_MS) bad("a duration of at most 596h (2^31-1 ms)");
      if (spec.minMs !== undefined && ms < spec.minMs) {
        bad(`a duration of at least ${spec.minMs} ms`);
      }
      return Math.round(ms);
    }
    case "bool":
      if (["true", "1", "yes"].includes(v.toLowerCase())) return true;
      if (["false", "0", "no"].includes(v.toLowerCase())) return false;
      return bad("true or false");
    case "bool-or-auto":
      // A switch that also takes auto (probe, then fall back): `--l4-worker=auto`.
      if (v.toLowerCase() === "auto") return "auto";
      if (["true", "1", "yes"].includes(v.toLowerCase())) return true;
      if (["false", "0", "no"].includes(v.toLowerCase())) return false;
      return bad("true, false or auto");
    case "list": {
      const items = v.split(",").map((s) => s.trim()).filter((s) => s);
      const wrong = spec.pattern && items.find((s) => !spec.pattern!.re.test(s));
      if (wrong !== undefined && spec.pattern) {
        bad(`each item ${spec.pattern.expected}, and "${wrong}" is not`);
      }
      return items;
    }
    case "range": {
      const m = /^(\d+)-(\d+)$/.exec(v.trim());
      const first = Number(m?.[1]);
      const last = Number(m?.[2]);
      if (!m || first < 1 || last > 65535 || first > last) bad("a port range such as 10000-14999");
      return { first, last };
    }
  }
}

/** Flags shown together under a heading in `--help`. */
export interface FlagGroup {
  title: string;
  flags: readonly FlagSpec[];
}

/** The widest `--help` line: it fits a 100-column terminal. */
export const HELP_WIDTH = 99;

/** The left column of a flag in `--help`: name and placeholder (its values, when listed). */
function flagLeft(s: FlagSpec): string {
  const name = s.short ? `-${s.short}, --${s.name}` : `--${s.name}`;
  if (s.kind === "bool") return `  ${name}`;
  // Its value only after `=`: a bare `--l4-worker` is on.
  if (s.kind === "bool-or-auto") {
    return `  ${name}[=${(s.values ?? ["true", "false", "auto"]).join("|")}]`;
  }
  const arg = s.values && s.values.join("|").length <= 24 ? s.values.join("|") : s.arg ?? "VALUE";
  return `  ${name} ${arg}`;
}

/** `text` in lines of at most `width` columns, broken at spaces (a longer word stays whole). */
export function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/).filter((w) => w)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

/**
 * Formats the flags for `--help`: name and placeholder on the left, then the help, its values,
 * default and environment variable, wrapped under {@linkcode HELP_WIDTH} columns.
 */
export function formatFlags(specs: readonly FlagSpec[], withHelp = false): string {
  return formatFlagGroups([{ title: "", flags: specs }], withHelp);
}

/** Like {@linkcode formatFlags}, with the flags under their groups' headings. */
export function formatFlagGroups(groups: readonly FlagGroup[], withHelp = false): string {
  const all = groups.flatMap((g) => g.flags);
  // The help column starts after the usual name, not the longest: a long one gets its own line.
  const lefts = all.map(flagLeft);
  const col = Math.min(Math.max(...lefts.map((l) => l.length), 8) + 2, 34);
  const row = (left: string, right: string): string => {
    const body = wrap(right, HELP_WIDTH - col);
    const first = left.length + 2 <= col ? left.padEnd(col) + (body.shift() ?? "") : left;
    return [first, ...body.map((l) => " ".repeat(col) + l)].join("\n");
  };
  const out: string[] = [];
  for (const g of groups) {
    if (g.title) out.push(`${out.length > 0 ? "\n" : ""}${g.title}:`);
    for (const s of g.flags) {
      const extra: string[] = [];
      if (s.values && !flagLeft(s).includes("|")) extra.push(`one of ${s.values.join(", ")}`);
      if (s.default !== undefined && s.default !== "") extra.push(`default ${s.default}`);
      extra.push(`env ${envName(s.name)}`);
      out.push(row(flagLeft(s), `${s.help} [${extra.join("; ")}]`));
    }
  }
  if (withHelp) out.push(row("  --help", "Show this help"));
  return out.join("\n");
}

/**
 * Typed reads of parsed flags, so no command casts the record: a value of another type than
 * the read asks for is a bug (the flag's spec and its reader disagree), thrown as a TypeError.
 *
 * @example
 * ```ts
 * const flags = new FlagValues(parseFlags(argv, specs).values);
 * const port = flags.number("api-port");
 * ```
 */
export class FlagValues {
  readonly #values: Readonly<Record<string, FlagValue>>;

  constructor(values: Readonly<Record<string, FlagValue>>) {
    this.#values = values;
  }

  /** A `string` flag with a default. */
  string(name: string): string {
    return this.#need(name, this.optionalString(name));
  }

  /** A `string` flag without a default. */
  optionalString(name: string): string | undefined {
    return this.#read(name, "a string", (v): v is string => typeof v === "string");
  }

  /** One of a `string` flag's `values`, typed as the union of them. */
  choice<const T extends string>(name: string, choices: readonly T[]): T {
    const v = this.string(name);
    if (!(choices as readonly string[]).includes(v)) {
      throw new TypeError(`Flag "--${name}" is "${v}", not one of ${choices.join(", ")}`);
    }
    return v as T;
  }

  /** An `int`, `count` or `duration` (milliseconds) flag with a default. */
  number(name: string): number {
    return this.#need(name, this.optionalNumber(name));
  }

  /** An `int`, `count` or `duration` flag without a default. */
  optionalNumber(name: string): number | undefined {
    return this.#read(name, "a number", (v): v is number => typeof v === "number");
  }

  /** A `count-or-auto` flag. */
  countOrAuto(name: string): number | "auto" {
    const v = this.#need(
      name,
      this.#read(
        name,
        "a number or auto",
        (v): v is number | "auto" => typeof v === "number" || v === "auto",
      ),
    );
    return v;
  }

  /** A `bool` flag. */
  bool(name: string): boolean {
    return this.#read(name, "true or false", (v): v is boolean => typeof v === "boolean") ??
      false;
  }

  /** A `bool-or-auto` flag (false when unset). */
  boolOrAuto(name: string): boolean | "auto" {
    return this.#read(
      name,
      "true, false or auto",
      (v): v is boolean | "auto" => typeof v === "boolean" || v === "auto",
    ) ?? false;
  }

  /** A `list` flag (empty when unset). */
  list(name: string): string[] {
    return this.#read(name, "a list", (v): v is string[] => Array.isArray(v)) ?? [];
  }

  /** A `range` flag with a default. */
  range(name: string): { first: number; last: number } {
    type Range = { first: number; last: number };
    const isRange = (v: FlagValue): v is Range =>
      typeof v === "object" && v !== null && !Array.isArray(v) && "first" in v;
    return this.#need(name, this.#read(name, "a range", isRange));
  }

  #read<T>(name: string, what: string, is: (v: FlagValue) => v is T & FlagValue): T | undefined {
    if (!(name in this.#values)) throw new TypeError(`No flag "--${name}" was parsed`);
    const v = this.#values[name];
    if (v === undefined) return undefined;
    if (!is(v)) throw new TypeError(`Flag "--${name}" holds ${typeof v}, not ${what}`);
    return v;
  }

  #need<T>(name: string, v: T | undefined): T {
    if (v === undefined) throw new TypeError(`Flag "--${name}" has no value and no default`);
    return v;
  }
}
