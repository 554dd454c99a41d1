/** Log levels, lowest first. */
export type LogLevel = "debug" | "info" | "warn" | "error";
/** `text` is one `key=value` line per event; `json` is one JSON object per line. */
export type LogFormat = "text" | "json";

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** Extra fields of a log event. */
export type LogFields = Record<string, unknown>;

/** Options for {@linkcode Logger}. */
export interface LoggerOptions {
  level?: LogLevel;
  format?: LogFormat;
  /** Where lines go. Default: standard error. */
  write?: (line: string) => void;
  /** The clock. Default `Date.now`. */
  now?: () => number;
}

/**
 * The one logger: one line per event, text (`key=value`) or JSON.
 *
 * @example
 * ```ts
 * const log = new Logger({ format: "json" });
 * log.info("config applied", { version: 3 });
 * ```
 */
export class Logger {
  readonly level: LogLevel;
  readonly format: LogFormat;
  readonly #write: (line: string) => void;
  readonly #now: () => number;
  readonly #fields: LogFields;

  constructor(options: LoggerOptions = {}, fields: LogFields = {}) {
    this.level = options.level ?? "info";
    this.format = options.format ?? "text";
    const enc = new TextEncoder();
    this.#write = options.write ?? ((line) => Deno.stderr.writeSync(enc.encode(line + "\n")));
    this.#now = options.now ?? Date.now;
    this.#fields = fields;
  }

  /** A logger that adds `fields` to every event. */
  with(fields: LogFields): Logger {
    return new Logger(
      { level: this.level, format: this.format, write: this.#write, now: this.#now },
      { ...this.#fields, ...fields },
    );
  }

  /** Whether events at `level` are written. */
  enabled(level: LogLevel): boolean {
    return RANK[level] >= RANK[this.level];
  }

  /** Per-connection detail. */
  debug(msg: string, fields?: LogFields): void {
    this.#log("debug", msg, fields);
  }
  /** Lifecycle: started, config applied, stopped. */
  info(msg: string, fields?: LogFields): void {
    this.#log("info", msg, fields);
  }
  /** Degraded: a rejected object, a fallback. */
  warn(msg: string, fields?: LogFields): void {
    this.#log("warn", msg, fields);
  }
  /** A human must act. */
  error(msg: string, fields?: LogFields): void {
    this.#log("error", msg, fields);
  }

  #log(level: LogLevel, msg: string, fields: LogFields = {}): void {
    if (!this.enabled(level)) return;
    const ts = new Date(this.#now()).toISOString();
    const all = { ...this.#fields, ...fields };
    if (this.format === "json") {
      this.#write(JSON.stringify({ ts, level, msg, ...all }));
      return;
    }
    let line = `ts=${ts} level=${level} msg=${quote(msg)}`;
    for (const [k, v] of Object.entries(all)) {
      if (v === undefined) continue;
      line += ` ${k}=${quote(typeof v === "string" ? v : JSON.stringify(v))}`;
    }
    this.#write(line);
  }
}

function quote(v: string): string {
  return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
}
