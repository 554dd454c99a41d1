/**
 * A response head read as bytes, for the common case a proxy passes on unchanged: HTTP/1.1, a
 * final status, its body framed by one Content-Length, and no field a proxy must remove
 * (RFC 9110 §7.6.1). Such a head is forwarded as it came, with no decoding, parsing or
 * rebuilding; any other head goes through the full parser.
 */

/** A response head {@linkcode scanResponseHead} found plain. */
export interface PlainResponse {
  /** The status code, 200 to 599. */
  status: number;
  /** The Content-Length. */
  length: number;
  /** The head's bytes, from the status line to the empty line, as received. */
  raw: Uint8Array;
}

const CR = 13;
const LF = 10;
const HTAB = 9;
const SP = 32;
const COLON = 58;

/** tchar (RFC 9110 §5.6.2) by byte value. */
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TCHAR[c.charCodeAt(0)] = 1;
for (let c = 48; c <= 57; c++) TCHAR[c] = 1;
for (let c = 65; c <= 90; c++) TCHAR[c] = TCHAR[c + 32] = 1;

/**
 * RFC 9110 §7.6.1: connection-specific fields a proxy must not forward (besides those named in
 * Connection). Transfer-Encoding is one too: a proxy frames the body it sends itself.
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "proxy-authenticate",
  "proxy-authorization",
]);

/** Fields that make a head other than plain, by length: the hop-by-hop ones. */
const SPECIAL: string[][] = [];
for (const name of HOP_BY_HOP) (SPECIAL[name.length] ??= []).push(name);

const CONTENT_LENGTH = "content-length";

/** Whether the field name at `b[at..at + name.length)` is `name` (lower case), in any case. */
function nameIs(b: Uint8Array, at: number, name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const c = b[at + i]!;
    if ((c >= 65 && c <= 90 ? c + 32 : c) !== name.charCodeAt(i)) return false;
  }
  return true;
}

/**
 * The status and Content-Length of `head` (a complete head, ending in CRLF CRLF) when it is
 * plain: `HTTP/1.1`, a status from 200 to 599, exactly one Content-Length of 1 to 15 digits, no
 * Connection, Transfer-Encoding or other hop-by-hop field, every line ending in CRLF, and every
 * field a token name, a colon and a value with no control character but HTAB. `null` for any
 * other head, which the caller then parses in full (and refuses when it is malformed): a head
 * this accepts is one the full parser accepts, with the same status and framing.
 *
 * @example
 * ```ts
 * const head = new TextEncoder().encode("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
 * scanResponseHead(head); // { status: 200, length: 2, raw: head }
 * ```
 */
export function scanResponseHead(head: Uint8Array): PlainResponse | null {
  const status = statusOf(head);
  if (status < 0) return null;
  const end = head.length;
  // The status line: "HTTP/1.1 NNN", then SP and a reason with no control character, or none.
  let i = 12;
  if (head[i] === SP) {
    for (i++; i < end; i++) {
      const c = head[i]!;
      if (c === CR) break;
      if ((c < SP && c !== HTAB) || c === 0x7f) return null;
    }
  }
  let length = -1;
  for (;;) {
    if (head[i] !== CR || head[i + 1] !== LF) return null;
    i += 2;
    if (i >= end) return null;
    if (head[i] === CR) break; // the empty line
    // A field line: a token name (never starting with whitespace: no obsolete folding), ':'.
    const nameAt = i;
    while (i < end && TCHAR[head[i]!] === 1) i++;
    const nameLength = i - nameAt;
    if (nameLength === 0 || head[i] !== COLON) return null;
    const special = SPECIAL[nameLength];
    if (special !== undefined) {
      for (const n of special) if (nameIs(head, nameAt, n)) return null;
    }
    const valueAt = ++i;
    for (; i < end; i++) {
      const c = head[i]!;
      if (c === CR) break;
      if ((c < SP && c !== HTAB) || c === 0x7f) return null;
    }
    if (nameLength === CONTENT_LENGTH.length && nameIs(head, nameAt, CONTENT_LENGTH)) {
      if (length >= 0) return null; // more than one: the full parser compares them
      length = digits(head, valueAt, i);
      if (length < 0) return null;
    }
  }
  if (i + 2 !== end || head[i + 1] !== LF || length < 0) return null;
  return { status, length, raw: head };
}

/** The status of a head that starts `HTTP/1.1 NNN` with NNN from 200 to 599; -1 otherwise. */
function statusOf(head: Uint8Array): number {
  const prefix = "HTTP/1.1 ";
  if (head.length < 16) return -1;
  for (let i = 0; i < prefix.length; i++) if (head[i] !== prefix.charCodeAt(i)) return -1;
  let status = 0;
  for (let i = 9; i < 12; i++) {
    const d = head[i]! - 48;
    if (d < 0 || d > 9) return -1;
    status = status * 10 + d;
  }
  return status >= 200 && status <= 599 ? status : -1;
}

/** The number `b[from..to)` holds: OWS, 1 to 15 digits, OWS; -1 for anything else. */
function digits(b: Uint8Array, from: number, to: number): number {
  while (from < to && (b[from] === SP || b[from] === HTAB)) from++;
  while (to > from && (b[to - 1] === SP || b[to - 1] === HTAB)) to--;
  if (to === from || to - from > 15) return -1;
  let n = 0;
  for (let i = from; i < to; i++) {
    const d = b[i]! - 48;
    if (d < 0 || d > 9) return -1;
    n = n * 10 + d;
  }
  return n;
}
