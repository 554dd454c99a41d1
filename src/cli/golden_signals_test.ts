import assert from "node:assert/strict";
import { Registry } from "../observability/mod.ts";
import { ProxyMetrics } from "../proxy/mod.ts";
import {
  bucketQuantile,
  counterIncrease,
  formatSeconds,
  formatStatTable,
  goldenSignals,
} from "./golden_signals.ts";
import { parsePromText } from "./prom_text.ts";

/** A node's proxy metrics, as meshd renders them, with `f` applied to its routes. */
function node() {
  const m = new ProxyMetrics(new Registry());
  const text = () => parsePromText(m.registry.render());
  return { m, text };
}

function http(m: ProxyMetrics, service: string, status: number, seconds: number) {
  const r = m.route(service, 80, "http");
  r.requests.inc();
  r.responses[Math.floor(status / 100)]!.inc();
  r.duration.observe(seconds);
}

Deno.test("goldenSignals() sums two nodes' increases over the window per service port", () => {
  const a = node();
  const b = node();
  http(a.m, "shop/web", 200, 0.001); // before the window: not counted
  const before = [a.text(), b.text()];
  for (let i = 0; i < 90; i++) http(a.m, "shop/web", 200, 0.002);
  for (let i = 0; i < 5; i++) http(b.m, "shop/web", 503, 0.2);
  for (let i = 0; i < 5; i++) http(b.m, "shop/web", 404, 0.004);
  const tcp = b.m.route("shop/db", 5432, "tcp");
  tcp.requests.inc(4);
  const [db, row] = goldenSignals([
    { before: before[0]!, after: a.text() },
    { before: before[1]!, after: b.text() },
  ], 10);
  assert.equal(db!.service, "shop/db");
  assert.equal(db!.requests, 4);
  assert.equal(db!.successRate, null, "TCP has no responses to judge");
  assert.equal(db!.p50, null);
  assert.equal(row!.service, "shop/web");
  assert.equal(row!.requests, 100);
  assert.equal(row!.rps, 10);
  assert.equal(row!.nodes, 2);
  // 404 is a client's error, not the service's: only 5xx count against success
  assert.equal(row!.successRate, 0.95);
  // 90 in (1ms, 2.5ms], 5 in (2.5ms, 5ms], 5 in (100ms, 250ms]
  assert.ok(row!.p50! > 0.001 && row!.p50! <= 0.0025, `p50 ${row!.p50}`);
  assert.ok(row!.p95! > 0.0025 && row!.p95! <= 0.005, `p95 ${row!.p95}`);
  assert.ok(row!.p99! > 0.1 && row!.p99! <= 0.25, `p99 ${row!.p99}`);
});

Deno.test("counterIncrease() takes a counter that went down as reset (meshd restarted)", () => {
  const before = parsePromText('meshd_requests_total{service="a",port="80",protocol="http"} 500\n');
  const after = parsePromText(
    'meshd_requests_total{service="a",port="80",protocol="http"} 7\n' +
      'meshd_requests_total{service="b",port="80",protocol="http"} 3\n',
  );
  assert.deepEqual(
    counterIncrease({ before, after }, ["meshd_requests_total"]).map((s) => [
      s.labels["service"],
      s.value,
    ]),
    [["a", 7], ["b", 3]],
  );
});

Deno.test("bucketQuantile() interpolates in its bucket as histogram_quantile() does", () => {
  const b = new Map([[0.1, 50], [0.2, 100], [Infinity, 100]]);
  assert.equal(bucketQuantile(0.5, b), 0.1);
  assert.ok(Math.abs(bucketQuantile(0.75, b)! - 0.15) < 1e-12);
  assert.ok(Math.abs(bucketQuantile(0.25, b)! - 0.05) < 1e-12, "from 0 in the first bucket");
  // in the +Inf bucket: the highest finite bound
  assert.equal(bucketQuantile(0.99, new Map([[1, 1], [Infinity, 10]])), 1);
  assert.equal(bucketQuantile(0.5, new Map([[1, 0], [Infinity, 0]])), null);
  assert.equal(bucketQuantile(0.5, new Map()), null);
});

Deno.test("formatStatTable() aligns one row per service port and says when there is none", () => {
  const out = formatStatTable([{
    service: "shop/web",
    port: 80,
    protocol: "http",
    requests: 300,
    rps: 10,
    successRate: 0.995,
    p50: 0.0012,
    p95: 0.05,
    p99: 1.5,
    nodes: 2,
  }, {
    service: "shop/db",
    port: 5432,
    protocol: "tcp",
    requests: 0,
    rps: 0,
    successRate: null,
    p50: null,
    p95: null,
    p99: null,
    nodes: 0,
  }], 30);
  assert.equal(
    out,
    [
      "SERVICE   PORT  PROTO  SUCCESS   RPS    P50   P95    P99  NODES",
      "shop/web  80    http    99.50%  10.0  1.2ms  50ms  1.50s  2",
      "shop/db   5432  tcp          -   0.0      -     -      -  0",
      "",
    ].join("\n"),
  );
  assert.equal(formatStatTable([], 30), "No service traffic metrics on any node (window 30s)\n");
  assert.equal(formatSeconds(0.0004), "0.4ms");
});
