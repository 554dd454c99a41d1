/**
 * The checks a forwarding proxy makes on an HTTP/1.x request head before it routes it, so
 * that the backend reads the request exactly as the proxy routed and access-checked it: one
 * framing, one authority, a target in a form both read alike. Anything ambiguous is refused
 * (the proxy answers 400), never repaired in a way a backend might not follow.
 */
import {
  type BodyFraming,
  bodyFraming,
  getHeader,
  type HeaderList,
  headerTokens,
  HttpParseError,
  isToken,
  type MessageHead,
} from "./http1.ts";
import { normalizeTarget } from "./normalize_path.ts";

/** A request head that passed {@linkcode checkRequest}, in the form to route and forward. */
export interface CheckedRequest {
  /**
   * The head with its target in origin-form (or `*` for OPTIONS), exactly one `Host` (the
   * target's authority when it was in absolute-form), at most one `Content-Length`, and an
   * `Upgrade` only where one may be honoured.
   */
  head: MessageHead;
  framing: BodyFraming;
  /** The authority the request is for: what routing uses. */
  authority: string;
}

// RFC 9110 §7.6.1: a field named in Connection is removed before forwarding. Removing one of
// these would change how the backend frames or routes the request, so naming one is refused.
const PROTECTED = new Set(["content-length", "transfer-encoding", "host"]);

// RFC 9110 §7.2, RFC 3986 §3.2: uri-host [ ":" port ]. An IP literal, or a reg-name of
// unreserved, pct-encoded and sub-delims characters; no userinfo, no whitespace.
const AUTHORITY = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?$/;

// RFC 9112 §3.2.2 absolute-form: scheme "://" authority, then path and query (no fragment).
const ABSOLUTE_FORM = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^#]*)$/;

// Upgrades to HTTP/2 over cleartext: the backend would then take requests on this connection
// that the proxy never sees, so they are never passed on (RFC 9113 §3.1 removed the upgrade).
const H2_UPGRADES = new Set(["h2c", "h2"]);
const UPGRADE_PROTOCOL = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:\/[!#$%&'*+\-.^_`|~0-9A-Za-z]+)?$/;

/**
 * Checks a parsed request head and returns the form meshd routes and forwards. Throws an
 * {@linkcode HttpParseError} (the proxy answers 400) for:
 *
 * - `Connection` naming Content-Length, Transfer-Encoding or Host, or a non-token;
 * - no Host, more than one, or an invalid one (RFC 9112 §3.2);
 * - a target other than origin-form, absolute-form with http(s), or `*` with OPTIONS
 *   (RFC 9112 §3.2); CONNECT;
 * - Transfer-Encoding other than exactly `chunked`, with Content-Length, or in HTTP/1.0
 *   (RFC 9112 §6.1); differing or malformed Content-Length (§6.3);
 * - a path {@linkcode normalizeTarget} refuses; any other is forwarded in its normal form.
 *
 * @example
 * ```ts
 * const { head, authority } = checkRequest(
 *   parseRequestHead("GET http://web.shop.mesh/a HTTP/1.1\r\nHost: x\r\n\r\n"),
 * );
 * // authority === "web.shop.mesh", head.target === "/a", Host is web.shop.mesh
 * ```
 */
export function checkRequest(req: MessageHead): CheckedRequest {
  const connTokens = connectionTokens(req.headers);
  for (const t of connTokens) {
    if (PROTECTED.has(t)) {
      throw new HttpParseError(`Connection names "${t}", a field that frames or routes a request`);
    }
  }

  const hosts = req.headers.filter(([k]) => k.length === 4 && k.toLowerCase() === "host");
  if (hosts.length > 1) throw new HttpParseError("request has more than one Host header");
  const host = hosts[0]?.[1] ?? null;
  if (host !== null && !AUTHORITY.test(host)) {
    throw new HttpParseError(`invalid Host "${host.slice(0, 60)}"`);
  }
  if (host === null && req.minor === 1) throw new HttpParseError("request has no Host header");

  if (req.method === "CONNECT") throw new HttpParseError("method CONNECT is not supported");
  let target = req.target;
  let authority = host;
  if (target.startsWith("/")) {
    if (target.includes("#")) throw new HttpParseError(`request target "${target}" has a fragment`);
  } else if (target === "*") {
    // RFC 9112 §3.2.4: asterisk-form is only used for a server-wide OPTIONS request.
    if (req.method !== "OPTIONS") {
      throw new HttpParseError(`request target "*" is for OPTIONS only, not ${req.method}`);
    }
  } else {
    const m = ABSOLUTE_FORM.exec(target);
    const scheme = m?.[1]?.toLowerCase();
    if (!m || (scheme !== "http" && scheme !== "https")) {
      throw new HttpParseError(
        `request target "${target.slice(0, 60)}" is neither a path nor an http(s) URI`,
      );
    }
    if (!AUTHORITY.test(m[2]!)) {
      throw new HttpParseError(`invalid authority in request target "${target.slice(0, 60)}"`);
    }
    // RFC 9112 §3.2.2: the target's authority replaces Host; the backend gets origin-form
    // (§3.2.1), or "*" for an OPTIONS with an empty path (§3.2.4).
    authority = m[2]!;
    const rest = m[3]!;
    target = rest.startsWith("/")
      ? rest
      : rest === "" && req.method === "OPTIONS"
      ? "*"
      : `/${rest}`;
  }
  if (!authority) throw new HttpParseError("request has no Host header");
  // Access rules match the path meshd forwards: one normal form, or 400 (see normalizeTarget).
  target = normalizeTarget(target);

  const te = getHeader(req.headers, "transfer-encoding");
  if (te !== null) {
    if (req.minor === 0) {
      // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
      throw new HttpParseError("an HTTP/1.0 request has Transfer-Encoding");
    }
    if (getHeader(req.headers, "content-length") !== null) {
      throw new HttpParseError("both Transfer-Encoding and Content-Length are present");
    }
    const codings = headerTokens(req.headers, "transfer-encoding");
    if (codings.length !== 1 || codings[0] !== "chunked") {
      throw new HttpParseError(`unsupported Transfer-Encoding "${te.slice(0, 60)}"`);
    }
  }
  const framing = bodyFraming(req, true);

  // Upgrade (RFC 9110 §7.8): only in HTTP/1.1, only with "upgrade" in Connection, never to
  // HTTP/2, and never with a body, whose bytes would race the tunnel's.
  let upgrade: string | null = null;
  const offered = getHeader(req.headers, "upgrade");
  if (
    offered !== null && req.minor === 1 && connTokens.includes("upgrade") &&
    framing.kind === "none"
  ) {
    // RFC 9110 §7.8: protocol = protocol-name ["/" protocol-version], both tokens. Anything
    // else (say "h2c" and a byte over 0x7f) is dropped: a lenient backend may read it as h2c.
    const kept = offered.split(",").map((p) => p.trim()).filter((p) =>
      UPGRADE_PROTOCOL.test(p) && !H2_UPGRADES.has(p.split("/")[0]!.toLowerCase())
    );
    if (kept.length > 0) upgrade = kept.join(", ");
  }

  const headers: HeaderList = [["Host", authority]];
  let hadLength = false;
  for (const [k, v] of req.headers) {
    const l = k.toLowerCase();
    if (l === "host" || l === "http2-settings") continue;
    if (l === "upgrade") {
      if (upgrade !== null) headers.push([k, upgrade]);
      upgrade = null;
      continue;
    }
    if (l === "content-length") {
      if (!hadLength) headers.push([k, framing.kind === "length" ? String(framing.length) : "0"]);
      hadLength = true;
      continue;
    }
    headers.push([k, v]);
  }
  return { head: { ...req, target, headers }, framing, authority };
}

/** The tokens of Connection, lower-cased; throws if one is not a token. */
function connectionTokens(headers: HeaderList): string[] {
  const raw = getHeader(headers, "connection");
  if (raw === null) return [];
  const out: string[] = [];
  for (const part of raw.split(",")) {
    const t = part.trim();
    if (t === "") continue;
    if (!isToken(t)) throw new HttpParseError(`invalid Connection "${raw.slice(0, 60)}"`);
    out.push(t.toLowerCase());
  }
  return out;
}
