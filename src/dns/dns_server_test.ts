import assert from "node:assert/strict";
import { Logger, Registry } from "../observability/mod.ts";
import { DnsServer } from "./dns_server.ts";
import { MeshZone } from "./mesh_zone.ts";
import { dig } from "./_testing.ts";

async function withServer(
  fn: (port: number, zone: MeshZone, registry: Registry) => Promise<void>,
): Promise<void> {
  const zone = new MeshZone({ domain: "mesh", ttlSeconds: 5 });
  zone.replace([
    { namespace: "shop", name: "web", ipv4: ["198.51.100.10"], ipv6: ["fd00:10:96::a"] },
    {
      namespace: "shop",
      name: "wide",
      ipv4: Array.from({ length: 60 }, (_, i) => `198.51.100.${i + 100}`),
      ipv6: [],
    },
  ]);
  const registry = new Registry();
  const server = new DnsServer({
    hostname: "127.0.0.1",
    port: 0,
    zone,
    registry,
    logger: new Logger({ level: "error", write: () => {} }),
  });
  server.start();
  try {
    await fn(server.port, zone, registry);
  } finally {
    await server.stop();
  }
}

Deno.test("DnsServer answers A and AAAA over UDP, authoritative, as dig sees it", async () => {
  await withServer(async (port) => {
    const a = await dig(port, "web.shop.mesh", "A");
    assert.equal(a.status, "NOERROR");
    assert.ok(a.flags.includes("aa"), `flags ${a.flags}`);
    assert.deepEqual(a.answer, ["web.shop.mesh. 5 IN A 198.51.100.10"]);
    const aaaa = await dig(port, "web.shop.mesh", "AAAA");
    assert.deepEqual(aaaa.answer, ["web.shop.mesh. 5 IN AAAA fd00:10:96::a"]);
  });
});

Deno.test("DnsServer answers NXDOMAIN with the zone's SOA for unknown names", async () => {
  await withServer(async (port) => {
    const r = await dig(port, "nope.shop.mesh", "A");
    assert.equal(r.status, "NXDOMAIN");
    assert.equal(r.answer.length, 0);
    assert.match(
      r.authority[0] ?? "",
      /^mesh\. 5 IN SOA meshd\.mesh\. hostmaster\.mesh\. \d+ 60 10 3600 5$/,
    );
  });
});

Deno.test("DnsServer refuses names outside the mesh domain", async () => {
  await withServer(async (port) => {
    const r = await dig(port, "example.com", "A");
    assert.equal(r.status, "REFUSED");
    assert.ok(!r.flags.includes("aa"));
  });
});

Deno.test("DnsServer answers over TCP, several queries on one connection", async () => {
  await withServer(async (port) => {
    // +keepopen sends the queries one after another on the same TCP connection
    const out = await new Deno.Command("dig", {
      args: [
        `@127.0.0.1`,
        "-p",
        String(port),
        "+tcp",
        "+keepopen",
        "+short",
        "web.shop.mesh",
        "A",
        "web.shop.mesh",
        "AAAA",
      ],
      stdout: "piped",
    }).output();
    assert.deepEqual(new TextDecoder().decode(out.stdout).trim().split("\n"), [
      "198.51.100.10",
      "fd00:10:96::a",
    ]);
  });
});

Deno.test("DnsServer truncates a UDP answer past 512 bytes and gives it whole over TCP", async () => {
  await withServer(async (port, _zone, registry) => {
    const udp = await dig(port, "+noedns", "+ignore", "wide.shop.mesh", "A");
    assert.equal(udp.status, "NOERROR");
    assert.ok(udp.flags.includes("tc"), `flags ${udp.flags}`);
    assert.equal(udp.answer.length, 0);
    // Without +ignore dig retries over TCP, as a stub resolver does
    const whole = await dig(port, "+noedns", "wide.shop.mesh", "A");
    assert.equal(whole.answer.length, 60);
    // With EDNS the 60 answers (about 1 kB) fit in one datagram
    const edns = await dig(port, "+bufsize=1232", "+ignore", "wide.shop.mesh", "A");
    assert.ok(!edns.flags.includes("tc"));
    assert.equal(edns.answer.length, 60);
    const metrics = registry.render();
    assert.match(metrics, /meshd_dns_queries_total\{transport="tcp",rcode="NOERROR"\} 1/);
  });
});

Deno.test("DnsServer answers what the zone holds now", async () => {
  await withServer(async (port, zone) => {
    zone.replace([{ namespace: "shop", name: "web", ipv4: ["198.51.100.20"], ipv6: [] }]);
    assert.deepEqual((await dig(port, "web.shop.mesh")).answer, [
      "web.shop.mesh. 5 IN A 198.51.100.20",
    ]);
    assert.equal((await dig(port, "wide.shop.mesh")).status, "NXDOMAIN");
  });
});

Deno.test("DnsServer answers FORMERR to a malformed query and drops what has no header", async () => {
  await withServer(async (port, _zone, registry) => {
    const sock = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    try {
      const to: Deno.NetAddr = { transport: "udp", hostname: "127.0.0.1", port };
      await sock.send(Uint8Array.of(1, 2, 3), to); // no header: dropped
      // a header and a question cut off in its name
      await sock.send(Uint8Array.of(0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 0x61), to);
      const [reply] = await sock.receive();
      assert.equal((reply[0]! << 8) | reply[1]!, 0xabcd, "the query's id");
      assert.equal(reply[2]! & 0x80, 0x80, "QR");
      assert.equal(reply[3]! & 0x0f, 1, "FORMERR");
      assert.match(registry.render(), /rcode="dropped"\} 1/);
    } finally {
      sock.close();
    }
  });
});

Deno.test("DnsServer closes a TCP connection that sends nothing", async () => {
  const zone = new MeshZone({ domain: "mesh" });
  const server = new DnsServer({
    hostname: "127.0.0.1",
    port: 0,
    zone,
    tcpIdleTimeoutMs: 100,
    logger: new Logger({ level: "error", write: () => {} }),
  });
  server.start();
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    const t0 = performance.now();
    assert.equal(await conn.read(new Uint8Array(1)), null);
    assert.ok(performance.now() - t0 < 5000);
    conn.close();
  } finally {
    await server.stop();
  }
});
