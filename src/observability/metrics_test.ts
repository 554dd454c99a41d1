import assert from "node:assert/strict";
import { Registry, renderSnapshots } from "./metrics.ts";

Deno.test("Registry.render() writes counters with escaped labels in a stable order", () => {
  const r = new Registry();
  const c = r.counter("meshd_test_total", "A test\ncounter.", ["service", "code"]);
  c.with("shop/web", "2xx").inc();
  c.with("shop/web", "2xx").inc(2);
  c.with('we"ird\\', "5xx").inc();
  assert.equal(
    r.render(),
    [
      "# HELP meshd_test_total A test\\ncounter.",
      "# TYPE meshd_test_total counter",
      'meshd_test_total{service="shop/web",code="2xx"} 3',
      'meshd_test_total{service="we\\"ird\\\\",code="5xx"} 1',
      "",
    ].join("\n"),
  );
});

Deno.test("Histogram buckets are cumulative and end with +Inf, sum and count", () => {
  const r = new Registry();
  const h = r.histogram("meshd_latency_seconds", "Latency.", ["service"], [0.1, 1]);
  for (const v of [0.05, 0.1, 0.5, 3]) h.with("a").observe(v);
  const lines = r.render().split("\n");
  assert.deepEqual(lines.slice(2, 7), [
    'meshd_latency_seconds_bucket{service="a",le="0.1"} 2',
    'meshd_latency_seconds_bucket{service="a",le="1"} 3',
    'meshd_latency_seconds_bucket{service="a",le="+Inf"} 4',
    'meshd_latency_seconds_sum{service="a"} 3.65',
    'meshd_latency_seconds_count{service="a"} 4',
  ]);
});

Deno.test("Gauge and collected gauges render their current value", () => {
  const r = new Registry();
  const g = r.gauge("meshd_open", "Open.", []);
  g.with().inc(3);
  g.with().dec();
  let version = 7;
  r.collect("meshd_config_version", "Version.", [], () => [[[], version]]);
  version = 8;
  const text = r.render();
  assert.match(text, /^meshd_open 2$/m);
  assert.match(text, /^meshd_config_version 8$/m);
});

Deno.test("Registry rejects bad names, duplicate families and wrong label counts", () => {
  const r = new Registry();
  assert.throws(() => r.counter("bad-name", "x"), /Invalid metric name "bad-name"/);
  assert.throws(() => r.counter("ok_total", "x", ["le"]), /Invalid label name "le"/);
  const c = r.counter("ok_total", "x", ["a"]);
  assert.throws(() => r.counter("ok_total", "x"), /registered twice/);
  assert.throws(() => c.with("1", "2"), /takes 1 label value\(s\), got 2/);
  assert.throws(() => r.histogram("h", "x", [], [1, 1]), /must grow strictly/);
});

Deno.test("Counter.retain() drops the children of services that are gone", () => {
  const r = new Registry();
  const c = r.counter("meshd_x_total", "x", ["service"]);
  c.with("a").inc();
  c.with("b").inc();
  c.retain((v) => v[0] === "b");
  assert.doesNotMatch(r.render(), /service="a"/);
  assert.match(r.render(), /service="b"} 1/);
});

Deno.test("retain() hands each child's label values back as they were given", () => {
  const r = new Registry();
  const c = r.counter("meshd_x_total", "x", ["service", "code"]);
  const none = r.gauge("meshd_y", "y");
  c.with("shop/a:80", "2xx").inc();
  c.with("", 'we"ird\n').inc();
  none.with().set(1);
  const seen: string[][] = [];
  c.retain((v) => (seen.push([...v]), true));
  none.retain((v) => (seen.push([...v]), true));
  assert.deepEqual(seen.sort(), [[], ["", 'we"ird\n'], ["shop/a:80", "2xx"]].sort());
  assert.match(r.render(), /meshd_x_total\{service="",code="we\\"ird\\n"\} 1/);
});

Deno.test("renderSnapshots() shows each series once, summed over the registries", () => {
  const make = (n: number, state: number) => {
    const r = new Registry();
    const c = r.counter("meshd_requests_total", "Requests.", ["service"]);
    c.with("a/web").inc(n);
    if (n > 1) c.with("b/db").inc(1);
    const h = r.histogram("meshd_request_duration_seconds", "Time.", ["service"], [0.1, 1]);
    h.with("a/web").observe(0.05 * n);
    r.collect("meshd_circuit_breaker_state", "State.", ["service"], () => [[["a/web"], state]], {
      merge: "max",
    });
    r.collect("meshd_open", "Open.", [], () => [[[], n]]);
    return r;
  };
  const a = make(1, 2);
  const b = make(3, 0);
  // Through structured cloning, as from a worker.
  const text = renderSnapshots([structuredClone(a.snapshot()), structuredClone(b.snapshot())]);
  assert.equal(
    text,
    `# HELP meshd_requests_total Requests.
# TYPE meshd_requests_total counter
meshd_requests_total{service="a/web"} 4
meshd_requests_total{service="b/db"} 1
# HELP meshd_request_duration_seconds Time.
# TYPE meshd_request_duration_seconds histogram
meshd_request_duration_seconds_bucket{service="a/web",le="0.1"} 1
meshd_request_duration_seconds_bucket{service="a/web",le="1"} 2
meshd_request_duration_seconds_bucket{service="a/web",le="+Inf"} 2
meshd_request_duration_seconds_sum{service="a/web"} 0.2
meshd_request_duration_seconds_count{service="a/web"} 2
# HELP meshd_circuit_breaker_state State.
# TYPE meshd_circuit_breaker_state gauge
meshd_circuit_breaker_state{service="a/web"} 2
# HELP meshd_open Open.
# TYPE meshd_open gauge
meshd_open 4
`,
  );
  // One registry renders as it does itself.
  assert.equal(renderSnapshots([a.snapshot()]), a.render());
  assert.equal(renderSnapshots([]), "");
});
