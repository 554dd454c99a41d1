import assert from "node:assert/strict";
import { cgroup2Root, findCgroup2, kernelVersion, mountsOfType, probeDatapath } from "./probe.ts";

const MOUNTS = [
  "sysfs /sys sysfs rw,nosuid 0 0",
  "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0",
  "bpf /sys/fs/bpf bpf rw,relatime 0 0",
].join("\n");

async function withLib(fn: (lib: string) => Promise<void>): Promise<void> {
  const lib = await Deno.makeTempFile({ prefix: "meshd-libbpf-", suffix: ".so.1" });
  try {
    await fn(lib);
  } finally {
    await Deno.remove(lib);
  }
}

Deno.test("mountsOfType() lists the mount points of one type in the table's order", () => {
  const table = `${MOUNTS}\ncgroup2 /host/sys/fs/cgroup cgroup2 rw 0 0\n`;
  assert.deepEqual(mountsOfType(table, "cgroup2"), [
    "/sys/fs/cgroup/unified",
    "/host/sys/fs/cgroup",
  ]);
  assert.deepEqual(mountsOfType(table, "bpf"), ["/sys/fs/bpf"]);
  assert.deepEqual(mountsOfType(table, "tmpfs"), []);
});

Deno.test("cgroup2Root() takes the last cgroup v2 mount, which lies over the ones before", () => {
  const table = `${MOUNTS}\ncgroup2 /host/sys/fs/cgroup cgroup2 rw 0 0`;
  assert.equal(cgroup2Root(table), "/host/sys/fs/cgroup");
  assert.equal(cgroup2Root(MOUNTS), "/sys/fs/cgroup/unified");
  assert.equal(cgroup2Root("sysfs /sys sysfs rw 0 0"), undefined);
});

Deno.test("findCgroup2() agrees with cgroup2Root() of this process's mount table", () => {
  assert.equal(findCgroup2(), cgroup2Root(Deno.readTextFileSync("/proc/self/mounts")));
});

Deno.test("kernelVersion() reads major and minor from a release string", () => {
  assert.deepEqual(kernelVersion("6.18.44-fc-v657"), [6, 18]);
  assert.deepEqual(kernelVersion("5.10.0-28-amd64"), [5, 10]);
  assert.equal(kernelVersion("unknown"), null);
});

Deno.test("probeDatapath() checks everything and names each thing it found", async () => {
  await withLib(async (lib) => {
    let tried = 0;
    const r = await probeDatapath({
      kernelRelease: "5.10.0",
      libbpfPath: lib,
      mounts: () => Promise.resolve(MOUNTS),
      programs: () => {
        tried++;
        return Promise.resolve("8 programs attached");
      },
    });
    assert.deepEqual(r.checks.map((c) => `${c.name}:${c.ok}`), [
      "kernel:true",
      "libbpf:true",
      "bpffs:true",
      "cgroup2:true",
      "programs:true",
    ]);
    assert.equal(tried, 1);
    assert.equal(r.datapath, "ebpf");
    assert.match(
      r.reason,
      /^kernel 5\.10\.0, libbpf at .*, bpffs at \/sys\/fs\/bpf, cgroup v2 at \/sys\/fs\/cgroup\/unified, 8 programs attached$/,
    );
  });
});

Deno.test("probeDatapath() reports a program load that fails, and does not try after a failed check", async () => {
  await withLib(async (lib) => {
    const failing = await probeDatapath({
      kernelRelease: "6.1.0",
      libbpfPath: lib,
      mounts: () => Promise.resolve(MOUNTS),
      programs: () => Promise.reject(new Error("cannot load the programs: Permission denied")),
    });
    assert.equal(failing.datapath, "userspace");
    assert.match(failing.reason, /^cannot load the programs: Permission denied \(found: kernel/);
    let tried = false;
    const old = await probeDatapath({
      kernelRelease: "5.4.0",
      libbpfPath: lib,
      mounts: () => Promise.resolve(MOUNTS),
      programs: () => {
        tried = true;
        return Promise.resolve("attached");
      },
    });
    assert.equal(tried, false, "the programs are not loaded on a kernel that failed its check");
    assert.equal(old.checks.at(-1)!.detail, "not tried: an earlier check failed");
    const none = await probeDatapath({
      kernelRelease: "6.1.0",
      libbpfPath: lib,
      mounts: () => Promise.resolve(MOUNTS),
    });
    assert.equal(none.reason.split(" (")[0], "the programs were not tried");
  });
});

Deno.test("probeDatapath() wants bpffs where meshd pins, and the cgroup inside cgroup v2", async () => {
  await withLib(async (lib) => {
    const r = await probeDatapath({
      kernelRelease: "6.1.0",
      libbpfPath: lib,
      mounts: () => Promise.resolve(MOUNTS),
      bpffs: "/run/other-bpffs",
      cgroup: "/sys/fs/cgroup/unified/meshd-test/node-1",
      programs: () => Promise.resolve("attached"),
    });
    const by = Object.fromEntries(r.checks.map((c) => [c.name, c]));
    assert.equal(
      by["bpffs"]!.detail,
      "no bpffs mounted at /run/other-bpffs (mount -t bpf bpf /run/other-bpffs)",
    );
    assert.equal(by["cgroup2"]!.ok, true);
    const cg = await probeDatapath({
      kernelRelease: "6.1.0",
      libbpfPath: lib,
      mounts: () => Promise.resolve(MOUNTS),
      cgroup: "/sys/fs/cgroup-v1/x",
    });
    assert.match(cg.reason, /^\/sys\/fs\/cgroup-v1\/x is not in a cgroup v2 hierarchy/);
  });
});

const fallbacks: { name: string; kernel: string; mounts: string; reason: RegExp }[] = [
  {
    name: "a kernel before 5.10",
    kernel: "5.4.0-150-generic",
    mounts: MOUNTS,
    reason: /^kernel 5\.4\.0-150-generic is older than 5\.10/,
  },
  {
    name: "a release that is not a version",
    kernel: "weird",
    mounts: MOUNTS,
    reason: /^kernel weird is older than 5\.10, or not a version/,
  },
  {
    name: "no bpffs mounted",
    kernel: "6.1.0",
    mounts: MOUNTS.split("\n").filter((l) => !l.startsWith("bpf")).join("\n"),
    reason: /^no bpffs mounted/,
  },
  {
    name: "no cgroup v2",
    kernel: "6.1.0",
    mounts: MOUNTS.split("\n").filter((l) => !l.startsWith("cgroup2")).join("\n"),
    reason: /^no cgroup v2 hierarchy mounted/,
  },
];
for (const c of fallbacks) {
  Deno.test(`probeDatapath() falls back to userspace with ${c.name}`, async () => {
    await withLib(async (lib) => {
      const r = await probeDatapath({
        kernelRelease: c.kernel,
        libbpfPath: lib,
        mounts: () => Promise.resolve(c.mounts),
      });
      assert.equal(r.datapath, "userspace");
      assert.match(r.reason, c.reason);
    });
  });
}

Deno.test("probeDatapath() says so when it may not read the mount table", async () => {
  const r = await probeDatapath({
    kernelRelease: "6.1.0",
    libbpfPath: "/nonexistent/libbpf.so.1",
    mounts: () => Promise.reject(new Deno.errors.NotCapable("Requires all access")),
  });
  assert.match(r.reason, /^no libbpf at \/nonexistent\/libbpf\.so\.1/);
  assert.match(
    r.checks.find((c) => c.name === "bpffs")!.detail,
    /may not read \/proc\/self\/mounts/,
  );
});
