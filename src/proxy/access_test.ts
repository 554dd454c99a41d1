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

/** One access check: a source, and a request (HTTP) or none (a TCP connection, a datagram). */
interface AccessCase {
  name: string;
  rules: MeshAccessRule[] | null;
  source: string;
  request: RequestInfo | null;
  /** The destinations allowed (sorted), or the reason refused, as a pattern. */
  want: string[] | RegExp;
}

// What the proxy sees of SMI access v1alpha2 (access.smi-spec.io), as the topology compiles
// each TrafficTarget into one MeshAccessRule per port it applies to. Where SMI is silent, the
// cases follow Traefik Mesh's reading (pkg/provider/rule.go), which users' objects were written
// against.
const ACCESS_CASES: AccessCase[] = [
  {
    // Without --acl, Traefik Mesh routes by Host alone: every source, every request.
    name: "ACL off allows every source, known or not",
    rules: null,
    source: "10.0.0.9",
    request: req("DELETE", "/admin"),
    want: [],
  },
  {
    // SMI: "access control is deny by default"; a TrafficTarget is what lets traffic in.
    name: "ACL on with no TrafficTarget for the port denies HTTP",
    rules: [],
    source: "10.0.0.1",
    request: req("GET", "/"),
    want: /^no TrafficTarget lets ServiceAccount "test\/tool" send GET \/ to/,
  },
  {
    name: "ACL on with no TrafficTarget for the port denies TCP",
    rules: [],
    source: "10.0.0.1",
    request: null,
    want: /^no TrafficTarget with a TCPRoute lets ServiceAccount "test\/tool" reach/,
  },
  {
    // SMI identifies a source by its ServiceAccount; meshd finds it from the connection's
    // source address only, never from a header the client sets.
    name:
      "TrafficTarget sources: an address that is no known Pod has no ServiceAccount and is denied",
    rules: [rule({ l4: true })],
    source: "10.0.0.9",
    request: req("GET", "/", { "x-forwarded-for": "10.0.0.1" }),
    want: /^source 10\.0\.0\.9 is not a known Pod/,
  },
  {
    name: "TrafficTarget sources: a ServiceAccount not listed is denied",
    rules: [rule({ l4: true })],
    source: "10.0.0.2",
    request: req("GET", "/"),
    want: /^no TrafficTarget lets ServiceAccount "test\/other"/,
  },
  {
    name: "TrafficTarget sources: a listed ServiceAccount reaches the destination's endpoints",
    rules: [rule({ http: [match({ pathRegex: "/api" })] })],
    source: "10.0.0.1",
    request: req("GET", "/api/orders"),
    want: ["test/server"],
  },
  {
    // SMI: an HTTPRouteGroup match holds when all its conditions do (pathRegex, methods,
    // headers); Traefik Mesh joins them with &&.
    name: "HTTPRouteGroup match: every condition of the match must hold",
    rules: [rule({ http: [match({ pathRegex: "/api", methods: ["POST"] })] })],
    source: "10.0.0.1",
    request: req("GET", "/api"),
    want: /TrafficTarget "test\/tt" names .* but none of its rules matches GET \/api/,
  },
  {
    // Traefik Mesh joins the matches of a target's rules with ||.
    name: "HTTPRouteGroup matches: any one match of the rules allows the request",
    rules: [rule({ http: [match({ pathRegex: "/a" }), match({ methods: ["HEAD"] })] })],
    source: "10.0.0.1",
    request: req("HEAD", "/b"),
    want: ["test/server"],
  },
  {
    // Traefik Mesh builds PathPrefix(`/{path:<regex>}`): anchored at the start only.
    name: "HTTPRouteGroup pathRegex anchors at the start of the path, not at its end",
    rules: [rule({ http: [match({ pathRegex: "/api" })] })],
    source: "10.0.0.1",
    request: req("GET", "/api-internal/keys"),
    want: ["test/server"],
  },
  {
    // The path is matched in normal form, the one the backend serves.
    name: "HTTPRouteGroup pathRegex is matched against the path with dot segments removed",
    rules: [rule({ http: [match({ pathRegex: "/public" })] })],
    source: "10.0.0.1",
    request: req("GET", "/public/../admin"),
    want: /none of its rules matches GET \/admin/,
  },
  {
    // SMI v1alpha2 requires rules; Traefik Mesh routes a target without them by Host alone,
    // and the topology compiles it to one match without conditions.
    name: "TrafficTarget with no rules allows any HTTP request (as Traefik Mesh reads it)",
    rules: [rule({ http: [match({ name: "(no rules)" })] })],
    source: "10.0.0.1",
    request: req("PUT", "/anything"),
    want: ["test/server"],
  },
  {
    name: "TrafficTarget with no rules opens no TCP connection",
    rules: [rule({ http: [match({ name: "(no rules)" })] })],
    source: "10.0.0.1",
    request: null,
    want: /names ServiceAccount "test\/tool" as a source, but no TCPRoute rule/,
  },
  {
    name: "TCPRoute rule allows whole connections",
    rules: [rule({ l4: true })],
    source: "10.0.0.1",
    request: null,
    want: ["test/server"],
  },
  {
    // A TCPRoute says nothing of requests: the connection, and all it carries, is allowed.
    name: "TCPRoute rule allows any HTTP request on an HTTP port",
    rules: [rule({ l4: true })],
    source: "10.0.0.1",
    request: req("POST", "/admin"),
    want: ["test/server"],
  },
  {
    // SMI: the destination is the ServiceAccount whose Pods may be reached; a source lets in
    // by one target reaches that target's Pods, not the others behind the same port.
    name: "TrafficTarget destination: only the ServiceAccounts whose rules match are reachable",
    rules: [
      rule({ trafficTarget: "test/v1", destination: "test/v1", http: [match({ pathRegex: "/" })] }),
      rule({
        trafficTarget: "test/v2",
        destination: "test/v2",
        http: [match({ pathRegex: "/v2" })],
      }),
      rule({ trafficTarget: "test/v3", destination: "test/v3", sources: ["test/other"], l4: true }),
    ],
    source: "10.0.0.1",
    request: req("GET", "/v1"),
    want: ["test/v1"],
  },
  {
    name: "TrafficTargets add up: one that matches is enough",
    rules: [
      rule({ trafficTarget: "test/a", http: [match({ methods: ["POST"] })] }),
      rule({ trafficTarget: "test/b", destination: "test/b", http: [match({ methods: ["GET"] })] }),
    ],
    source: "10.0.0.1",
    request: req("GET", "/"),
    want: ["test/b"],
  },
];

for (const c of ACCESS_CASES) {
  const check = c.request ? "checkHttp" : "checkL4";
  Deno.test(`AccessPolicy.${check}() ${c.name}`, () => {
    const p = new AccessPolicy('port 80 of service "test/server"', c.rules, IDS);
    const d = c.request ? p.checkHttp(c.source, c.request) : p.checkL4(c.source);
    if (Array.isArray(c.want)) {
      assert.ok(d.allowed, `refused: ${!d.allowed && d.reason}`);
      assert.deepEqual([...d.destinations].sort(), c.want);
    } else {
      assert.ok(!d.allowed, "allowed");
      assert.match(d.reason, c.want);
    }
  });
}

Deno.test("AccessPolicy lets in an address Pods of several ServiceAccounts share when any of them may come in, to what any may reach", () => {
  const ids = { "192.0.2.11": "test/metrics,test/tool", "10.0.0.5": "test/metrics" };
  const rule = (sources: string[], l4: boolean): MeshAccessRule => ({
    trafficTarget: "test/tt",
    destination: "test/server",
    sources,
    http: [match({ pathRegex: "/api" })],
    l4,
  });
  const p = new AccessPolicy('port 80 of service "test/server"', [rule(["test/tool"], false)], ids);
  const allowed = p.checkHttp("192.0.2.11", req("GET", "/api/x"));
  assert.deepEqual(allowed, { allowed: true, destinations: new Set(["test/server"]) });
  // Neither may: both reasons, and that the address is shared.
  const denied = p.checkHttp("192.0.2.11", req("GET", "/other"));
  assert.equal(denied.allowed, false);
  assert.match(
    (denied as { reason: string }).reason,
    /^Pods of 2 ServiceAccounts share 192\.0\.2\.11, and none may: .*"test\/metrics".*; .*"test\/tool"/,
  );
  // The address of a Pod of "metrics" alone is not let in.
  assert.equal(p.checkHttp("10.0.0.5", req("GET", "/api/x")).allowed, false);
  const tcp = new AccessPolicy('port 9000 of service "test/db"', [rule(["test/tool"], true)], ids);
  assert.equal(tcp.checkL4("192.0.2.11").allowed, true);
  assert.equal(tcp.checkL4("10.0.0.5").allowed, false);
});
