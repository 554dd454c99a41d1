import assert from "node:assert/strict";
import { encode, encodedSize, HpackDecoder, huffmanCodes } from "./h2_hpack.ts";

const hex = (s: string) =>
  new Uint8Array(s.replaceAll(" ", "").match(/../g)!.map((x) => parseInt(x, 16)));

Deno.test("huffmanCodes rebuilds RFC 7541 Appendix B's codes from the lengths", () => {
  const codes = huffmanCodes();
  assert.equal(codes.length, 257);
  // A complete prefix code: the Kraft sum is exactly 1.
  assert.equal(codes.reduce((s, [, len]) => s + 2 ** -len, 0), 1);
  assert.deepEqual(codes[0], [0x1ff8, 13]);
  assert.deepEqual(codes[48], [0x0, 5]); // '0'
  assert.deepEqual(codes[32], [0x14, 6]); // ' '
  assert.deepEqual(codes[127], [0xffffffc, 28]);
  assert.deepEqual(codes[255], [0x3ffffee, 26]);
  assert.deepEqual(codes[256], [0x3fffffff, 30]); // EOS
});

Deno.test("HpackDecoder decodes RFC 7541 C.4's requests with Huffman and the dynamic table", () => {
  const d = new HpackDecoder();
  const run = (h: string) => {
    const out: [string, string][] = [];
    d.decode(hex(h), out);
    return out;
  };
  assert.deepEqual(run("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"), [
    [":method", "GET"],
    [":scheme", "http"],
    [":path", "/"],
    [":authority", "www.example.com"],
  ]);
  assert.deepEqual(run("8286 84be 5886 a8eb 1064 9cbf"), [
    [":method", "GET"],
    [":scheme", "http"],
    [":path", "/"],
    [":authority", "www.example.com"],
    ["cache-control", "no-cache"],
  ]);
  assert.deepEqual(run("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"), [
    [":method", "GET"],
    [":scheme", "https"],
    [":path", "/index.html"],
    [":authority", "www.example.com"],
    ["custom-key", "custom-value"],
  ]);
});

Deno.test("encode writes literals a fresh HpackDecoder reads back unchanged", () => {
  const fields: [string, string][] = [
    [":status", "200"],
    ["content-type", "application/grpc"],
    ["x-long", "v".repeat(300)],
    ["x-latin1", "\xe9\xff"],
  ];
  const buf = new Uint8Array(encodedSize(fields));
  const end = encode(fields, buf, 0);
  const out: [string, string][] = [];
  new HpackDecoder().decode(buf.subarray(0, end), out);
  assert.deepEqual(out, fields);
});
