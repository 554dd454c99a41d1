import type { BreakerExpr, BreakerMetric } from "./objects.ts";

/** Characters in an expression: Traefik's examples are under 100. */
export const MAX_BREAKER_EXPRESSION_LENGTH = 1024;
/** Comparisons joined by `&&` and `||` in one expression. */
export const MAX_BREAKER_TERMS = 32;
/** Parentheses nested in one expression. */
export const MAX_BREAKER_NESTING = 8;

/**
 * Parses a circuit-breaker expression in the syntax Traefik uses, so annotations written for
 * Traefik Mesh keep working:
 *
 *   expr   := and ("||" and)*
 *   and    := term ("&&" term)*
 *   term   := "(" expr ")" | metric op number
 *   metric := NetworkErrorRatio() | LatencyAtQuantileMS(q) | ResponseCodeRatio(a, b, c, d)
 *   op     := > | >= | < | <= | == | !=
 *
 * Throws a `SyntaxError` whose message says what was expected and where. The expression is
 * evaluated on every request and kept in the config as a tree, so its size is bounded:
 * {@linkcode MAX_BREAKER_EXPRESSION_LENGTH} characters, {@linkcode MAX_BREAKER_TERMS}
 * comparisons, {@linkcode MAX_BREAKER_NESTING} levels of parentheses.
 *
 * @example
 * ```ts
 * parseBreakerExpression("NetworkErrorRatio() > 0.5 || LatencyAtQuantileMS(50) > 100");
 * ```
 */
export function parseBreakerExpression(text: string): BreakerExpr {
  if (text.length > MAX_BREAKER_EXPRESSION_LENGTH) {
    throw new SyntaxError(
      `the expression is ${text.length} characters, expected at most ${MAX_BREAKER_EXPRESSION_LENGTH}`,
    );
  }
  const tokens = tokenize(text);
  const terms = tokens.filter((t) => t === "&&" || t === "||").length + 1;
  if (terms > MAX_BREAKER_TERMS) {
    throw new SyntaxError(
      `the expression has ${terms} terms, expected at most ${MAX_BREAKER_TERMS}`,
    );
  }
  if (tokens.length === 0) throw new SyntaxError("the expression is empty");
  return new BreakerParser(tokens).parse();
}

const COMPARISONS = [">", ">=", "<", "<=", "==", "!="] as const;
type Comparison = typeof COMPARISONS[number];

/** A recursive-descent parser over the tokens of one expression, one method per rule. */
class BreakerParser {
  readonly #tokens: string[];
  #i = 0;
  #nesting = 0;

  constructor(tokens: string[]) {
    this.#tokens = tokens;
  }

  /** The whole expression; throws on tokens left over. */
  parse(): BreakerExpr {
    const expr = this.#or();
    const rest = this.#tokens[this.#i];
    if (rest !== undefined) throw new SyntaxError(`unexpected "${rest}" after the expression`);
    return expr;
  }

  #take(what: string): string {
    const t = this.#tokens[this.#i];
    if (t === undefined) throw new SyntaxError(`expected ${what} but the expression ended`);
    this.#i++;
    return t;
  }

  /** Takes the next token if it is `tok`. */
  #skip(tok: string): boolean {
    if (this.#tokens[this.#i] !== tok) return false;
    this.#i++;
    return true;
  }

  #expect(tok: string): void {
    const t = this.#take(`"${tok}"`);
    if (t !== tok) throw new SyntaxError(`expected "${tok}" but found "${t}"`);
  }

  #number(): number {
    const t = this.#take("a number");
    if (!/^-?\d+(\.\d+)?$/.test(t)) throw new SyntaxError(`expected a number but found "${t}"`);
    return Number(t);
  }

  #metric(): BreakerMetric {
    const name = this.#take("a metric");
    this.#expect("(");
    const m = this.#metricArgs(name);
    this.#expect(")");
    return m;
  }

  #metricArgs(name: string): BreakerMetric {
    switch (name) {
      case "NetworkErrorRatio":
        return { fn: name };
      case "LatencyAtQuantileMS": {
        const quantile = this.#number();
        if (quantile <= 0 || quantile >= 100) {
          throw new SyntaxError(`LatencyAtQuantileMS quantile ${quantile} is not in (0, 100)`);
        }
        return { fn: name, quantile };
      }
      case "ResponseCodeRatio": {
        const from = this.#number();
        this.#expect(",");
        const to = this.#number();
        this.#expect(",");
        const divFrom = this.#number();
        this.#expect(",");
        return { fn: name, from, to, divFrom, divTo: this.#number() };
      }
      default:
        throw new SyntaxError(
          `unknown metric "${name}", expected NetworkErrorRatio, LatencyAtQuantileMS or ResponseCodeRatio`,
        );
    }
  }

  #term(): BreakerExpr {
    if (this.#skip("(")) {
      if (++this.#nesting > MAX_BREAKER_NESTING) {
        throw new SyntaxError(`parentheses nest deeper than ${MAX_BREAKER_NESTING} levels`);
      }
      const e = this.#or();
      this.#expect(")");
      this.#nesting--;
      return e;
    }
    const metric = this.#metric();
    const op = this.#take("a comparison");
    if (!(COMPARISONS as readonly string[]).includes(op)) {
      throw new SyntaxError(`expected a comparison such as ">" but found "${op}"`);
    }
    return { op: op as Comparison, metric, value: this.#number() };
  }

  #and(): BreakerExpr {
    let left = this.#term();
    while (this.#skip("&&")) left = { op: "&&", left, right: this.#term() };
    return left;
  }

  #or(): BreakerExpr {
    let left = this.#and();
    while (this.#skip("||")) left = { op: "||", left, right: this.#and() };
    return left;
  }
}

function tokenize(text: string): string[] {
  const re = /\s*(\|\||&&|>=|<=|==|!=|[><(),]|-?\d+(?:\.\d+)?|[A-Za-z_][A-Za-z0-9_]*)/y;
  const out: string[] = [];
  let pos = 0;
  while (pos < text.length) {
    if (/^\s*$/.test(text.slice(pos))) break;
    re.lastIndex = pos;
    const m = re.exec(text);
    if (!m || m[1] === undefined) {
      throw new SyntaxError(`unexpected character "${text.slice(pos).trim()[0]}" at ${pos}`);
    }
    out.push(m[1]);
    pos = re.lastIndex;
  }
  return out;
}
