import assert from "node:assert/strict";
import { countSockets, successorBound } from "./successor.ts";

const HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n";
// 0x1388 = 5000, 0x1F40 = 8000, 0x14E9 = 5353
const TCP = HEAD +
  "   0: 00000000:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 11 1\n" +
  "   1: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 12 1\n" +
  "   2: 0100007F:1388 0100007F:C000 01 00000000:00000000 00:00000000 00000000 0 0 13 1\n";
const TCP6 = HEAD +
  "   0: 00000000000000000000000000000000:1388 00000000000000000000000000000000:0000 0A 0 0\n";
const UDP = HEAD +
  "   0: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 21 2\n" +
  "   1: 0100007F:14E9 0100007F:C001 01 00000000:00000000 00:00000000 00000000 0 0 22 2\n";

Deno.test("countSockets() counts listening TCP sockets and unconnected UDP ones per port", () => {
  assert.deepEqual([...countSockets(TCP, "tcp")], [[5000, 1], [8000, 1]]);
  assert.deepEqual([...countSockets(UDP, "udp")], [[5353, 1]]);
  assert.deepEqual([...countSockets(HEAD, "tcp")], []);
});

Deno.test("successorBound() holds once every TCP and UDP port has a second socket", async () => {
  const tables = { tcp: TCP, tcp6: HEAD, udp: UDP, udp6: HEAD };
  const read = (n: keyof typeof tables) => Promise.resolve(tables[n]);
  assert.equal(await successorBound({ tcp: [5000], udp: [5353] }, read), false);
  tables.tcp6 = TCP6; // a successor's HTTP entrypoint, bound on ::
  assert.equal(await successorBound({ tcp: [5000], udp: [] }, read), true);
  assert.equal(await successorBound({ tcp: [5000, 8000], udp: [] }, read), false);
  assert.equal(await successorBound({ tcp: [5000], udp: [5353] }, read), false);
  tables.udp = UDP + "   2: 00000000:14E9 00000000:0000 07 0 0\n";
  assert.equal(await successorBound({ tcp: [5000], udp: [5353] }, read), true);
  // A table that cannot be read is no successor.
  const broken = () => Promise.reject(new Error("EACCES"));
  assert.equal(await successorBound({ tcp: [5000], udp: [] }, broken), false);
});

Deno.test("successorBound() counts past the sockets this meshd's own workers hold", async () => {
  // Two proxy workers on 5000 (one on 0.0.0.0, one on ::), one DNS socket on UDP 5353.
  const tables = { tcp: TCP, tcp6: TCP6, udp: UDP, udp6: HEAD };
  const read = (n: keyof typeof tables) => Promise.resolve(tables[n]);
  const ports = { tcp: [5000], udp: [5353], own: { tcp: new Map([[5000, 2]]) } };
  assert.equal(await successorBound(ports, read), false);
  tables.tcp = TCP + "   3: 00000000:1388 00000000:0000 0A 0 0\n"; // the successor's
  assert.equal(await successorBound(ports, read), false); // UDP 5353 has no second socket
  tables.udp = UDP + "   2: 00000000:14E9 00000000:0000 07 0 0\n";
  assert.equal(await successorBound(ports, read), true);
});

Deno.test("successorBound() sees a second SO_REUSEPORT listener on a real port", async () => {
  const a = Deno.listen({ hostname: "127.0.0.1", port: 0, reusePort: true });
  const port = (a.addr as Deno.NetAddr).port;
  try {
    assert.equal(await successorBound({ tcp: [port], udp: [] }), false);
    const b = Deno.listen({ hostname: "127.0.0.1", port, reusePort: true });
    try {
      assert.equal(await successorBound({ tcp: [port], udp: [] }), true);
    } finally {
      b.close();
    }
  } finally {
    a.close();
  }
});
