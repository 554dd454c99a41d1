/**
 * Issue 18, item 8: a DNS query built to make the responder's parser work (thousands of
 * questions, each a backward compression pointer to the one before) is refused from its header,
 * and the work any message can cause is bounded, while normal queries keep their answers.
 */
import assert from "node:assert/strict";
import { DnsServer, MeshZone } from "../../src/dns/mod.ts";
import {
  DnsFormatError,
  MAX_PARSE_STEPS,
  parseQuery,
  type ParseStats,
} from "../../src/dns/dns_message.ts";
import { Logger, Registry } from "../../src/observability/mod.ts";

const HOST = "127.0.60.53";

/**
 * The query of the report: 64 KB, the first question `a.`, each later one a pointer to the
 * name of the one before (or, past the 16 KB a pointer reaches, to the last one within it), so
 * most questions follow about 2,700 pointers: tens of millions in all.
 */
function pointerChainQuery(id: number): Uint8Array {
  const b: number[] = [id >> 8, id & 0xff, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
  b.push(1, 0x61, 0, 0, 1, 0, 1);
  let prev = 12;
  let count = 1;
  while (b.length + 6 <= 65535) {
    const at = b.length;
    b.push(0xc0 | (prev >> 8), prev & 0xff, 0, 1, 0, 1);
    // A pointer has 14 bits: past 16 KB, every question points to the longest chain below.
    if (at < 0x4000) prev = at;
    count++;
  }
  b[4] = count >> 8;
  b[5] = count & 0xff;
  return Uint8Array.from(b);
}

/**
 * One honest question, then `records` additional records: the first carries, in its data, a
 * ladder of 2,000 pointers each pointing to the one before; the others are owned by the top
 * rung, so each owner name is a 2,000-pointer chain. The header passes the question count, so
 * the bound on parse work must do the rest.
 */
function chainedRecordsQuery(id: number, records: number): Uint8Array {
  const b: number[] = [id >> 8, id & 0xff, 1, 0, 0, 1, 0, 0, 0, 0, records >> 8, records & 0xff];
  b.push(1, 0x61, 0, 0, 1, 0, 1);
  const rungs = 2000;
  // Owner the root, type TXT, class IN, TTL 0, then the ladder as its data.
  b.push(0, 0, 16, 0, 1, 0, 0, 0, 0, (rungs * 2) >> 8, (rungs * 2) & 0xff);
  let prev = 12;
  for (let i = 0; i < rungs; i++) {
    const at = b.length;
    b.push(0xc0 | (prev >> 8), prev & 0xff);
    prev = at;
  }
  for (let r = 1; r < records; r++) {
    b.push(0xc0 | (prev >> 8), prev & 0xff, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0);
  }
  return Uint8Array.from(b);
}

async function tcpQuery(port: number, msg: Uint8Array): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: HOST, port });
  try {
    const framed = new Uint8Array(msg.length + 2);
    framed[0] = msg.length >> 8;
    framed[1] = msg.length & 0xff;
    framed.set(msg, 2);
    for (let off = 0; off < framed.length;) off += await conn.write(framed.subarray(off));
    const got: number[] = [];
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      got.push(...buf.subarray(0, n));
      if (got.length >= 2 && got.length >= 2 + ((got[0]! << 8) | got[1]!)) break;
    }
    assert.ok(got.length >= 14, `expected a framed DNS answer, got ${got.length} bytes`);
    return Uint8Array.from(got.slice(2));
  } finally {
    conn.close();
  }
}

Deno.test("parseQuery() refuses the 10,920-question pointer-chain query before reading a name", () => {
  const msg = pointerChainQuery(0x4242);
  assert.ok(msg.length > 65000, `the attack is ${msg.length} bytes`);
  const stats: ParseStats = { steps: 0 };
  assert.throws(() => parseQuery(msg, stats), (e: unknown) => {
    assert.ok(e instanceof DnsFormatError, `expected DnsFormatError, got ${e}`);
    assert.equal(e.id, 0x4242, "FORMERR needs the query's id");
    assert.match(e.message, /10920 questions, expected 1/);
    return true;
  });
  assert.equal(stats.steps, 0, "no name may be decoded before the question count is checked");
});

Deno.test("parseQuery() bounds the work of one question with chained record owners", () => {
  for (const records of [2, 8]) {
    const msg = chainedRecordsQuery(7, records);
    const stats: ParseStats = { steps: 0 };
    assert.throws(() => parseQuery(msg, stats), DnsFormatError);
    assert.ok(
      stats.steps <= MAX_PARSE_STEPS + 1,
      `${records} record(s) of 2,000-pointer chains took ${stats.steps} steps, expected at most ${
        MAX_PARSE_STEPS + 1
      }`,
    );
    assert.ok(stats.steps <= 32, `a chain must stop at the per-name hop limit: ${stats.steps}`);
  }
});

Deno.test("DnsServer answers the pointer-chain attack FORMERR over TCP and keeps answering", async () => {
  const zone = new MeshZone({ domain: "mesh", ttlSeconds: 5 });
  zone.replace([{ namespace: "shop", name: "web", ipv4: ["198.51.100.10"], ipv6: [] }]);
  const registry = new Registry();
  const server = new DnsServer({
    hostname: HOST,
    port: 0,
    zone,
    registry,
    logger: new Logger({ level: "error", write: () => {} }),
  });
  server.start();
  try {
    for (let i = 0; i < 3; i++) {
      const reply = await tcpQuery(server.port, pointerChainQuery(0x4200 + i));
      assert.equal((reply[0]! << 8) | reply[1]!, 0x4200 + i, "the query's id");
      assert.equal(reply[2]! & 0x80, 0x80, "QR");
      assert.equal(reply[3]! & 0x0f, 1, "FORMERR");
    }
    const tooMany = await tcpQuery(server.port, chainedRecordsQuery(0x77, 8));
    assert.equal(tooMany[3]! & 0x0f, 1, "FORMERR for chained owners");
    // A normal query still gets its answer, over both transports.
    const out = await new Deno.Command("dig", {
      args: [
        `@${HOST}`,
        "-p",
        String(server.port),
        "+time=2",
        "+tries=1",
        "+short",
        "web.shop.mesh",
      ],
      stdout: "piped",
    }).output();
    assert.equal(new TextDecoder().decode(out.stdout).trim(), "198.51.100.10");
    const tcp = await new Deno.Command("dig", {
      args: [
        `@${HOST}`,
        "-p",
        String(server.port),
        "+tcp",
        "+time=2",
        "+tries=1",
        "+short",
        "web.shop.mesh",
      ],
      stdout: "piped",
    }).output();
    assert.equal(new TextDecoder().decode(tcp.stdout).trim(), "198.51.100.10");
    assert.match(registry.render(), /meshd_dns_queries_total\{transport="tcp",rcode="FORMERR"\} 4/);
  } finally {
    await server.stop();
  }
});
