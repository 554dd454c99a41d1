import assert from "node:assert/strict";
import { HttpParseError, parseRequestHead } from "./http1.ts";
import { checkRequest } from "./http1_validate.ts";

const check = (head: string) => checkRequest(parseRequestHead(head));
const H = "Host: web.default.mesh\r\n";

Deno.test("checkRequest() refuses heads a backend could frame or route differently", () => {
  const cases: [rule: string, head: string][] = [
    // RFC 9110 §7.6.1 + issue 18 item 1: stripping these would change framing or routing.
    ["Connection: Content-Length", `POST / HTTP/1.1\r\n${H}Connection: Content-Length\r\n\r\n`],
    [
      "Connection: transfer-encoding",
      `GET / HTTP/1.1\r\n${H}Connection: x, transfer-encoding\r\n\r\n`,
    ],
    ["Connection: Host", `GET / HTTP/1.1\r\n${H}Connection: Host\r\n\r\n`],
    ["Connection: not a token list", `GET / HTTP/1.1\r\n${H}Connection: a b\r\n\r\n`],
    // RFC 9112 §3.2: exactly one valid Host.
    ["two Host", `GET / HTTP/1.1\r\n${H}${H}\r\n`],
    ["no Host", "GET / HTTP/1.1\r\n\r\n"],
    ["empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n"],
    ["Host with userinfo", "GET / HTTP/1.1\r\nHost: a@web.default.mesh\r\n\r\n"],
    // RFC 9112 §3.2.1-3.2.4: request-target forms.
    ["asterisk-form with GET", `GET * HTTP/1.1\r\n${H}\r\n`],
    ["a relative target", `GET admin HTTP/1.1\r\n${H}\r\n`],
    ["authority-form", `CONNECT web.default.mesh:80 HTTP/1.1\r\n${H}\r\n`],
    ["a fragment", `GET /a#b HTTP/1.1\r\n${H}\r\n`],
    ["absolute-form with another scheme", `GET ftp://web.default.mesh/ HTTP/1.1\r\n${H}\r\n`],
    ["absolute-form with userinfo", `GET http://u@web.default.mesh/ HTTP/1.1\r\n${H}\r\n`],
    ["absolute-form without authority", `GET http:///a HTTP/1.1\r\n${H}\r\n`],
    // RFC 9112 §6.1, §6.3: one framing, chunked only, never in HTTP/1.0.
    ["TE in HTTP/1.0", `POST / HTTP/1.0\r\n${H}Transfer-Encoding: chunked\r\n\r\n`],
    ["TE and CL", `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n`],
    ["empty TE and CL", `POST / HTTP/1.1\r\n${H}Transfer-Encoding:\r\nContent-Length: 3\r\n\r\n`],
    ["TE xchunked", `POST / HTTP/1.1\r\n${H}Transfer-Encoding: xchunked\r\n\r\n`],
    ["TE chunked, identity", `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked, identity\r\n\r\n`],
    ["differing CL", `POST / HTTP/1.1\r\n${H}Content-Length: 1\r\nContent-Length: 2\r\n\r\n`],
  ];
  for (const [rule, head] of cases) {
    assert.throws(() => check(head), HttpParseError, rule);
  }
});

Deno.test("checkRequest() forwards absolute-form in origin-form with its authority as Host", () => {
  const c = check(
    "GET http://web.default.mesh:80?q HTTP/1.1\r\nHost: other.default.mesh\r\nX-A: 1\r\n\r\n",
  );
  assert.equal(c.authority, "web.default.mesh:80");
  assert.equal(c.head.target, "/?q");
  assert.deepEqual(c.head.headers, [["Host", "web.default.mesh:80"], ["X-A", "1"]]);
  // RFC 9112 §3.2.4: an OPTIONS with an empty path becomes asterisk-form.
  assert.equal(check(`OPTIONS http://web.default.mesh HTTP/1.1\r\n${H}\r\n`).head.target, "*");
  assert.equal(check(`OPTIONS * HTTP/1.1\r\n${H}\r\n`).head.target, "*");
});

Deno.test("checkRequest() keeps one Content-Length and drops HTTP/2 upgrades", () => {
  const c = check(`POST / HTTP/1.1\r\n${H}Content-Length: 5\r\nContent-Length: 5\r\n\r\n`);
  assert.deepEqual(c.framing, { kind: "length", length: 5 });
  assert.deepEqual(c.head.headers.filter(([k]) => k === "Content-Length"), [[
    "Content-Length",
    "5",
  ]]);
  const up = (fields: string) =>
    check(`GET / HTTP/1.1\r\n${H}${fields}\r\n`).head.headers.find(([k]) =>
      k.toLowerCase() === "upgrade"
    )?.[1];
  assert.equal(up("Connection: Upgrade\r\nUpgrade: websocket\r\n"), "websocket");
  assert.equal(up("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"), undefined);
  assert.equal(up("Connection: Upgrade\r\nUpgrade: h2c, websocket\r\n"), "websocket");
  // RFC 9110 §7.8: a protocol that is not a token is dropped (found by the fuzzer).
  assert.equal(up("Connection: Upgrade\r\nUpgrade: h2c\x80, websocket/13\r\n"), "websocket/13");
  assert.equal(up("Connection: Upgrade\r\nUpgrade: h2c\xa0\r\n"), undefined);
  // A token that begins as h2c or h2 then stops being a word: a lenient backend may read it as
  // HTTP/2 (found by the fuzzer, seed 689770470).
  assert.equal(up("Connection: Upgrade\r\nUpgrade: h2c#\r\nUpgrade: websocket\r\n"), "websocket");
  assert.equal(up("Connection: Upgrade\r\nUpgrade: H2.1, h2-x\r\n"), undefined);
  assert.equal(up("Connection: Upgrade\r\nUpgrade: h2cx\r\n"), "h2cx");
  // No upgrade with a body, whose bytes would race the tunnel's.
  assert.equal(up("Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n"), undefined);
});

Deno.test("checkRequest() forwards the path in its normal form, or refuses it", () => {
  assert.equal(
    check(`GET /public/%2e%2e/admin?a=/.. HTTP/1.1\r\n${H}\r\n`).head.target,
    "/admin?a=/..",
  );
  assert.equal(check(`GET http://web.default.mesh/a/./b HTTP/1.1\r\n${H}\r\n`).head.target, "/a/b");
  assert.throws(() => check(`GET /public/..;/admin HTTP/1.1\r\n${H}\r\n`), HttpParseError);
});
