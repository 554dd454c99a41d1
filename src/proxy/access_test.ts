import assert from "node:assert/strict";
import type { HttpMatch, MeshAccessRule } from "../topology/mod.ts";
import { AccessPolicy, compileMatch, matches, type RequestInfo } from "./access.ts";
import { normalizeTarget } from "./normalize_path.ts";

/** A request as the entrypoints hand it to the policy: its path in normal form. */
function req(method: string, path: string, headers: Record<string, string> = {}): RequestInfo {
  const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  return { method, path: normalizeTarget(path), header: (name) => lower[name] ?? null };
}

function match(m: Partial<HttpMatch>): HttpMatch {
  return { name: "m", methods: [], pathRegex: "", headers: {}, ...m };
}

interface Case {
  name: string;
  match: Partial<HttpMatch>;
  request: RequestInfo;
  want: boolean;
}

// pathRegex: Traefik Mesh builds PathPrefix(`/{path:<regex>}`) with the leading "/" trimmed,
// so the regex is anchored at the start of the path only.
const PATH_CASES: Case[] = [
  {
    name: "the path itself",
    match: { pathRegex: "/metrics" },
    request: req("GET", "/metrics"),
    want: true,
  },
  {
    name: "a path below it",
    match: { pathRegex: "/metrics" },
    request: req("GET", "/metrics/x"),
    want: true,
  },
  {
    name: "a longer name (a prefix, not a segment)",
    match: { pathRegex: "/metrics" },
    request: req("GET", "/metricsfoo"),
    want: true,
  },
  {
    name: "not the path's middle",
    match: { pathRegex: "/metrics" },
    request: req("GET", "/x/metrics"),
    want: false,
  },
  { name: "another path", match: { pathRegex: "/api" }, request: req("GET", "/"), want: false },
  {
    name: "no leading slash reads the same",
    match: { pathRegex: "api" },
    request: req("GET", "/api/v1"),
    want: true,
  },
  {
    name: "a regular expression",
    match: { pathRegex: "/api/v[0-9]+/orders" },
    request: req("GET", "/api/v12/orders/7"),
    want: true,
  },
  {
    name: "a regular expression that does not match",
    match: { pathRegex: "/api/v[0-9]+/orders" },
    request: req("GET", "/api/vx/orders"),
    want: false,
  },
  {
    name: "/.* allows every path",
    match: { pathRegex: "/.*" },
    request: req("GET", "/"),
    want: true,
  },
  // The regex sits in a group after the "/", as Traefik Mesh's template puts it.
  {
    name: "an alternation is grouped after the slash",
    match: { pathRegex: "/a|/b" },
    request: req("GET", "/b"),
    want: false,
  },
  {
    name: "an alternation's first branch",
    match: { pathRegex: "/a|/b" },
    request: req("GET", "/a/x"),
    want: true,
  },
  {
    name: "empty pathRegex allows any path",
    match: {},
    request: req("GET", "/anything"),
    want: true,
  },
  // The path is compared in the normal form the entrypoint gives it (normalizeTarget), as a
  // normalizing backend sees it.
  {
    name: "dot segments cannot climb out of the prefix",
    match: { pathRegex: "/public" },
    request: req("GET", "/public/../admin"),
    want: false,
  },
  {
    name: "encoded dot segments neither",
    match: { pathRegex: "/public" },
    request: req("GET", "/public/%2e%2e/admin"),
    want: false,
  },
  {
    name: "dot segments that stay inside",
    match: { pathRegex: "/public" },
    request: req("GET", "/public/./a/../b"),
    want: true,
  },
  {
    name: "encoded unreserved characters are decoded",
    match: { pathRegex: "/api" },
    request: req("GET", "/%61pi"),
    want: true,
  },
];

// methods: none or "*" allows any; otherwise upper-cased names (Traefik's Method()).
const METHOD_CASES: Case[] = [
  { name: "no methods allows any", match: {}, request: req("DELETE", "/"), want: true },
  { name: "* allows any", match: { methods: ["*"] }, request: req("PATCH", "/"), want: true },
  {
    name: "* beside others allows any",
    match: { methods: ["GET", "*"] },
    request: req("POST", "/"),
    want: true,
  },
  {
    name: "a listed method",
    match: { methods: ["GET", "HEAD"] },
    request: req("HEAD", "/"),
    want: true,
  },
  {
    name: "an unlisted method",
    match: { methods: ["GET"] },
    request: req("POST", "/"),
    want: false,
  },
  {
    name: "listed lower-case, compared upper-case",
    match: { methods: ["get"] },
    request: req("GET", "/"),
    want: true,
  },
  {
    name: "the request's method is case-sensitive (RFC 9110 §9.1)",
    match: { methods: ["GET"] },
    request: req("get", "/"),
    want: false,
  },
];

// headers: unanchored regular expressions (Traefik's HeadersRegexp); names any case; all must
// match.
const HEADER_CASES: Case[] = [
  {
    name: "t|True matches true (unanchored)",
    match: { headers: { Authorized: "t|True" } },
    request: req("GET", "/", { Authorized: "true" }),
    want: true,
  },
  {
    name: "t|True does not match false",
    match: { headers: { Authorized: "t|True" } },
    request: req("GET", "/", { Authorized: "false" }),
    want: false,
  },
  {
    name: "a value containing the pattern",
    match: { headers: { "x-tenant": "acme" } },
    request: req("GET", "/", { "X-Tenant": "big-acme-co" }),
    want: true,
  },
  {
    name: "anchors the object writes are kept",
    match: { headers: { "x-tenant": "^acme$" } },
    request: req("GET", "/", { "x-tenant": "big-acme-co" }),
    want: false,
  },
  {
    name: "a missing header",
    match: { headers: { "x-tenant": ".*" } },
    request: req("GET", "/"),
    want: false,
  },
  {
    name: "the name in any case",
    match: { headers: { "X-TENANT": "a" } },
    request: req("GET", "/", { "x-tenant": "a" }),
    want: true,
  },
  {
    name: "every header must match",
    match: { headers: { a: "1", b: "2" } },
    request: req("GET", "/", { a: "1", b: "3" }),
    want: false,
  },
  {
    name: "path, method and headers together",
    match: { pathRegex: "/api", methods: ["GET"], headers: { a: "1" } },
    request: req("GET", "/api/x", { a: "1" }),
    want: true,
  },
];

for (
  const [group, cases] of [["path", PATH_CASES], ["method", METHOD_CASES], [
    "header",
    HEADER_CASES,
  ]] as const
) {
  for (const c of cases) {
    Deno.test(`matches() ${group}: ${c.name}`, () => {
      assert.equal(matches(compileMatch(match(c.match)), c.request), c.want);
    });
  }
}

function rule(r: Partial<MeshAccessRule>): MeshAccessRule {
  return {
    trafficTarget: "test/tt",
    destination: "test/server",
    sources: ["test/tool"],
    http: [],
    l4: false,
    ...r,
  };
}

const IDS = { "10.0.0.1": "test/tool", "10.0.0.2": "test/other" };

Deno.test("AccessPolicy.checkHttp() names the TrafficTarget whose rules do not match", () => {
  const p = new AccessPolicy('HTTP port 8080 of service "test/server"', [
    rule({ http: [match({ name: "api", pathRegex: "/api" })] }),
  ], IDS);
  assert.equal(p.checkHttp("10.0.0.1", req("GET", "/api/x")).allowed, true);
  const d = p.checkHttp("10.0.0.1", req("GET", "/"));
  assert.equal(d.allowed, false);
  assert.equal(
    !d.allowed && d.reason,
    'TrafficTarget "test/tt" names ServiceAccount "test/tool" as a source, but none of its ' +
      'rules matches GET / to HTTP port 8080 of service "test/server"',
  );
  const other = p.checkHttp("10.0.0.2", req("GET", "/api"));
  assert.match(
    !other.allowed ? other.reason : "",
    /^no TrafficTarget lets ServiceAccount "test\/other"/,
  );
});

Deno.test("AccessPolicy.checkL4() says a naming TrafficTarget lacks a TCPRoute rule", () => {
  const p = new AccessPolicy('TCP port 9000 of service "test/db"', [
    rule({ trafficTarget: "test/a" }),
    rule({ trafficTarget: "test/b" }),
  ], IDS);
  const d = p.checkL4("10.0.0.1");
  assert.equal(
    !d.allowed && d.reason,
    'TrafficTargets "test/a", "test/b" name ServiceAccount "test/tool" as a source, but no ' +
      'TCPRoute rule, so no connection to TCP port 9000 of service "test/db"',
  );
});
