import assert from "node:assert/strict";
import {
  DnsFormatError,
  encodeResponse,
  ipv6Bytes,
  nameToString,
  parseQuery,
  RCODE,
  RR_TYPE,
} from "./dns_message.ts";

/** A query as bytes, built by hand so the parser is not checked against its own writer. */
function query(
  name: string,
  type: number,
  o: { id?: number; flags?: number; opt?: number[]; extra?: number[] } = {},
): Uint8Array {
  const id = o.id ?? 0x1234;
  const qname = name.split(".").filter(Boolean).flatMap((l) => [
    l.length,
    ...[...l].map((c) => c.charCodeAt(0)),
  ]);
  return Uint8Array.from([
    id >> 8,
    id & 0xff,
    ...(o.flags === undefined ? [0x01, 0x00] : [o.flags >> 8, o.flags & 0xff]),
    0,
    1,
    0,
    0,
    0,
    0,
    0,
    o.opt ? 1 : 0,
    ...qname,
    0,
    type >> 8,
    type & 0xff,
    0,
    1,
    ...(o.opt ?? []),
    ...(o.extra ?? []),
  ]);
}

// OPT: root name, type 41, class = UDP size, TTL = ext-rcode/version/flags, no rdata.
const opt = (
  size: number,
  version = 0,
) => [0, 0, 41, size >> 8, size & 0xff, 0, version, 0x80, 0, 0, 0];

Deno.test("parseQuery() reads the question, RD, and EDNS(0) size and version", () => {
  const q = parseQuery(query("Web.Shop.mesh", RR_TYPE.AAAA, { opt: opt(4096, 0) }));
  assert.equal(q.id, 0x1234);
  assert.equal(q.rd, true);
  assert.deepEqual(q.questions, [{ name: ["Web", "Shop", "mesh"], type: 28, class: 1 }]);
  assert.deepEqual(q.edns, { udpSize: 4096, version: 0 });
});

Deno.test("parseQuery() follows a compression pointer in an additional record's owner", () => {
  // an OPT owned by a pointer to the question name is not owned by the root: rejected
  const bytes = query("a.mesh", 1, { opt: [0xc0, 12, ...opt(512).slice(1)] });
  assert.throws(() => parseQuery(bytes), /OPT record not owned by the root/);
});

const bad: { name: string; bytes: Uint8Array; message: RegExp; id: number | undefined }[] = [
  { name: "a header cut short", bytes: Uint8Array.of(1, 2, 3), message: /header/, id: undefined },
  {
    name: "a response (QR set), never answered",
    bytes: query("a.mesh", 1, { flags: 0x8100 }),
    message: /response/,
    id: undefined,
  },
  {
    name: "a name that runs past the end",
    bytes: query("abc.mesh", 1).slice(0, 15),
    message: /past the message/,
    id: 0x1234,
  },
  {
    // RFC 1035 4.1.4 pointers refer to a prior occurrence; a forward or self pointer loops
    name: "a pointer that does not point backwards",
    bytes: Uint8Array.of(0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1),
    message: /backwards/,
    id: 1,
  },
  {
    name: "a label type other than 00 or 11",
    bytes: Uint8Array.of(0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 1, 0, 1),
    message: /label type/,
    id: 1,
  },
  {
    name: "bytes after the last record",
    bytes: query("a.mesh", 1, { extra: [0] }),
    message: /bytes after/,
    id: 0x1234,
  },
  {
    // RFC 6891 6.1.1: more than one OPT is FORMERR
    name: "two OPT records",
    bytes: (() => {
      const b = query("a.mesh", 1, { opt: [...opt(512), ...opt(512)] });
      b[11] = 2;
      return b;
    })(),
    message: /more than one OPT/,
    id: 0x1234,
  },
  {
    name: "a name longer than 255 bytes",
    bytes: query(Array.from({ length: 5 }, () => "x".repeat(60)).join("."), 1),
    message: /255/,
    id: 0x1234,
  },
];
for (const c of bad) {
  Deno.test(`parseQuery() rejects ${c.name}`, () => {
    assert.throws(() => parseQuery(c.bytes), (e: unknown) => {
      assert.ok(e instanceof DnsFormatError);
      assert.match(e.message, c.message);
      assert.equal(e.id, c.id);
      return true;
    });
  });
}

Deno.test("ipv6Bytes() reads the usual spellings and refuses others", () => {
  const hex = (s: string) => [...ipv6Bytes(s)].map((b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(hex("::"), "0".repeat(32));
  assert.equal(hex("::1"), "0".repeat(31) + "1");
  assert.equal(hex("fd00:10:96::a"), "fd000010009600000000000000000000".slice(0, 28) + "000a");
  assert.equal(hex("2001:db8:0:0:0:0:2:1"), "20010db8000000000000000000020001");
  assert.equal(hex("::ffff:192.0.2.1"), "00000000000000000000ffffc0000201");
  for (const s of ["1::2::3", "12345::", "1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9", "g::", "1.2.3.4"]) {
    assert.throws(() => ipv6Bytes(s), /IPv6/, s);
  }
});

Deno.test("encodeResponse() compresses repeated names and truncates past the size limit", () => {
  const name = ["web", "shop", "mesh"];
  const answers = Array.from({ length: 40 }, (_, i) => ({
    name,
    type: RR_TYPE.A,
    ttl: 5,
    data: { a: `10.0.0.${i}` },
  }));
  const m = {
    id: 7,
    opcode: 0,
    rd: true,
    cd: false,
    aa: true,
    rcode: RCODE.NOERROR,
    question: { name, type: RR_TYPE.A, class: 1 },
    answers,
    authority: [],
  };
  const full = encodeResponse(m);
  // header 12 + question 15+4 + 40 answers of pointer 2 + 10 fixed + 4 address
  assert.equal(full.length, 12 + 19 + 40 * 16);
  assert.equal(full[2]! & 0x02, 0, "TC clear");
  const cut = encodeResponse(m, 512);
  assert.equal(cut.length, 12 + 19);
  assert.equal(cut[2]! & 0x02, 0x02, "TC set");
  assert.equal((cut[6]! << 8) | cut[7]!, 0, "no answers in a truncated response");
});

Deno.test("encodeResponse() puts an extended RCODE's upper bits in the OPT record", () => {
  const out = encodeResponse({
    id: 1,
    opcode: 0,
    rd: false,
    cd: false,
    aa: false,
    rcode: RCODE.BADVERS,
    answers: [],
    authority: [],
    edns: { udpSize: 1232 },
  });
  assert.equal(out[3]! & 0x0f, 0);
  assert.equal(out.at(-6), 1, "extended RCODE 1 << 4 = 16");
  assert.throws(
    () =>
      encodeResponse({
        id: 1,
        opcode: 0,
        rd: false,
        cd: false,
        aa: false,
        rcode: 16,
        answers: [],
        authority: [],
      }),
    /needs an OPT/,
  );
});

Deno.test("nameToString() escapes dots and bytes outside printable ASCII", () => {
  assert.equal(nameToString([]), ".");
  assert.equal(nameToString(["a.b", "c\u0001"]), "a\\.b.c\\001.");
});
