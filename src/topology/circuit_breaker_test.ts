import assert from "node:assert/strict";
import { parseBreakerExpression } from "./circuit_breaker.ts";

Deno.test("parseBreakerExpression() reads each metric Traefik defines", () => {
  assert.deepEqual(parseBreakerExpression("NetworkErrorRatio() > 0.5"), {
    op: ">",
    metric: { fn: "NetworkErrorRatio" },
    value: 0.5,
  });
  assert.deepEqual(parseBreakerExpression("LatencyAtQuantileMS(50.0) >= 100"), {
    op: ">=",
    metric: { fn: "LatencyAtQuantileMS", quantile: 50 },
    value: 100,
  });
  assert.deepEqual(parseBreakerExpression("ResponseCodeRatio(500, 600, 0, 600) > 0.25"), {
    op: ">",
    metric: { fn: "ResponseCodeRatio", from: 500, to: 600, divFrom: 0, divTo: 600 },
    value: 0.25,
  });
});

Deno.test("parseBreakerExpression() binds && tighter than || and honours parentheses", () => {
  const e = parseBreakerExpression(
    "NetworkErrorRatio() > 0.1 || LatencyAtQuantileMS(99) > 500 && NetworkErrorRatio() < 0.9",
  );
  assert.equal(e.op, "||");
  assert.ok("right" in e && e.right.op === "&&");
  const p = parseBreakerExpression(
    "(NetworkErrorRatio() > 0.1 || LatencyAtQuantileMS(99) > 500) && NetworkErrorRatio() != 1",
  );
  assert.equal(p.op, "&&");
  assert.ok("left" in p && p.left.op === "||");
});

Deno.test("parseBreakerExpression() says what it expected in a bad expression", () => {
  const cases: [string, RegExp][] = [
    ["", /the expression is empty/],
    ["NetworkErrorRatio() >", /expected a number but the expression ended/],
    ["NetworkErrorRatio() > abc", /expected a number but found "abc"/],
    ["ErrorRate() > 0.5", /unknown metric "ErrorRate"/],
    ["NetworkErrorRatio() > 0.5 &&", /expected a metric but the expression ended/],
    ["(NetworkErrorRatio() > 0.5", /expected "\)" but the expression ended/],
    ["NetworkErrorRatio() > 0.5 extra", /unexpected "extra" after the expression/],
    ["ResponseCodeRatio(500, 600) > 0.1", /expected "," but found "\)"/],
  ];
  for (const [text, re] of cases) {
    assert.throws(() => parseBreakerExpression(text), (e: unknown) => {
      assert.ok(e instanceof SyntaxError, `${text}: ${e}`);
      assert.match(e.message, re, text);
      return true;
    });
  }
});
