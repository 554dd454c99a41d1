/** One sample of the Prometheus text format: `name{labels} value`. */
export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$/;
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/y;

function unescape(v: string): string {
  return v.replace(/\\(["\\n])/g, (_m, c: string) => (c === "n" ? "\n" : c));
}

function parseValue(v: string): number {
  if (v === "+Inf") return Infinity;
  if (v === "-Inf") return -Infinity;
  return Number(v);
}

/**
 * The samples of a `/metrics` page in the Prometheus text format (0.0.4). Comments and lines
 * that do not parse are skipped: a page from a newer meshd with more in it still reads.
 *
 * @example
 * ```ts
 * parsePromText('meshd_config_version 7\n'); // [{ name: "meshd_config_version", labels: {}, value: 7 }]
 * ```
 */
export function parsePromText(text: string): PromSample[] {
  const out: PromSample[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    const body = m[2] ?? "";
    LABEL.lastIndex = 0;
    let ok = true;
    while (LABEL.lastIndex < body.length) {
      const start = LABEL.lastIndex;
      const l = LABEL.exec(body);
      if (!l) {
        ok = body.slice(start).trim() === "";
        break;
      }
      labels[l[1]!] = unescape(l[2]!);
    }
    const value = parseValue(m[3]!);
    if (!ok || Number.isNaN(value) && m[3] !== "NaN") continue;
    out.push({ name: m[1]!, labels, value });
  }
  return out;
}

/** The samples named `name` whose labels include every pair of `match`. */
export function select(
  samples: readonly PromSample[],
  name: string,
  match: Record<string, string> = {},
): PromSample[] {
  return samples.filter((s) =>
    s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v)
  );
}

/** The value of the one sample named `name` (matching `match`), or undefined. */
export function valueOf(
  samples: readonly PromSample[],
  name: string,
  match: Record<string, string> = {},
): number | undefined {
  return select(samples, name, match)[0]?.value;
}
