import assert from "node:assert/strict";
import type { LibcNet } from "../../ffi/libc_net.ts";
import { probeEngine } from "./probe_engine.ts";

/** A libc whose epoll_create1 returns `ep` (and sets errno 24), and whose close is counted. */
function fakeLibc(ep: number): { libc: LibcNet; closed: number[] } {
  const closed: number[] = [];
  const call = {
    epoll_create1: () => ep,
    close: (fd: number) => {
      closed.push(fd);
      return 0;
    },
  };
  const libc = {
    call,
    errno: () => 24,
    describe: (e: number) => (e === 24 ? "Too many open files" : `errno ${e}`),
  } as unknown as LibcNet;
  return { libc, closed };
}

Deno.test("probeEngine() passes here: FFI granted (deno test --allow-all), glibc, epoll", () => {
  assert.deepEqual(probeEngine(), { ok: true });
});

Deno.test("probeEngine() says which need fails, first one first, and never throws", () => {
  const granted = () => "granted" as const;
  const cases: [string, Parameters<typeof probeEngine>[0], RegExp][] = [
    [
      "another OS",
      { os: "darwin", arch: "aarch64" },
      /needs Linux on x86_64 or aarch64, not darwin/,
    ],
    ["another arch", { os: "linux", arch: "riscv64", ffiPermission: granted }, /not linux riscv64/],
    [
      "FFI not granted (deno run without --allow-ffi)",
      { ffiPermission: () => "prompt" },
      /^FFI is not permitted \(its permission is "prompt"; deno run needs --allow-ffi\)$/,
    ],
    ["FFI denied", { ffiPermission: () => "denied" }, /"denied"/],
    [
      "no glibc (musl has no libc.so.6)",
      {
        ffiPermission: granted,
        libc: () => {
          throw new Error("Could not open library: libc.so.6: cannot open shared object file");
        },
      },
      /^cannot load glibc's libc\.so\.6: Could not open library: libc\.so\.6/,
    ],
    [
      "epoll_create1 fails",
      { ffiPermission: granted, libc: () => fakeLibc(-1).libc },
      /^epoll_create1 failed: Too many open files \(errno 24\)$/,
    ],
  ];
  for (const [name, options, reason] of cases) {
    const r = probeEngine(options);
    assert.equal(r.ok, false, name);
    assert.match(r.ok ? "" : r.reason, reason, name);
  }
});

Deno.test("probeEngine() closes the epoll instance it made", () => {
  const { libc, closed } = fakeLibc(42);
  assert.deepEqual(probeEngine({ ffiPermission: () => "granted", libc: () => libc }), { ok: true });
  assert.deepEqual(closed, [42]);
});
