import assert from "node:assert/strict";
import { Registry } from "../observability/mod.ts";
import { parsePromText, select, valueOf } from "./prom_text.ts";

Deno.test("parsePromText() reads what meshd's registry renders, labels unescaped", () => {
  const r = new Registry();
  r.counter("meshd_x_total", "X.", ["service", "note"]).with("shop/web", 'a "q"\\ b\nc').inc(3);
  r.gauge("meshd_config_version", "V.", []).with().set(42);
  r.histogram("meshd_d_seconds", "D.", ["service"], [0.1, 1]).with("a").observe(0.5);
  const s = parsePromText(r.render());
  assert.deepEqual(select(s, "meshd_x_total"), [{
    name: "meshd_x_total",
    labels: { service: "shop/web", note: 'a "q"\\ b\nc' },
    value: 3,
  }]);
  assert.equal(valueOf(s, "meshd_config_version"), 42);
  assert.deepEqual(
    select(s, "meshd_d_seconds_bucket").map((b) => [b.labels["le"], b.value]),
    [["0.1", 0], ["1", 1], ["+Inf", 1]],
  );
  assert.equal(valueOf(s, "meshd_d_seconds_sum", { service: "a" }), 0.5);
});

Deno.test("parsePromText() skips comments, blank and broken lines, keeps the rest", () => {
  const s = parsePromText([
    "# HELP a A.",
    "# TYPE a counter",
    "",
    "a 1",
    'b{x="1",} 2 1700000000000',
    "c{x=1} 3",
    'd{x="unterminated} 4',
    "e notanumber",
    "f +Inf",
    "g NaN",
  ].join("\n"));
  assert.deepEqual(s.map((x) => [x.name, x.value]), [["a", 1], ["b", 2], ["f", Infinity], [
    "g",
    NaN,
  ]]);
  assert.deepEqual(s[1]!.labels, { x: "1" });
});

Deno.test("valueOf() matches on the labels given and is undefined without a match", () => {
  const s = parsePromText('u{kind="failed"} 2\nu{kind="delta"} 5\n');
  assert.equal(valueOf(s, "u", { kind: "delta" }), 5);
  assert.equal(valueOf(s, "u", { kind: "snapshot" }), undefined);
  assert.equal(valueOf(s, "v"), undefined);
});
