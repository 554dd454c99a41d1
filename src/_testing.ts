/**
 * Loopback helpers for the unit tests of every room and for the harness under `tests/`: free
 * ports, waiting on a condition with a deadline, and a seeded random generator. For tests only: nothing in meshd imports
 * it. Process helpers stay with the harness (`tests/`).
 *
 * @module
 */

/** Ports this process handed out already: never twice. */
const handedOut = new Set<number>();

/**
 * A port free for TCP and UDP on `hostname`, below the kernel's ephemeral range (32768 and
 * up): a port the kernel picked for `port: 0` could be given to some outgoing connection's
 * local end before the process under test binds it (seen as a flaky "Address already in use").
 * Chosen at random from 20000-32767, away from meshd's default ranges and fixed ports.
 */
export function freePort(hostname = "127.0.0.1"): number {
  for (let tries = 0; tries < 1000; tries++) {
    const port = 20000 + Math.floor(Math.random() * 12768);
    if (handedOut.has(port)) continue;
    let tcp: Deno.Listener | null = null;
    let udp: Deno.DatagramConn | null = null;
    try {
      tcp = Deno.listen({ hostname, port });
      udp = Deno.listenDatagram({ hostname, port, transport: "udp" });
    } catch {
      continue;
    } finally {
      tcp?.close();
      udp?.close();
    }
    handedOut.add(port);
    return port;
  }
  throw new Error(`No free port on ${hostname} in 20000-32767 after 1000 tries`);
}

/**
 * How much longer than usual waits may take: `$MESHD_TEST_TIME_SCALE` (default 1). The
 * real-kernel tier sets it inside QEMU VMs, whose software emulation runs programs several
 * times slower than the host (`tests/testenv/vm/run.sh`).
 */
export function timeScale(): number {
  const raw = Deno.env.get("MESHD_TEST_TIME_SCALE");
  if (raw === undefined || raw === "") return 1;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 1) {
    throw new Error(`Cannot use MESHD_TEST_TIME_SCALE "${raw}": expected a number >= 1`);
  }
  return n;
}

/**
 * Polls `probe` every `intervalMs` until it returns a value other than `undefined`, or fails
 * after `timeoutMs` (times {@linkcode timeScale}) with `what` and the last value or error seen.
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 10_000,
  intervalMs = 20,
): Promise<T> {
  timeoutMs *= timeScale();
  const deadline = performance.now() + timeoutMs;
  let last: unknown = "nothing yet";
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
      last = "not yet";
    } catch (e) {
      last = e instanceof Error ? e.message : e;
    }
    if (performance.now() > deadline) {
      throw new Error(
        `Timed out after ${timeoutMs} ms waiting for ${what}; last seen: ${JSON.stringify(last)}`,
      );
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * A small seeded generator (mulberry32): numbers in [0, 1), the same sequence for the same
 * seed, so that a failing generated case can be replayed.
 */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
