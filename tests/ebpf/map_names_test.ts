/**
 * Map names and layouts for real: a meshd of the versioned names (`meshd_svc4_v2`) takes over
 * the unversioned layout-2 pins of the meshd before it while connections run; and pins it
 * must not read (another layout's names, or its own names with another value size) are
 * replaced without being read. In a loopback-only network namespace, a scratch cgroup and a
 * bpffs of the test's own, all removed afterwards.
 *
 * Run with `deno test -A tests/ebpf/`; needs root, clang and `bash bpf/build.sh` first.
 */
import assert from "node:assert/strict";
import { EbpfEnv } from "../testenv/ebpf_env.ts";
import { timeScale, waitFor } from "../testenv/process.ts";
import { Libbpf } from "../../ffi/libbpf.ts";
import {
  type DatapathEntry,
  DEFAULT_BPF_OBJECT,
  EbpfDatapath,
  findLibbpf,
} from "../../src/datapath/mod.ts";
import { kernelMap } from "../../src/datapath/datapath_map.ts";
import { legacyMapName, MAP_KEYS, mapName, PROGRAMS } from "../../src/datapath/ebpf_loader.ts";
import { MapWriter } from "../../src/datapath/map_writer.ts";
import { STRUCTS } from "../../src/datapath/layout.ts";
import { Logger } from "../../src/observability/mod.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const SOCK = `${ROOT}tests/ebpf/sock_tool.ts`;
const LEGACY_SRC = `${ROOT}tests/fixtures/bpf/unversioned_layout2`;
const BACKENDS = ["127.0.66.1", "127.0.66.2"];
const VIP = { family: 4, address: "10.96.0.10", port: 7000, protocol: "tcp" } as const;
const ENTRY: DatapathEntry = {
  ...VIP,
  backends: BACKENDS.map((address) => ({ address, port: 7000 })),
  redirect: false,
  service: "default/echo:7000",
};

/** Builds the layout-2 object of the unversioned names with clang, into `dir`. */
async function buildLegacyObject(dir: string): Promise<Uint8Array<ArrayBuffer>> {
  const out = `${dir}/legacy.bpf.o`;
  const arch = (await new Deno.Command("uname", { args: ["-m"] }).output()).stdout;
  const o = await new Deno.Command("clang", {
    args: [
      "-O2",
      "-g",
      "-target",
      "bpf",
      `-I${LEGACY_SRC}`,
      `-I/usr/include/${new TextDecoder().decode(arch).trim()}-linux-gnu`,
      "-c",
      `${LEGACY_SRC}/meshd_sock.bpf.c`,
      "-o",
      out,
    ],
  }).output();
  if (!o.success) throw new Error(`clang: ${new TextDecoder().decode(o.stderr)}`);
  return await Deno.readFile(out);
}

/**
 * Pins what the meshd before versioned names left: maps under `meshd_<key>`, links attached
 * to `cgroup` as `link_<program>`, one service written, version 41; then lets go of it all.
 */
function pinLegacy(libbpfPath: string, object: Uint8Array<ArrayBuffer>, env: EbpfEnv): void {
  const pinDir = `${env.bpffs}/meshd`;
  Deno.mkdirSync(pinDir, { recursive: true });
  const bpf = Libbpf.open(libbpfPath);
  const obj = bpf.openObject(object);
  try {
    bpf.load(obj);
    const fd = (key: (typeof MAP_KEYS)[number]) => {
      const m = bpf.map(obj, legacyMapName(key));
      bpf.pinMap(m, `${pinDir}/${legacyMapName(key)}`);
      return bpf.mapFd(m);
    };
    const fds = Object.fromEntries(MAP_KEYS.map((k) => [k, fd(k)])) as Record<string, number>;
    const sizes = (k: keyof typeof STRUCTS, v: keyof typeof STRUCTS) => ({
      key: STRUCTS[k].size,
      value: STRUCTS[v].size,
    });
    const writer = new MapWriter({
      svc4: kernelMap(bpf, fds["svc4"]!, sizes("meshd_svc4_key", "meshd_svc")),
      svc6: kernelMap(bpf, fds["svc6"]!, sizes("meshd_svc6_key", "meshd_svc")),
      be4: kernelMap(bpf, fds["be4"]!, sizes("meshd_be_key", "meshd_be4")),
      be6: kernelMap(bpf, fds["be6"]!, sizes("meshd_be_key", "meshd_be6")),
      meta: kernelMap(bpf, fds["meta"]!, { key: 4, value: STRUCTS.meshd_meta.size }),
    }, {
      now: () => bpf.bootTimeNs(),
      cgroupIno: BigInt(Deno.statSync(env.cgroup).ino!),
      graceMs: 600_000,
    });
    writer.apply([ENTRY], 41);
    const cgroupFd = bpf.openDir(env.cgroup);
    try {
      for (const name of PROGRAMS) {
        const link = bpf.attachCgroup(bpf.program(obj, name), cgroupFd);
        bpf.pinLink(link, `${pinDir}/link_${name}`);
        bpf.closeLink(link);
      }
    } finally {
      bpf.closeFd(cgroupFd);
    }
  } finally {
    bpf.closeObject(obj);
    bpf.close();
  }
}

const pins = (env: EbpfEnv) =>
  [...Deno.readDirSync(`${env.bpffs}/meshd`)].map((e) => e.name).sort();

async function bpftool(args: string[]): Promise<string> {
  const o = await new Deno.Command("bpftool", { args }).output();
  if (!o.success) {
    throw new Error(`bpftool ${args.join(" ")}: ${new TextDecoder().decode(o.stderr)}`);
  }
  return new TextDecoder().decode(o.stdout);
}

/** The ids of the pinned links: the same ids means the hooks were never detached. */
async function linkIds(env: EbpfEnv): Promise<number[]> {
  const ids: number[] = [];
  for (const p of PROGRAMS) {
    const out = await bpftool(["link", "show", "pinned", `${env.bpffs}/meshd/link_${p}`, "-j"]);
    ids.push((JSON.parse(out) as { id: number }).id);
  }
  return ids;
}

/** A logger that keeps its lines, to assert on the warnings. */
function recorder(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  return { logger: new Logger({ level: "debug", write: (l) => lines.push(l) }), lines };
}

Deno.test("EbpfDatapath.load() takes over unversioned layout-2 pins, maps copied and links switched under load, and leaves none of them", async () => {
  const env = await EbpfEnv.create();
  try {
    const servers = BACKENDS.map((ip, i) =>
      env.spawn(Deno.execPath(), ["run", "--allow-net", SOCK, "serve", `s${i}`, ip, "7000"])
    );
    await waitFor(
      "the backends",
      () => servers.every((s) => s.stdout.includes("ready")) || undefined,
      20_000,
    );
    const libbpfPath = findLibbpf()!;
    pinLegacy(libbpfPath, await buildLegacyObject(env.dir), env);
    const loop = env.spawn(
      Deno.execPath(),
      [
        "run",
        "--allow-net",
        SOCK,
        "loop",
        VIP.address,
        String(VIP.port),
        String(60_000 * timeScale()),
      ],
      { inCgroup: true },
    );
    const okNow = () =>
      loop.stdout.length ? (JSON.parse(loop.stdout.at(-1)!) as { ok: number }).ok : 0;
    await waitFor(
      "the loop answering through the old hooks",
      () => okNow() > 20 || undefined,
      20_000,
    );

    const linksBefore = await linkIds(env);
    const { logger, lines } = recorder();
    const dp = EbpfDatapath.load({
      libbpfPath,
      object: await Deno.readFile(DEFAULT_BPF_OBJECT),
      cgroup: env.cgroup,
      pinDir: `${env.bpffs}/meshd`,
      logger,
    });
    try {
      assert.equal(dp.tookOver, true, lines.join("\n"));
      assert.equal(dp.stats().version, 41);
      assert.deepEqual(dp.lookup(VIP), { count: 2, redirect: false });
      const at = okNow();
      await waitFor(
        "the loop answering through the new hooks",
        () => okNow() > at + 20 || undefined,
        20_000,
      );
      await loop.closeStdin();
      await loop.wait();
      const total = loop.last<{ ok: number; failed: number; errors: unknown }>();
      assert.equal(total.failed, 0, JSON.stringify(total.errors));
      assert.deepEqual(
        pins(env),
        [...MAP_KEYS.map((k) => mapName(k)), ...PROGRAMS.map((p) => `link_${p}`)].sort(),
      );
      assert.equal((await env.attached()).length, 8, "one program per hook, not two");
      assert.deepEqual(await linkIds(env), linksBefore, "the same links, their programs swapped");
      // The next config is a diff against what was copied.
      assert.deepEqual(dp.apply([ENTRY], 42), { written: 1, removed: 0 });
      assert.deepEqual(dp.apply([ENTRY], 43), { written: 0, removed: 0 });
    } finally {
      dp.remove();
    }
    assert.deepEqual(await env.attached(), [], "nothing left attached");
  } finally {
    await env.remove();
  }
});

Deno.test("EbpfDatapath.load() reads no pinned map of another shape or layout, and replaces them", async (t) => {
  const env = await EbpfEnv.create();
  const pinDir = `${env.bpffs}/meshd`;
  const libbpfPath = findLibbpf()!;
  const object = await Deno.readFile(DEFAULT_BPF_OBJECT);
  const load = (logger: Logger) =>
    EbpfDatapath.load({ libbpfPath, object, cgroup: env.cgroup, pinDir, logger });
  try {
    const first = load(recorder().logger);
    first.apply([ENTRY], 5);
    first.close();

    await t.step(
      "its own meta name with a longer value (40 bytes) is not read: a lookup would overrun",
      async () => {
        const meta = `${pinDir}/${mapName("meta")}`;
        await Deno.remove(meta);
        await bpftool([
          "map",
          "create",
          meta,
          "type",
          "array",
          "key",
          "4",
          "value",
          "40",
          "entries",
          "1",
          "name",
          mapName("meta"),
        ]);
        // Layout 2 in its first bytes: read into a 32-byte buffer, it would pass for ours.
        await bpftool([
          "map",
          "update",
          "pinned",
          meta,
          "key",
          "0",
          "0",
          "0",
          "0",
          "value",
          ..."2 0 0 0 0 0 0 0 5 0 0 0 0 0 0 0".split(" "),
          ...Array(24).fill("0"),
        ]);
        const { logger, lines } = recorder();
        const dp = load(logger);
        try {
          assert.equal(dp.tookOver, false);
          assert.match(
            lines.join("\n"),
            /cannot be taken over.*meshd_meta_v2 has valueSize 40, expected 32/,
          );
          const info = JSON.parse(await bpftool(["map", "show", "pinned", meta, "-j"]));
          assert.equal(info.bytes_value, 32, "replaced by a map of this layout");
          assert.equal((await env.attached()).length, 8);
        } finally {
          dp.close();
        }
      },
    );

    await t.step(
      "a newer layout's pins (_v3, a newer meshd rolled back) are removed unread; the links stay attached",
      async () => {
        // What a layout-3 meshd would leave: its maps under its names, links on the cgroup.
        for (const k of MAP_KEYS) await Deno.remove(`${pinDir}/${mapName(k)}`);
        await bpftool([
          "map",
          "create",
          `${pinDir}/${mapName("meta", 3)}`,
          "type",
          "array",
          "key",
          "4",
          "value",
          "40",
          "entries",
          "1",
          "name",
          mapName("meta", 3),
        ]);
        await bpftool([
          "map",
          "create",
          `${pinDir}/${mapName("svc4", 3)}`,
          "type",
          "hash",
          "key",
          "8",
          "value",
          "24",
          "entries",
          "16",
          "name",
          mapName("svc4", 3),
        ]);
        const { logger, lines } = recorder();
        const dp = load(logger);
        try {
          assert.equal(dp.tookOver, false);
          assert.match(lines.join("\n"), /removed eBPF map pins not taken over/);
          assert.deepEqual(
            pins(env),
            [...MAP_KEYS.map((k) => mapName(k)), ...PROGRAMS.map((p) => `link_${p}`)].sort(),
          );
          assert.equal((await env.attached()).length, 8, "programs swapped in the same links");
          dp.apply([ENTRY], 6);
          assert.deepEqual(dp.lookup(VIP), { count: 2, redirect: false });
        } finally {
          dp.remove();
        }
        assert.deepEqual(await env.attached(), []);
      },
    );
  } finally {
    await env.remove();
  }
});
