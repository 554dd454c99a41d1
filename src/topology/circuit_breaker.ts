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
  let nesting = 0;
  let i = 0;
  const peek = (): string | undefined => tokens[i];
  const take = (what: string): string => {
    const t = tokens[i];
    if (t === undefined) throw new SyntaxError(`expected ${what} but the expression ended`);
    i++;
    return t;
  };
  const expect = (tok: string): void => {
    const t = take(`"${tok}"`);
    if (t !== tok) throw new SyntaxError(`expected "${tok}" but found "${t}"`);
  };
  const number = (): number => {
    const t = take("a number");
    if (!/^-?\d+(\.\d+)?$/.test(t)) throw new SyntaxError(`expected a number but found "${t}"`);
    return Number(t);
  };
  const metric = (): BreakerMetric => {
    const name = take("a metric");
    expect("(");
    let m: BreakerMetric;
    switch (name) {
      case "NetworkErrorRatio":
        m = { fn: name };
        break;
      case "LatencyAtQuantileMS": {
        const quantile = number();
        if (quantile <= 0 || quantile >= 100) {
          throw new SyntaxError(`LatencyAtQuantileMS quantile ${quantile} is not in (0, 100)`);
        }
        m = { fn: name, quantile };
        break;
      }
      case "ResponseCodeRatio": {
        const from = number();
        expect(",");
        const to = number();
        expect(",");
        const divFrom = number();
        expect(",");
        const divTo = number();
        m = { fn: name, from, to, divFrom, divTo };
        break;
      }
      default:
        throw new SyntaxError(
          `unknown metric "${name}", expected NetworkErrorRatio, LatencyAtQuantileMS or ResponseCodeRatio`,
        );
    }
    expect(")");
    return m;
  };
  const term = (): BreakerExpr => {
    if (peek() === "(") {
      i++;
      if (++nesting > MAX_BREAKER_NESTING) {
        throw new SyntaxError(
          `parentheses nest deeper than ${MAX_BREAKER_NESTING} levels`,
        );
      }
      const e = or();
      expect(")");
      nesting--;
      return e;
    }
    const m = metric();
    const op = take("a comparison");
    if (![">", ">=", "<", "<=", "==", "!="].includes(op)) {
      throw new SyntaxError(`expected a comparison such as ">" but found "${op}"`);
    }
    return { op: op as ">" | ">=" | "<" | "<=" | "==" | "!=", metric: m, value: number() };
  };
  const and = (): BreakerExpr => {
    let left = term();
    while (peek() === "&&") {
      i++;
      left = { op: "&&", left, right: term() };
    }
    return left;
  };
  const or = (): BreakerExpr => {
    let left = and();
    while (peek() === "||") {
      i++;
      left = { op: "||", left, right: and() };
    }
    return left;
  };
  if (tokens.length === 0) throw new SyntaxError("the expression is empty");
  const expr = or();
  if (i < tokens.length) throw new SyntaxError(`unexpected "${tokens[i]}" after the expression`);
  return expr;
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
