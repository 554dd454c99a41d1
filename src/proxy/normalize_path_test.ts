import assert from "node:assert/strict";
import { HttpParseError } from "./http1.ts";
import { normalizeTarget } from "./normalize_path.ts";

const NORMAL: [name: string, target: string, want: string][] = [
  // RFC 3986 §5.2.4: dot segments removed.
  ["dot-dot climbs one segment", "/public/../admin", "/admin"],
  ["dot-dot at the root stays at the root", "/../../etc", "/etc"],
  ["a trailing dot-dot leaves a slash", "/a/b/..", "/a/"],
  ["a single dot goes", "/a/./b/.", "/a/b/"],
  ["empty segments are kept", "/a//b", "/a//b"],
  // RFC 3986 §6.2.2.2: escapes of unreserved characters decoded, so %2e is a dot.
  ["an encoded dot-dot is a dot-dot", "/public/%2e%2E/admin", "/admin"],
  ["a half-encoded dot-dot is a dot-dot", "/public/.%2e/admin", "/admin"],
  ["an encoded tilde is decoded", "/%7Euser", "/~user"],
  // RFC 3986 §6.2.2.1: other escapes upper-cased and kept.
  ["other escapes are upper-cased", "/a%3fb%20c", "/a%3Fb%20c"],
  ["the query is kept as it is", "/a/../b?x=/../%2e&y=\\", "/b?x=/../%2e&y=\\"],
  ["a path parameter is kept", "/a;v=1/b", "/a;v=1/b"],
  ["asterisk-form is unchanged", "*", "*"],
];

for (const [name, target, want] of NORMAL) {
  Deno.test(`normalizeTarget() ${name}`, () => {
    assert.equal(normalizeTarget(target), want);
  });
}

const REFUSED: [name: string, target: string][] = [
  // RFC 3986 §2.1: "%" is followed by two hex digits.
  ["a malformed escape", "/a%zz"],
  ["an escape cut short", "/a%4"],
  // Encoded delimiters some servers decode before they resolve the path (Traefik refuses them).
  ["an encoded slash", "/public/..%2Fadmin"],
  ["an encoded slash in lower case", "/public/..%2fadmin"],
  ["an encoded backslash", "/public/..%5cadmin"],
  ["an encoded NUL", "/a%00"],
  // WHATWG URL reads "\" as "/" in http(s) paths.
  ["a backslash", "/public/..\\admin"],
  // Servers that drop ";" parameters per segment (Tomcat) read these as dot segments.
  ["a dot-dot with a parameter", "/public/..;/admin"],
  ["a dot with a parameter", "/public/.;x/b"],
  ["an encoded dot-dot with a parameter", "/public/%2e%2e;/admin"],
  ["a dot-dot with an encoded semicolon", "/public/..%3B/admin"],
  ["a dot-dot with an encoded semicolon and a parameter", "/public/..%3bx/admin"],
];

for (const [name, target] of REFUSED) {
  Deno.test(`normalizeTarget() refuses ${name}`, () => {
    assert.throws(() => normalizeTarget(target), HttpParseError);
  });
}
