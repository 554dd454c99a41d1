/**
 * The `X-Forwarded-For` and `Forwarded` values a proxy sends on: the client's own values are
 * kept but never trusted (meshd identifies the source by the connection's address alone), and
 * the address the proxy saw is appended (RFC 7239 §5.2 for `Forwarded`'s `for=`, with an IPv6
 * address quoted in brackets, §6).
 *
 * @example
 * ```ts
 * forwardedFor("10.0.0.9", "127.0.0.1");
 * // { xForwardedFor: "10.0.0.9, 127.0.0.1", forwarded: "for=127.0.0.1" }
 * ```
 */
export function forwardedFor(
  prior: { xForwardedFor: string | null; forwarded: string | null },
  peer: string,
): { xForwardedFor: string; forwarded: string } {
  const node = peer.includes(":") ? `"[${peer}]"` : peer;
  return {
    xForwardedFor: prior.xForwardedFor === null ? peer : `${prior.xForwardedFor}, ${peer}`,
    forwarded: prior.forwarded === null ? `for=${node}` : `${prior.forwarded}, for=${node}`,
  };
}
