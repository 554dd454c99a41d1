/**
 * Access control by path through meshd, against a backend that reads the path as common
 * servers do. The ACL lets the client reach `/public(/.*)?` only; a request whose path the ACL
 * reads as under `/public` must not reach the backend in a form that a server resolves to
 * somewhere else: `/public/../admin` (RFC 3986 §5.2.4 dot segments), `%2e%2e` (WHATWG URL,
 * as `Deno.serve` and Node read it, takes `%2e` for a dot), a backslash (WHATWG URL takes it
 * for `/`), an encoded slash (servers that decode before they resolve), `..;` (servers that
 * strip path parameters, such as Tomcat).
 */
import assert from "node:assert/strict";
import { CLIENT_POD, H2_HOST, h2Request, HOST, send, startEnv } from "./_smuggling_env.ts";

/** The ACL's rule for the client, as the env sets it. */
const ALLOWED = /^\/public(\/.*)?$/;

/**
 * The paths a backend may take `target` to mean: as a WHATWG URL (Deno, Node, browsers), and
 * as a lenient server that decodes every escape, takes `\` for `/` and drops `;` parameters of
 * each segment before it resolves dot segments.
 */
function readings(target: string): string[] {
  const path = target.split("?")[0]!;
  const whatwg = new URL(path, "http://backend").pathname;
  let lenient = path;
  try {
    lenient = decodeURIComponent(lenient);
  } catch { /* a bad escape stays */ }
  lenient = lenient.replaceAll("\\", "/").split("/").map((s) => s.replace(/;.*$/, "")).join("/");
  return [whatwg, new URL(lenient.replaceAll("%", "%25"), "http://backend").pathname];
}

/** Request targets whose path the ACL might read as under /public. */
const ATTACKS = [
  "/public/../admin",
  "/public/./../admin",
  "/public/%2e%2e/admin",
  "/public/%2E%2e/admin",
  "/public/.%2e/admin",
  "/public/%2e./admin?x=1",
  "/public/..\\admin",
  "/public\\..\\admin",
  "/public/..%2Fadmin",
  "/public/..%2fadmin",
  "/public/..%5Cadmin",
  "/public/..;/admin",
  "/public/.;x/..;y/admin",
  "/public/%2e%2e;/admin",
  "/public/..%3B/admin",
  "http://web.default.mesh/public/../admin",
];

Deno.test({
  name: "meshd's HTTP entrypoint never forwards a path a backend resolves outside the ACL's rule",
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  const env = await startEnv();
  try {
    await t.step("the rule holds: /admin is 403, /public/a 200", async () => {
      const deny = await send(
        CLIENT_POD,
        env.http,
        `GET /admin HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`,
      );
      assert.equal(deny.answers[0]?.status, 403, deny.raw.slice(0, 200));
    });
    for (const target of ATTACKS) {
      await t.step(`GET ${target} is refused or forwarded with a path under /public`, async () => {
        const before = env.backend.requests.length;
        const r = await send(
          CLIENT_POD,
          env.http,
          `GET ${target} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`,
        );
        const status = r.answers[0]?.status ?? 0;
        assert.ok([200, 400, 403].includes(status), `status ${status}: ${r.raw.slice(0, 200)}`);
        for (const seen of env.backend.requests.slice(before)) {
          const forwarded = seen.line.split(" ")[1]!;
          for (const path of readings(forwarded)) {
            assert.match(path, ALLOWED, `the backend got "${seen.line}", read as "${path}"`);
          }
        }
      });
    }
    await t.step("dot segments that stay under /public are resolved, not refused", async () => {
      const before = env.backend.requests.length;
      const r = await send(
        CLIENT_POD,
        env.http,
        `GET /public/a/../%7Eb/./c?q=/../x HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`,
      );
      assert.equal(r.answers[0]?.status, 200, r.raw.slice(0, 200));
      assert.deepEqual(
        env.backend.requests.slice(before).map((s) => s.line),
        ["GET /public/~b/c?q=/../x HTTP/1.1"],
      );
    });
    for (const path of ["/public/../admin", "/public/%2e%2e/admin", "/public/..;/admin"]) {
      await t.step(`h2c :path ${path} is refused or forwarded under /public`, async () => {
        const before = env.h2.seen.length;
        const r = await h2Request(CLIENT_POD, env.http, [
          [":method", "GET"],
          [":scheme", "http"],
          [":path", path],
          [":authority", H2_HOST],
        ]);
        assert.ok(
          [200, 400, 403].includes(r.status) || r.reset > 0,
          `got ${JSON.stringify(r)}`,
        );
        for (const seen of env.h2.seen.slice(before)) {
          for (const p of readings(String(seen[":path"]))) {
            assert.match(
              p,
              ALLOWED,
              `the h2c backend got :path "${seen[":path"]}", read as "${p}"`,
            );
          }
        }
      });
    }
  } finally {
    await env.stop();
  }
});
