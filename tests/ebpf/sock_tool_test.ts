/**
 * `sock_tool.ts`'s own behaviour that the eBPF tests lean on, run on loopback without eBPF:
 * the UDP modes' answer wait stretches with `$MESHD_TEST_TIME_SCALE`, as every other wait of
 * the tier does (the real-kernel VMs run it about ten times slower than the host).
 *
 * @module
 */
import assert from "node:assert/strict";
import { TIME_SCALE_PERM } from "../testenv/ebpf_env.ts";
import { freePort } from "../testenv/process.ts";

const SOCK = new URL("./sock_tool.ts", import.meta.url).pathname;
const HOST = "127.0.65.1";
/** Longer than the unscaled answer wait (2 s), well under the scaled one (2 s x 4). */
const ANSWER_DELAY_MS = 3_000;
const SCALE = "4";

/** A UDP server that answers each datagram with "late", ANSWER_DELAY_MS after it came. */
function lateServer(port: number): { close(): void } {
  const s = Deno.listenDatagram({ hostname: HOST, port, transport: "udp" });
  const timers = new Set<ReturnType<typeof setTimeout>>();
  (async () => {
    for (;;) {
      const [, from] = await s.receive();
      const t = setTimeout(() => {
        timers.delete(t);
        s.send(new TextEncoder().encode("late"), from).catch(() => {});
      }, ANSWER_DELAY_MS);
      timers.add(t);
    }
  })().catch(() => {/* closed */});
  return {
    close() {
      for (const t of timers) clearTimeout(t);
      s.close();
    },
  };
}

const cases: { name: string; perms: string[]; args: (port: number) => string[] }[] = [
  { name: "udp", perms: ["--allow-net"], args: (p) => ["udp", HOST, String(p), "1"] },
  { name: "udps", perms: ["--allow-net"], args: (p) => ["udps", HOST, String(p), "1", "1"] },
  { name: "udpconn", perms: ["--allow-ffi"], args: (p) => ["udpconn", HOST, String(p), "1"] },
];

for (const c of cases) {
  Deno.test(`sock_tool ${c.name} waits for an answer 2 s times MESHD_TEST_TIME_SCALE`, async () => {
    const port = freePort(HOST);
    const server = lateServer(port);
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", ...c.perms, TIME_SCALE_PERM, SOCK, ...c.args(port)],
        env: { MESHD_TEST_TIME_SCALE: SCALE, NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, stderr);
      const r = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!) as {
        failed: number;
      };
      assert.equal(
        r.failed,
        0,
        `an answer ${ANSWER_DELAY_MS} ms late was given up on: ${JSON.stringify(r)}`,
      );
    } finally {
      server.close();
    }
  });
}
