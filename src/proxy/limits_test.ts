import assert from "node:assert/strict";
import { defaultLimits, readFdLimit } from "./limits.ts";
import { ownAddress } from "./own_address.ts";

const LIMITS = `Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            20000                20000                files
`;

Deno.test("readFdLimit() reads the soft open-file limit, and null when it cannot", () => {
  assert.equal(readFdLimit(() => LIMITS), 20000);
  assert.equal(readFdLimit(() => LIMITS.replace("20000   ", "unlimited")), 1_048_576);
  assert.equal(readFdLimit(() => "nothing here"), null);
  assert.equal(
    readFdLimit(() => {
      throw new Deno.errors.NotFound("no /proc");
    }),
    null,
  );
});

Deno.test("defaultLimits() keeps traffic under 80% of the fd limit and keeps given caps", () => {
  const d = defaultLimits(20_000);
  assert.deepEqual(d, {
    maxConnections: 7000,
    maxConnectionsPerSource: 437,
    maxUdpFlows: 2000,
    maxUdpFlowsPerListener: 1000,
    maxUdpFlowsPerSource: 125,
  });
  assert.ok(2 * d.maxConnections + d.maxUdpFlows <= 0.8 * 20_000);
  const g = defaultLimits(1024, { maxConnections: 10, maxConnectionsPerSource: 50 });
  assert.equal(g.maxConnections, 10);
  assert.equal(g.maxConnectionsPerSource, 10, "per source never above the total");
  const u = defaultLimits(1024);
  assert.equal(u.maxUdpFlows, 102);
  assert.equal(u.maxUdpFlowsPerSource, 16, "at least 16 UDP flows per source");
  assert.equal(defaultLimits(1024, { maxUdpFlowsPerListener: 4 }).maxUdpFlowsPerSource, 4);
  assert.equal(
    defaultLimits(1024, { maxUdpFlows: 8, maxUdpFlowsPerSource: 50 }).maxUdpFlowsPerSource,
    8,
  );
});

Deno.test("ownAddress() knows the listen address, and every local one for a wildcard", () => {
  const one = ownAddress("127.0.50.1", () => []);
  assert.equal(one("127.0.50.1"), true);
  assert.equal(one("127.0.50.2"), false);
  const any = ownAddress("0.0.0.0", () => ["192.0.2.7", "fe80::1"]);
  assert.equal(any("127.3.4.5"), true);
  assert.equal(any("::1"), true);
  assert.equal(any("192.0.2.7"), true);
  assert.equal(any("[fe80::1]"), true);
  assert.equal(any("192.0.2.8"), false);
});

Deno.test("ownAddress() knows the listen address in every spelling the resolver reads", () => {
  const one = ownAddress("127.0.100.3", () => []);
  // IPv4-mapped IPv6 (RFC 4291 §2.5.5.2) in hex and in full; inet_aton forms.
  for (
    const a of [
      "::ffff:7f00:6403",
      "[::FFFF:7F00:6403]",
      "0:0:0:0:0:ffff:127.0.100.3",
      "0000:0000:0000:0000:0000:FFFF:7f00:6403",
      "2130732035",
      "127.0.25603",
      "0x7f.0.100.3",
      "0177.0.100.3",
      "127.000.100.003",
    ]
  ) {
    assert.equal(one(a), true, a);
  }
  for (const a of ["127.0.100.4", "::ffff:7f00:6404", "::1", "128.0.100.3", "127.0.100.3.4"]) {
    assert.equal(one(a), false, a);
  }
  const loop6 = ownAddress("::1", () => []);
  for (const a of ["0:0:0:0:0:0:0:1", "0::1", "::", "[::0001]"]) assert.equal(loop6(a), true, a);
  const local = ownAddress("127.0.0.1", () => []);
  for (const a of ["0.0.0.0", "0", "localhost", "127.1"]) assert.equal(local(a), true, a);
  const any = ownAddress("::", () => ["192.0.2.7"]);
  for (const a of ["0:0::1", "::ffff:7f63:1", "3221225991", "localhost", "::ffff:c000:207"]) {
    assert.equal(any(a), true, a);
  }
  assert.equal(any("192.0.2.8"), false);
});
