import assert from "node:assert/strict";
import { ANNOTATION_PREFIXES, parseServiceAnnotations } from "./annotations.ts";

const WHAT = 'Service "shop/web"';

Deno.test("parseServiceAnnotations() reads every annotation under each prefix", () => {
  for (const prefix of ANNOTATION_PREFIXES) {
    const r = parseServiceAnnotations({
      [`${prefix}traffic-type`]: "TCP",
      [`${prefix}scheme`]: "h2c",
      [`${prefix}retry-attempts`]: "2",
      [`${prefix}circuit-breaker-expression`]: "NetworkErrorRatio() > 0.5",
      [`${prefix}ratelimit-average`]: "50",
      [`${prefix}ratelimit-burst`]: "75",
      [`${prefix}access-log`]: "True",
    }, WHAT);
    assert.ok(r.ok, prefix);
    assert.deepEqual(r.options, {
      trafficType: "tcp",
      scheme: "h2c",
      retryAttempts: 2,
      circuitBreaker: {
        expression: "NetworkErrorRatio() > 0.5",
        expr: { op: ">", metric: { fn: "NetworkErrorRatio" }, value: 0.5 },
      },
      rateLimit: { average: 50, burst: 75 },
      accessLog: true,
    }, prefix);
  }
});

Deno.test("parseServiceAnnotations() prefers meshd.io/, then mesh.traefik.io/", () => {
  const r = parseServiceAnnotations({
    "maesh.containo.us/scheme": "https",
    "mesh.traefik.io/scheme": "h2c",
    "maesh.containo.us/retry-attempts": "9",
    "mesh.traefik.io/retry-attempts": "3",
    "meshd.io/retry-attempts": "1",
  }, WHAT);
  assert.ok(r.ok);
  assert.equal(r.options.scheme, "h2c");
  assert.equal(r.options.retryAttempts, 1);
});

Deno.test("parseServiceAnnotations() defaults burst to 1 and ignores unrelated keys", () => {
  const r = parseServiceAnnotations({
    "meshd.io/ratelimit-average": "10",
    "meshd.io/future-knob": "x",
    "example.com/traffic-type": "nonsense",
  }, WHAT);
  assert.ok(r.ok);
  assert.deepEqual(r.options, { rateLimit: { average: 10, burst: 1 } });
});

Deno.test("parseServiceAnnotations() rejects bad values, naming key, object and value", () => {
  const cases: [Record<string, string>, string][] = [
    [
      { "meshd.io/traffic-type": "sctp" },
      'Cannot parse annotation "meshd.io/traffic-type" on Service "shop/web": value is "sctp", expected http, tcp or udp',
    ],
    [
      { "mesh.traefik.io/scheme": "ftp" },
      'Cannot parse annotation "mesh.traefik.io/scheme" on Service "shop/web": value is "ftp", expected http, https or h2c',
    ],
    [
      { "meshd.io/retry-attempts": "1.5" },
      'Cannot parse annotation "meshd.io/retry-attempts" on Service "shop/web": value is "1.5", expected an integer from 0 to 10',
    ],
    [
      { "meshd.io/retry-attempts": "99999999999999999999" },
      'Cannot parse annotation "meshd.io/retry-attempts" on Service "shop/web": value is "99999999999999999999", expected an integer from 0 to 10',
    ],
    [
      // Each retry loads a backend that fails already: at most 10.
      { "meshd.io/retry-attempts": "1000000" },
      'Cannot parse annotation "meshd.io/retry-attempts" on Service "shop/web": value is "1000000", expected an integer from 0 to 10',
    ],
    [
      { "meshd.io/retry-attempts": "11" },
      'Cannot parse annotation "meshd.io/retry-attempts" on Service "shop/web": value is "11", expected an integer from 0 to 10',
    ],
    [
      { "maesh.containo.us/ratelimit-average": "0" },
      'Cannot parse annotation "maesh.containo.us/ratelimit-average" on Service "shop/web": value is "0", expected an integer >= 1',
    ],
    [
      { "mesh.traefik.io/access-log": "yes" },
      'Cannot parse annotation "mesh.traefik.io/access-log" on Service "shop/web": value is "yes", expected "true" or "false"',
    ],
    [
      { "meshd.io/ratelimit-burst": "5" },
      'Cannot use annotation "meshd.io/ratelimit-burst" on Service "shop/web": ratelimit-burst needs ratelimit-average',
    ],
  ];
  for (const [annotations, message] of cases) {
    const r = parseServiceAnnotations(annotations, WHAT);
    assert.equal(r.ok, false, message);
    if (!r.ok) {
      assert.equal(r.problems.length, 1);
      assert.equal(r.problems[0]!.message, message);
      assert.equal(r.problems[0]!.key, Object.keys(annotations)[0]);
    }
  }
  const breaker = parseServiceAnnotations(
    { "meshd.io/circuit-breaker-expression": "Latency() > 1" },
    WHAT,
  );
  assert.ok(!breaker.ok);
  assert.match(
    breaker.problems[0]!.message,
    /expected a circuit-breaker expression \(unknown metric "Latency"/,
  );
});

Deno.test("parseServiceAnnotations() reports every bad annotation at once", () => {
  const r = parseServiceAnnotations({
    "meshd.io/traffic-type": "x",
    "meshd.io/scheme": "y",
  }, WHAT);
  assert.ok(!r.ok);
  assert.deepEqual(r.problems.map((p) => p.key), ["meshd.io/traffic-type", "meshd.io/scheme"]);
});

Deno.test("parseServiceAnnotations() reads access-log false, meshd.io/ over the aliases", () => {
  const r = parseServiceAnnotations({
    "mesh.traefik.io/access-log": "true",
    "meshd.io/access-log": "false",
  }, WHAT);
  assert.ok(r.ok);
  assert.deepEqual(r.options, { accessLog: false });
});
