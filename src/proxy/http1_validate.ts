/**
 * The checks a forwarding proxy makes on an HTTP/1.x request head before it routes it, so
 * that the backend reads the request exactly as the proxy routed and access-checked it: one
 * framing, one authority, a target in a form both read alike. Anything ambiguous is refused
 * (the proxy answers 400), never repaired in a way a backend might not follow.
 */
import {
  type BodyFraming,
  bodyFraming,
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
  /**
   * `head` is the request as it came, unedited: its target already in normal form, one Host
   * that is the authority, no HTTP2-Settings or Upgrade, at most one Content-Length, already
   * in normal form. Its bytes can then be forwarded as they are, plus what the proxy adds.
   */
  verbatim: boolean;
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
// Also a token that begins as one and then stops being a word ("h2c#", "h2.1"): a lenient
// backend may read it as the upgrade.
const H2_UPGRADE = /^h2c?\b/i;
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
  const fields = fieldsOf(req.headers);
  const connTokens = connectionTokens(fields.connection);
  for (const t of connTokens) {
    if (PROTECTED.has(t)) {
      throw new HttpParseError(`Connection names "${t}", a field that frames or routes a request`);
    }
  }
  const { target, authority } = routedTarget(req, fields);
  const framing = checkFraming(req, fields);
  const upgrade = keptUpgrade(req, fields, connTokens, framing);
  // Most heads need no edit: they are forwarded as they came (see CheckedRequest.verbatim).
  const length = framing.kind === "length" ? String(framing.length) : "0";
  const verbatim = target === req.target && fields.hosts === 1 && authority === fields.host &&
    !fields.http2Settings && fields.upgrade === null && fields.lengths <= 1 &&
    (fields.lengths === 0 || fields.length === length);
  if (verbatim) return { head: req, framing, authority, verbatim };
  return {
    head: { ...req, target, headers: editedFields(req.headers, authority, upgrade, length) },
    framing,
    authority,
    verbatim,
  };
}

/** The fields {@linkcode checkRequest} looks at, found in one pass over the head. */
interface RequestFields {
  /** The Host value (the first), and how many Host fields there are. */
  host: string | null;
  hosts: number;
  /** Connection, Transfer-Encoding and Upgrade, each field's values joined with ", ". */
  connection: string | null;
  transferEncoding: string | null;
  upgrade: string | null;
  /** The first Content-Length value, and how many Content-Length fields there are. */
  length: string | null;
  lengths: number;
  http2Settings: boolean;
}

function joined(prior: string | null, v: string): string {
  return prior === null ? v : `${prior}, ${v}`;
}

/** One pass over the fields; a name is lower-cased only when its length is one of these. */
function fieldsOf(headers: HeaderList): RequestFields {
  const f: RequestFields = {
    host: null,
    hosts: 0,
    connection: null,
    transferEncoding: null,
    upgrade: null,
    length: null,
    lengths: 0,
    http2Settings: false,
  };
  for (const [k, v] of headers) {
    const n = k.length;
    if (n !== 4 && n !== 7 && n !== 10 && n !== 14 && n !== 17) continue;
    const l = k.toLowerCase();
    if (l === "host") {
      if (f.hosts++ === 0) f.host = v;
    } else if (l === "connection") f.connection = joined(f.connection, v);
    else if (l === "transfer-encoding") f.transferEncoding = joined(f.transferEncoding, v);
    else if (l === "upgrade") f.upgrade = joined(f.upgrade, v);
    else if (l === "content-length") {
      if (f.lengths++ === 0) f.length = v;
    } else if (l === "http2-settings") f.http2Settings = true;
  }
  return f;
}

/** The target in the form forwarded, and the authority routed on (RFC 9112 §3.2). */
function routedTarget(
  req: MessageHead,
  fields: RequestFields,
): { target: string; authority: string } {
  if (fields.hosts > 1) throw new HttpParseError("request has more than one Host header");
  const host = fields.host;
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
    ({ target, authority } = fromAbsoluteForm(req));
  }
  if (!authority) throw new HttpParseError("request has no Host header");
  // Access rules match the path meshd forwards: one normal form, or 400 (see normalizeTarget).
  return { target: normalizeTarget(target), authority };
}

/** An absolute-form target (RFC 9112 §3.2.2) split into the origin-form and its authority. */
function fromAbsoluteForm(req: MessageHead): { target: string; authority: string } {
  const m = ABSOLUTE_FORM.exec(req.target);
  const scheme = m?.[1]?.toLowerCase();
  if (!m || (scheme !== "http" && scheme !== "https")) {
    throw new HttpParseError(
      `request target "${req.target.slice(0, 60)}" is neither a path nor an http(s) URI`,
    );
  }
  if (!AUTHORITY.test(m[2]!)) {
    throw new HttpParseError(`invalid authority in request target "${req.target.slice(0, 60)}"`);
  }
  // RFC 9112 §3.2.2: the target's authority replaces Host; the backend gets origin-form
  // (§3.2.1), or "*" for an OPTIONS with an empty path (§3.2.4).
  const rest = m[3]!;
  const target = rest.startsWith("/")
    ? rest
    : rest === "" && req.method === "OPTIONS"
    ? "*"
    : `/${rest}`;
  return { target, authority: m[2]! };
}

/** The body's framing; throws on any Transfer-Encoding but a lone `chunked` (RFC 9112 §6.1). */
function checkFraming(req: MessageHead, fields: RequestFields): BodyFraming {
  const te = fields.transferEncoding;
  if (te !== null) {
    if (req.minor === 0) {
      // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
      throw new HttpParseError("an HTTP/1.0 request has Transfer-Encoding");
    }
    if (fields.lengths > 0) {
      throw new HttpParseError("both Transfer-Encoding and Content-Length are present");
    }
    const codings = headerTokens(req.headers, "transfer-encoding");
    if (codings.length !== 1 || codings[0] !== "chunked") {
      throw new HttpParseError(`unsupported Transfer-Encoding "${te.slice(0, 60)}"`);
    }
  }
  return bodyFraming(req, true);
}

/**
 * The Upgrade value passed on (RFC 9110 §7.8), or `null`: only in HTTP/1.1, only with "upgrade"
 * in Connection, never to HTTP/2, and never with a body, whose bytes would race the tunnel's.
 */
function keptUpgrade(
  req: MessageHead,
  fields: RequestFields,
  connTokens: string[],
  framing: BodyFraming,
): string | null {
  const offered = fields.upgrade;
  if (
    offered === null || req.minor !== 1 || !connTokens.includes("upgrade") ||
    framing.kind !== "none"
  ) {
    return null;
  }
  // RFC 9110 §7.8: protocol = protocol-name ["/" protocol-version], both tokens. Anything
  // else (say "h2c" and a byte over 0x7f) is dropped: a lenient backend may read it as h2c.
  const kept = offered.split(",").map((p) => p.trim()).filter((p) =>
    UPGRADE_PROTOCOL.test(p) && !H2_UPGRADE.test(p)
  );
  return kept.length > 0 ? kept.join(", ") : null;
}

/**
 * The fields as forwarded when some need an edit: one Host (the authority) first, no
 * HTTP2-Settings, Upgrade only as kept, one Content-Length with the framing's length.
 */
function editedFields(
  fields: HeaderList,
  authority: string,
  upgrade: string | null,
  length: string,
): HeaderList {
  const headers: HeaderList = [["Host", authority]];
  let hadLength = false;
  for (const [k, v] of fields) {
    const l = k.toLowerCase();
    if (l === "host" || l === "http2-settings") continue;
    if (l === "upgrade") {
      if (upgrade !== null) headers.push([k, upgrade]);
      upgrade = null;
      continue;
    }
    if (l === "content-length") {
      if (!hadLength) headers.push([k, length]);
      hadLength = true;
      continue;
    }
    headers.push([k, v]);
  }
  return headers;
}

/** The tokens of Connection, lower-cased; throws if one is not a token. */
function connectionTokens(raw: string | null): string[] {
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
