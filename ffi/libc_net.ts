/**
 * `Deno.dlopen` bindings to the libc socket and epoll calls an event loop of meshd's own needs
 * (`src/engine/`): nonblocking sockets, `accept4`, `connect`, `read`/`write`, datagrams,
 * `shutdown`, socket options and `epoll`. The symbols are synchronous: each is one system call
 * that does not block on a nonblocking socket, made from the thread that runs the loop, so
 * `errno` is read right after it, before any other call.
 *
 * Loaded at the first {@linkcode libcNet} call; linux-x86_64 and linux-aarch64 only (the layout
 * of `struct epoll_event` is x86-64's packed one there; aarch64 pads it, see
 * {@linkcode EPOLL_EVENT_SIZE}).
 *
 * @module
 */

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  recvfrom: {
    parameters: ["i32", "buffer", "usize", "i32", "buffer", "buffer"],
    result: "isize",
  },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  // The same call on a thread of Deno's blocking pool, answered with a promise: how a loop
  // waits while its isolate has nothing to do, so the isolate's own event loop runs meanwhile.
  epoll_wait_async: {
    name: "epoll_wait",
    parameters: ["i32", "buffer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  dup2: { parameters: ["i32", "i32"], result: "i32" },
  gettid: { parameters: [], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_ERROR = 4;
export const SO_REUSEPORT = 15;
export const IPPROTO_TCP = 6;
export const TCP_NODELAY = 1;
export const SHUT_WR = 1;
export const EINTR = 4;
export const EAGAIN = 11;
export const ENOMEM = 12;
export const ENOBUFS = 105;
export const ECONNREFUSED = 111;
export const EINPROGRESS = 115;
export const EPOLLIN = 0x1;
export const EPOLLOUT = 0x4;
export const EPOLLERR = 0x8;
export const EPOLLHUP = 0x10;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 1 << 31;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLL_CTL_MOD = 3;
/** Bytes of one `struct epoll_event`: packed on x86-64, padded to 16 elsewhere. */
export const EPOLL_EVENT_SIZE = Deno.build.arch === "x86_64" ? 12 : 16;
/** Where the 64-bit data field starts in one `struct epoll_event`. */
export const EPOLL_DATA_OFFSET = Deno.build.arch === "x86_64" ? 4 : 8;

/** The libc calls of {@linkcode SYMBOLS}, and `errno` right after one. */
export interface LibcNet {
  readonly call: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
  errno(): number;
  /** The text of an errno value (`strerror`). */
  describe(errno: number): string;
}

let loaded: LibcNet | null = null;

/** The bindings, loaded once; throws where libc or FFI is not there. */
export function libcNet(): LibcNet {
  if (loaded) return loaded;
  if (Deno.build.os !== "linux") throw new Error("the libc event loop needs Linux");
  const lib = Deno.dlopen("libc.so.6", SYMBOLS);
  const at = lib.symbols.__errno_location();
  if (at === null) throw new Error("__errno_location returned NULL");
  const view = new Deno.UnsafePointerView(at);
  loaded = {
    call: lib.symbols,
    errno: () => view.getInt32(),
    describe: (e) => {
      const p = lib.symbols.strerror(e);
      return p === null ? `errno ${e}` : Deno.UnsafePointerView.getCString(p);
    },
  };
  return loaded;
}

/** A `struct sockaddr_in` or `sockaddr_in6` for `address` (an IPv4 or IPv6 literal) and `port`. */
export function sockaddr(address: string, port: number): Uint8Array {
  const v6 = address.includes(":");
  const a = new Uint8Array(v6 ? 28 : 16);
  const view = new DataView(a.buffer);
  view.setUint16(0, v6 ? AF_INET6 : AF_INET, true);
  view.setUint16(2, port, false);
  if (!v6) {
    const parts = address.split(".");
    if (parts.length !== 4) throw new Error(`not an IPv4 address: "${address}"`);
    parts.forEach((p, i) => {
      const n = Number(p);
      if (!/^\d{1,3}$/.test(p) || n > 255) throw new Error(`not an IPv4 address: "${address}"`);
      a[4 + i] = n;
    });
    return a;
  }
  const words = ipv6Words(address);
  words.forEach((w, i) => view.setUint16(8 + 2 * i, w, false));
  return a;
}

/** The eight 16-bit words of an IPv6 literal (no zone, no embedded IPv4). */
function ipv6Words(address: string): number[] {
  const bad = () => new Error(`not an IPv6 address: "${address}"`);
  const halves = address.split("::");
  if (halves.length > 2) throw bad();
  const part = (s: string) =>
    (s === "" ? [] : s.split(":")).map((h) => {
      if (!/^[0-9a-fA-F]{1,4}$/.test(h)) throw bad();
      return parseInt(h, 16);
    });
  const head = part(halves[0]!);
  const tail = halves.length === 2 ? part(halves[1]!) : [];
  const fill = 8 - head.length - tail.length;
  if (halves.length === 1 ? fill !== 0 : fill < 1) throw bad();
  return [...head, ...Array(halves.length === 2 ? fill : 0).fill(0), ...tail];
}

/** The address and port of a `struct sockaddr_in` or `sockaddr_in6`. */
export function addressOf(sa: Uint8Array): { address: string; port: number } {
  const view = new DataView(sa.buffer, sa.byteOffset, sa.byteLength);
  const port = view.getUint16(2, false);
  if (view.getUint16(0, true) === AF_INET) {
    return { address: `${sa[4]}.${sa[5]}.${sa[6]}.${sa[7]}`, port };
  }
  const words = Array.from({ length: 8 }, (_, i) => view.getUint16(8 + 2 * i, false));
  return { address: compressIpv6(words), port };
}

/** RFC 5952 text of eight IPv6 words: the longest run of two or more zero words as `::`. */
function compressIpv6(words: number[]): string {
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) best = i, bestLen = j - i;
    i = j;
  }
  const hex = (ws: number[]) => ws.map((w) => w.toString(16)).join(":");
  if (best < 0) return hex(words);
  return `${hex(words.slice(0, best))}::${hex(words.slice(best + bestLen))}`;
}
