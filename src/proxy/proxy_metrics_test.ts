import assert from "node:assert/strict";
import { ProxyMetrics } from "./proxy_metrics.ts";

const series = (m: ProxyMetrics, name: string) =>
  m.registry.render().split("\n").filter((l) => l.startsWith(name));

Deno.test("ProxyMetrics.route() makes a port's series at their first use", () => {
  const m = new ProxyMetrics();
  const web = m.route("default/web", 80, "http");
  m.route("default/idle", 80, "http");
  assert.deepEqual(series(m, "meshd_requests_total{"), [], "no traffic, no series");
  assert.deepEqual(series(m, "meshd_http_responses_total{"), []);
  web.requests.inc();
  web.responses[2]!.inc();
  assert.deepEqual(series(m, "meshd_requests_total{"), [
    'meshd_requests_total{service="default/web",port="80",protocol="http"} 1',
  ]);
  assert.equal(series(m, "meshd_http_responses_total{").length, 5, "the five classes together");
  // The port's other series came with its first request, at 0: a rate of them reads 0.
  for (
    const name of [
      "meshd_received_bytes_total{",
      "meshd_sent_bytes_total{",
      "meshd_retries_total{",
      "meshd_open_connections{",
      "meshd_request_duration_seconds_count{",
    ]
  ) {
    assert.deepEqual(
      series(m, name).map((l) => l.replace(/\{.*\}/, "")),
      [`${name.slice(0, -1)} 0`],
      name,
    );
  }
  assert.equal(m.route("default/web", 80, "http"), web, "the same object while the port is");
});

Deno.test("ProxyMetrics.forget() drops a port's series, and what is counted on it later", () => {
  const m = new ProxyMetrics();
  const web = m.route("default/web", 80, "http");
  web.open.inc();
  web.denied("acl").inc();
  m.forget(ProxyMetrics.key("default/web", 80, "http"));
  assert.deepEqual(series(m, "meshd_open_connections{"), []);
  assert.deepEqual(series(m, "meshd_denied_total{"), []);
  // A request still in flight on the removed port ends, and counts into no series.
  web.open.dec();
  web.requests.inc();
  assert.deepEqual(series(m, "meshd_open_connections{"), []);
  assert.deepEqual(series(m, "meshd_requests_total{"), []);
  // The port back in a later config starts afresh.
  m.route("default/web", 80, "http").requests.inc();
  assert.equal(series(m, "meshd_requests_total{").length, 1);
});
