import assert from "node:assert/strict";
import { forwardedFor } from "./forwarded_for.ts";

Deno.test("forwardedFor() appends the address the proxy saw to what the client sent", () => {
  const cases: {
    name: string;
    prior: { xForwardedFor: string | null; forwarded: string | null };
    peer: string;
    want: { xForwardedFor: string; forwarded: string };
  }[] = [
    {
      name: "no prior values",
      prior: { xForwardedFor: null, forwarded: null },
      peer: "127.0.62.5",
      want: { xForwardedFor: "127.0.62.5", forwarded: "for=127.0.62.5" },
    },
    {
      // The client's own values are kept but never trusted: the proxy's is the last one.
      name: "client values kept in front",
      prior: { xForwardedFor: "10.0.0.1", forwarded: "for=10.0.0.1" },
      peer: "127.0.62.5",
      want: { xForwardedFor: "10.0.0.1, 127.0.62.5", forwarded: "for=10.0.0.1, for=127.0.62.5" },
    },
    {
      // RFC 7239 §6: an IPv6 address is quoted and in brackets in Forwarded, bare in XFF.
      name: "IPv6 peer",
      prior: { xForwardedFor: null, forwarded: null },
      peer: "::1",
      want: { xForwardedFor: "::1", forwarded: 'for="[::1]"' },
    },
  ];
  for (const c of cases) assert.deepEqual(forwardedFor(c.prior, c.peer), c.want, c.name);
});
