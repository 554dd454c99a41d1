/**
 * The sockmap experiment's loader and programs (`bpf/sockmap_accel.bpf.c`, loaded by
 * `tests/bench/sockmap_accel.ts`), checked for real so the sockmap benchmark measures what it
 * says: sockets of the scratch cgroup go into the sockhash, sends reach the local peer by the
 * redirect with every byte intact, sockets outside the cgroup are left alone, and nothing
 * stays attached afterwards.
 *
 * Run with `deno test -A tests/ebpf/`; needs root and `bash bpf/build.sh` first.
 */
import assert from "node:assert/strict";
import { EbpfEnv } from "../testenv/ebpf_env.ts";
import { waitFor } from "../testenv/process.ts";
import { findLibbpf } from "../../src/datapath/mod.ts";
import { SOCKMAP_OBJECT, SockmapAccel, statsSince } from "../bench/sockmap_accel.ts";

const SOCK = new URL("./sock_tool.ts", import.meta.url).pathname;

type TcpResult = { by: Record<string, number>; failed: number; errors: unknown };
type BulkResult = { sent: number; received: number; same: boolean };

Deno.test("sockmap experiment: local sockets of the cgroup reach their peer by sk_msg redirect, bytes intact", async (t) => {
  const env = await EbpfEnv.create(["fd00:2::1"]);
  let accel: SockmapAccel | null = null;
  try {
    accel = SockmapAccel.load(findLibbpf()!, await Deno.readFile(SOCKMAP_OBJECT));
    accel.enable(env.cgroup);
    assert.deepEqual(await env.attached(), ["accel_sockops"]);
    const servers = [
      env.spawn(Deno.execPath(), ["run", "--allow-net", SOCK, "serve", "a", "127.0.0.1", "7000"], {
        inCgroup: true,
      }),
      env.spawn(Deno.execPath(), ["run", "--allow-net", SOCK, "serve", "b", "fd00:2::1", "7000"], {
        inCgroup: true,
      }),
      env.spawn(Deno.execPath(), ["run", "--allow-net", SOCK, "echo", "127.0.0.1", "7001"], {
        inCgroup: true,
      }),
    ];
    await waitFor(
      "the servers",
      () => servers.every((s) => s.stdout.includes("ready")) || undefined,
    );

    await t.step(
      "IPv4 and IPv6: both ends are added, and the server's send is redirected",
      async () => {
        for (const host of ["127.0.0.1", "fd00:2::1"]) {
          const before = accel!.stats();
          const r = await env.deno<TcpResult>(SOCK, ["tcp", host, "7000", "20"], {
            inCgroup: true,
          });
          assert.equal(r.failed, 0, JSON.stringify(r.errors));
          assert.equal(Object.values(r.by)[0], 20);
          const d = statsSince(before, accel!.stats());
          // Two ends per connection; the one send per connection (the name) went by the redirect.
          assert.deepEqual(d, { added: 40, addFailed: 0, redirected: 20, passed: 0 }, host);
        }
      },
    );

    await t.step("4 MiB echoed both ways by redirect comes back whole and in order", async () => {
      const before = accel!.stats();
      const r = await env.deno<BulkResult>(SOCK, ["bulk", "127.0.0.1", "7001", String(4 << 20)], {
        inCgroup: true,
      });
      assert.deepEqual(r, { sent: 4 << 20, received: 4 << 20, same: true });
      const d = statsSince(before, accel!.stats());
      assert.equal(d.added, 2);
      assert.ok(d.redirected >= 2, `redirected ${d.redirected}`);
      assert.equal(d.passed, 0);
    });

    await t.step(
      "a client outside the cgroup is not added and its sends are not redirected",
      async () => {
        const before = accel!.stats();
        const r = await env.deno<TcpResult>(SOCK, ["tcp", "127.0.0.1", "7000", "5"]);
        assert.equal(r.failed, 0, JSON.stringify(r.errors));
        // The server's ends are in the cgroup and are added; their peers are not in the map,
        // so the server's sends take the normal path.
        assert.deepEqual(statsSince(before, accel!.stats()), {
          added: 5,
          addFailed: 0,
          redirected: 0,
          passed: 5,
        });
      },
    );

    await t.step(
      "disabled: new connections are plain TCP; closed: nothing stays attached",
      async () => {
        accel!.disable();
        assert.deepEqual(await env.attached(), []);
        const before = accel!.stats();
        const r = await env.deno<TcpResult>(SOCK, ["tcp", "127.0.0.1", "7000", "5"], {
          inCgroup: true,
        });
        assert.equal(r.failed, 0, JSON.stringify(r.errors));
        assert.deepEqual(statsSince(before, accel!.stats()), {
          added: 0,
          addFailed: 0,
          redirected: 0,
          passed: 0,
        });
        accel!.close();
        accel = null;
        assert.deepEqual(await env.attached(), []);
      },
    );
  } finally {
    accel?.close();
    await env.remove();
  }
});
