import assert from "node:assert/strict";
import {
  encode,
  encodeBlock,
  encodedSize,
  HpackDecoder,
  HpackError,
  huffmanCodes,
} from "./hpack.ts";

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

Deno.test("HpackDecoder decodes RFC 7541 C.6's responses and evicts from a 256-byte table", () => {
  const d = new HpackDecoder({ maxTableSize: 256 });
  const run = (h: string) => {
    const out: [string, string][] = [];
    assert.equal(d.decode(hex(h), out), true);
    return out;
  };
  assert.deepEqual(
    run(
      "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 " +
        "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
    ),
    [
      [":status", "302"],
      ["cache-control", "private"],
      ["date", "Mon, 21 Oct 2013 20:13:21 GMT"],
      ["location", "https://www.example.com"],
    ],
  );
  assert.deepEqual(d.tableSize, { size: 222, entries: 4 });
  // ":status: 307" goes in, so ":status: 302" (the oldest) is evicted.
  assert.deepEqual(run("4883 640e ffc1 c0bf"), [
    [":status", "307"],
    ["cache-control", "private"],
    ["date", "Mon, 21 Oct 2013 20:13:21 GMT"],
    ["location", "https://www.example.com"],
  ]);
  assert.deepEqual(d.tableSize, { size: 222, entries: 4 });
  assert.deepEqual(
    run(
      "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab " +
        "77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f " +
        "9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ),
    [
      [":status", "200"],
      ["cache-control", "private"],
      ["date", "Mon, 21 Oct 2013 20:13:22 GMT"],
      ["location", "https://www.example.com"],
      ["content-encoding", "gzip"],
      ["set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"],
    ],
  );
  assert.deepEqual(d.tableSize, { size: 215, entries: 3 });
});

Deno.test("encode uses the static table and a fresh HpackDecoder reads it back", () => {
  const fields: [string, string][] = [
    [":method", "POST"],
    [":status", "200"],
    ["content-type", "application/grpc"],
    ["te", "trailers"],
  ];
  const block = encodeBlock(fields);
  assert.equal(block[0], 0x83); // :method POST is static entry 3
  assert.equal(block[1], 0x88); // :status 200 is static entry 8
  assert.equal(block[2], 0x0f); // content-type (31): literal without indexing, name index 15+16
  const out: [string, string][] = [];
  new HpackDecoder().decode(block, out);
  assert.deepEqual(out, fields);
});

// RFC 7541 §4.2, §5.1, §5.2 and §6.3: what a hostile encoder may send.
const BAD_BLOCKS: { name: string; block: string; error: RegExp }[] = [
  { name: "a table size update above our setting", block: "3fe21f", error: /over the 4096/ },
  { name: "a table size update after a field", block: "82 20", error: /after a field/ },
  { name: "an index of 0", block: "80", error: /no table entry 0/ },
  { name: "an index past the dynamic table", block: "be", error: /no table entry 62/ },
  { name: "an integer of more than 28 bits", block: "ff ff ff ff ff 0f", error: /too large/ },
  { name: "a string past the block", block: "00 05 61", error: /past the block/ },
  // 0xff 0xff 0xff 0xff is EOS (30 ones) and 2 more bits.
  { name: "EOS in a Huffman string", block: "00 84 ffffffff 00", error: /EOS/ },
  // 'a' is 00011 (5 bits); the 3 padding bits must be ones, here they are zeros.
  { name: "Huffman padding of zeros", block: "00 81 18 00", error: /padding/ },
  // 'a' then 11 bits of ones: more than 7 bits of padding.
  { name: "Huffman padding over 7 bits", block: "00 82 1fff 00", error: /padding/ },
];

for (const c of BAD_BLOCKS) {
  Deno.test(`HpackDecoder refuses ${c.name}`, () => {
    assert.throws(() => new HpackDecoder().decode(hex(c.block), []), (e: unknown) => {
      assert.ok(e instanceof HpackError, String(e));
      assert.match(e.message, c.error);
      return true;
    });
  });
}

Deno.test("HpackDecoder cuts a header list over its limit short and keeps its table in step (HPACK bomb)", () => {
  const d = new HpackDecoder({ maxListSize: 16 * 1024 });
  // One 4000-byte entry added to the table, then referenced 1000 times: 4 MB decoded.
  const big = encodeBlock([["x-big", "v".repeat(4000)]]);
  big[0] = 0x40; // literal with incremental indexing, new name
  const refs = new Uint8Array(1000).fill(0x80 | 62);
  const block = new Uint8Array(big.length + refs.length);
  block.set(big);
  block.set(refs, big.length);
  const out: [string, string][] = [];
  assert.equal(d.decode(block, out), false);
  assert.ok(out.length <= 4, `${out.length} fields kept`);
  assert.equal(d.tableSize.entries, 1);
  // The next block still sees the entry.
  const next: [string, string][] = [];
  assert.equal(d.decode(hex("be"), next), true);
  assert.equal(next[0]![1].length, 4000);
});
