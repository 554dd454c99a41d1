/**
 * What a call through Deno's FFI costs beside the system call it makes, for the calls meshd's
 * own event loop (`src/engine/`) makes: a libc function that makes no system call (`abs`), the
 * cheapest system call (`getpid`), and a `read` of an empty nonblocking eventfd (EAGAIN) with
 * its `size_t` length passed as a BigInt (as `ffi/libc_net.ts`'s callers do), as a number, and
 * declared `u32`. Each is timed over 2,000,000 calls, five times; prints the median and range.
 *
 *   deno run --allow-ffi tests/bench/ffi_call_cost.ts
 *
 * @module
 */
const lib = Deno.dlopen("libc.so.6", {
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  read32: { name: "read", parameters: ["i32", "buffer", "u32"], result: "i32" },
  getpid: { parameters: [], result: "i32" },
  abs: { parameters: ["i32"], result: "i32" },
});
const EFD_NONBLOCK = 0o4000;
const fd = lib.symbols.eventfd(0, EFD_NONBLOCK);
if (fd < 0) throw new Error("eventfd failed");
const buf = new Uint8Array(8);
// Deno takes a number for a 64-bit argument too, though its types ask for a BigInt.
const EIGHT = 8 as unknown as bigint;
const CALLS = 2_000_000;
const ROUNDS = 5;
const cases: [string, () => unknown][] = [
  ["abs(): the FFI call alone", () => lib.symbols.abs(-3)],
  ["getpid(): the cheapest system call", () => lib.symbols.getpid()],
  ["read(eventfd), EAGAIN, length a BigInt (meshd)", () => lib.symbols.read(fd, buf, 8n)],
  ["read(eventfd), EAGAIN, length a number", () => lib.symbols.read(fd, buf, EIGHT)],
  ["read(eventfd), EAGAIN, length declared u32", () => lib.symbols.read32(fd, buf, 8)],
];
const ns = new Map<string, number[]>();
for (let round = 0; round < ROUNDS; round++) {
  for (const [name, call] of cases) {
    for (let i = 0; i < 100_000; i++) call(); // optimized before it is timed
    const start = performance.now();
    for (let i = 0; i < CALLS; i++) call();
    const each = (performance.now() - start) * 1e6 / CALLS;
    ns.set(name, [...ns.get(name) ?? [], each]);
  }
}
lib.symbols.close(fd);
for (const [name] of cases) {
  const v = ns.get(name)!.sort((a, b) => a - b);
  console.log(
    `${name.padEnd(48)} ${v[ROUNDS >> 1]!.toFixed(0).padStart(5)} ns a call ` +
      `(${v[0]!.toFixed(0)}-${v[ROUNDS - 1]!.toFixed(0)})`,
  );
}
lib.close();
