import { HttpParseError } from "./http1.ts";

// RFC 3986 §2.3: unreserved characters; their percent-encodings are the same characters.
const UNRESERVED = /^[A-Za-z0-9\-._~]$/;

/** A path that is in normal form as it is: no `%`, `.` or `\`. */
const PLAIN_PATH = /^\/[^%.\\]*$/;

/**
 * Escapes of characters that servers disagree on (RFC 3986 §2.2: an encoded delimiter is data,
 * yet many servers decode it before they split or resolve the path), refused as Traefik does
 * by default: `/`, `\`, NUL.
 */
const AMBIGUOUS_ESCAPES = new Map([["2F", "/"], ["5C", "\\"], ["00", "NUL"]]);

/**
 * The request target meshd routes, access-checks and forwards, in one normal form, so that the
 * path an access rule matched is the path the backend serves (RFC 3986 §6.2.2):
 *
 * - escapes of unreserved characters are decoded (`%7E` is `~`, `%2e` is `.`), others
 *   upper-cased (§6.2.2.1, §6.2.2.2);
 * - dot segments are removed (§5.2.4), so `/public/../admin` is `/admin`;
 *
 * and refuses (throws {@linkcode HttpParseError}, the proxy answers 400) what servers read in
 * different ways: a malformed escape (§2.1), an encoded `/`, `\` or NUL, a `\` (WHATWG URL, as
 * Deno and Node read a path, takes it for `/`), and a segment that is `.` or `..` once its
 * escapes are decoded and its `;` parameters dropped (as Tomcat reads `/public/..;/admin`). The query is kept as it is;
 * `*` is returned unchanged.
 *
 * @example
 * ```ts
 * normalizeTarget("/public/%2e%2e/admin?q=1"); // "/admin?q=1"
 * ```
 */
export function normalizeTarget(target: string): string {
  if (target === "*") return target;
  const q = target.indexOf("?");
  const path = q >= 0 ? target.slice(0, q) : target;
  // Most paths have no escape, dot or backslash: nothing to decode, remove or refuse.
  if (PLAIN_PATH.test(path)) return target;
  const query = q >= 0 ? target.slice(q) : "";
  if (path.includes("\\")) throw new HttpParseError(`request path "${clip(path)}" has a "\\"`);
  const decoded = path.replace(/%(.?.?)/g, (_, hex: string) => {
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) {
      throw new HttpParseError(`request path "${clip(path)}" has a malformed escape "%${hex}"`);
    }
    const up = hex.toUpperCase();
    const ambiguous = AMBIGUOUS_ESCAPES.get(up);
    if (ambiguous !== undefined) {
      throw new HttpParseError(`request path "${clip(path)}" has an encoded ${ambiguous}`);
    }
    const c = String.fromCharCode(parseInt(up, 16));
    return UNRESERVED.test(c) ? c : `%${up}`;
  });
  const out = removeDotSegments(decoded);
  for (const segment of out.split("/")) {
    // What is left of a segment once every escape is decoded and its ";" parameters dropped
    // (`..;x`, `..%3B`): a dot segment to such a server, not to meshd.
    const bare = segment.replace(/%([0-9A-F]{2})/g, (_, h) => String.fromCharCode(parseInt(h, 16)))
      .split(";")[0];
    if (bare === "." || bare === "..") {
      throw new HttpParseError(`request path "${clip(path)}" has the segment "${clip(segment)}"`);
    }
  }
  return out + query;
}

/** RFC 3986 §5.2.4, for a path that starts with `/`. */
function removeDotSegments(path: string): string {
  const out: string[] = [];
  const segments = path.split("/").slice(1);
  segments.forEach((s, i) => {
    const last = i === segments.length - 1;
    if (s === ".") {
      if (last) out.push("");
    } else if (s === "..") {
      out.pop();
      if (last) out.push("");
    } else {
      out.push(s);
    }
  });
  return `/${out.join("/")}`;
}

function clip(s: string): string {
  return JSON.stringify(s.slice(0, 60)).slice(1, -1);
}
