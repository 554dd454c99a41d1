/**
 * The regular expressions users write in HTTPRouteGroups (`pathRegex`, header values), compiled
 * the one way decoding checks them and the proxy matches with them.
 *
 * They are matched against what clients send, so matching must take time linear in the input
 * whatever the pattern: Traefik Mesh compiles them with Go's regexp (RE2), which is. V8's
 * default engine backtracks, and `pathRegex: /(a+)+b` against a path of 40 `a`s stalled meshd's
 * event loop for good (the API and probes too). V8's linear-time engine (the `l` flag, which
 * `--enable-experimental-regexp-engine` turns on: every launch of meshd passes it, see
 * `MESHD_V8_FLAGS`) matches in linear time as RE2 does, and refuses backreferences and
 * lookahead, which RE2 refuses too. It also refuses repetition counts it would have to unroll
 * too far (`a{1000}`) and `(?i:…)` groups, which RE2 takes, and takes simple lookbehind, which
 * RE2 refuses.
 *
 * @module
 */

/** `"l"` when V8's linear-time engine is on in this process, else `""`. */
export const LINEAR_REGEX_FLAGS: string = (() => {
  try {
    new RegExp("", "l");
    return "l";
  } catch {
    return "";
  }
})();

/**
 * The pattern a `pathRegex` stands for: Traefik Mesh builds ``PathPrefix(`/{path:<regex>}`)``
 * with the regex's leading `/` trimmed, so it is a prefix of the path, in a group after `/`.
 * A regex that is valid alone may not be here (`/*` is `^/(?:*)`), so this form is the one to
 * check.
 */
export function pathRegexSource(pathRegex: string): string {
  return `^/(?:${pathRegex.startsWith("/") ? pathRegex.slice(1) : pathRegex})`;
}

/**
 * Compiles a user's pattern on the linear-time engine when it is on; throws a `SyntaxError`
 * for a pattern that is invalid or that engine cannot run.
 */
export function userRegex(source: string): RegExp {
  return new RegExp(source, LINEAR_REGEX_FLAGS);
}
