/**
 * Unconnected UDP through the eBPF hooks: `cgroup/sendmsg4/6` choose a backend per socket, so
 * every datagram of one socket reaches the same backend (QUIC, DTLS and any UDP session need
 * that), while different sockets still spread over the backends. meshd's own loader writes the
 * maps; the sockets run in a loopback-only namespace and a scratch cgroup, removed afterwards.
 *
 * Run with `deno test -A tests/ebpf/`; needs root and `bash bpf/build.sh` first.
 */
import assert from "node:assert/strict";
import { EbpfEnv } from "../testenv/ebpf_env.ts";
import { waitFor } from "../testenv/process.ts";
import {
  type DatapathEntry,
  DEFAULT_BPF_OBJECT,
  EbpfDatapath,
  findLibbpf,
} from "../../src/datapath/mod.ts";
import { Logger } from "../../src/observability/mod.ts";

const SOCK = new URL("./sock_tool.ts", import.meta.url).pathname;
const quiet = new Logger({ level: "error", write: () => {} });

const V4 = ["127.0.70.1", "127.0.70.2", "127.0.70.3"];
const V6 = ["fd00:70::1", "fd00:70::2", "fd00:70::3"];
const NAMES = ["a", "b", "c"];

const entry = (family: 4 | 6, address: string, backends: string[]): DatapathEntry => ({
  family,
  address,
  port: 7000,
  protocol: "udp",
  backends: backends.map((a) => ({ address: a, port: 7000 })),
  redirect: false,
  service: `default/udp${family}:7000`,
});

type OneSocket = { by: Record<string, number>; from: string[]; failed: number };
type ManySockets = { sockets: Record<string, number>[]; failed: number };

Deno.test("cgroup/sendmsg4/6 send every datagram of one unconnected UDP socket to the same backend", async (t) => {
  const env = await EbpfEnv.create(V6);
  let dp: EbpfDatapath | null = null;
  try {
    const servers = [...V4, ...V6].map((ip, i) =>
      env.spawn(Deno.execPath(), ["run", "--allow-net", SOCK, "serve", NAMES[i % 3]!, ip, "7000"])
    );
    await waitFor(
      "the backends",
      () => servers.every((s) => s.stdout.includes("ready")) || undefined,
      20_000,
    );
    dp = EbpfDatapath.load({
      libbpfPath: findLibbpf()!,
      object: await Deno.readFile(DEFAULT_BPF_OBJECT),
      cgroup: env.cgroup,
      pinDir: `${env.bpffs}/meshd`,
      logger: quiet,
    });
    dp.apply([entry(4, "10.96.70.1", V4), entry(6, "fd00:96::70", V6)], 1);

    for (const [label, mesh] of [["IPv4", "10.96.70.1"], ["IPv6", "fd00:96::70"]]) {
      await t.step(`${label}: 30 datagrams of one socket all reach one backend`, async () => {
        for (let run = 0; run < 3; run++) {
          const r = await env.deno<OneSocket>(SOCK, ["udp", mesh!, "7000", "30"], {
            inCgroup: true,
          });
          assert.equal(r.failed, 0, `a datagram went unanswered: ${JSON.stringify(r)}`);
          assert.equal(
            Object.keys(r.by).length,
            1,
            `one socket's datagrams were answered by ${JSON.stringify(r.by)}`,
          );
          assert.equal(Object.values(r.by)[0], 30);
          assert.equal(r.from.length, 1, `answers came from ${r.from.join(", ")}`);
        }
      });

      await t.step(`${label}: 30 sockets spread over more than one backend`, async () => {
        const r = await env.deno<ManySockets>(SOCK, ["udps", mesh!, "7000", "30", "5"], {
          inCgroup: true,
        });
        assert.equal(r.failed, 0);
        assert.equal(r.sockets.length, 30);
        const chosen = new Map<string, number>();
        for (const by of r.sockets) {
          assert.equal(Object.keys(by).length, 1, `one socket answered by ${JSON.stringify(by)}`);
          const name = Object.keys(by)[0]!;
          chosen.set(name, (chosen.get(name) ?? 0) + 1);
        }
        console.log(
          `  ${label}: sockets per backend ${JSON.stringify(Object.fromEntries(chosen))}`,
        );
        // Each socket picks one of 3 backends: all 30 on one would be a 3 * 3^-30 chance.
        assert.ok(chosen.size >= 2, `30 sockets all went to ${[...chosen]}`);
      });
    }

    await t.step(
      "connect() on UDP still goes to one backend, and getpeername shows the mesh address",
      async () => {
        for (let run = 0; run < 3; run++) {
          const r = await env.deno<{ by: Record<string, number>; peer: string; failed: number }>(
            SOCK,
            ["udpconn", "10.96.70.1", "7000", "20"],
            { inCgroup: true, perms: ["--allow-ffi"] },
          );
          assert.equal(r.failed, 0, JSON.stringify(r));
          assert.equal(Object.keys(r.by).length, 1, JSON.stringify(r.by));
          assert.equal(Object.values(r.by)[0], 20);
          assert.equal(r.peer, "10.96.70.1:7000");
        }
      },
    );
  } finally {
    dp?.remove();
    await env.remove();
  }
});
