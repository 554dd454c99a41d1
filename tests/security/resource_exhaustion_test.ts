/**
 * Hostile load against meshd's file descriptors (issue 18, items 4 and 5): a UDP flood from
 * many source ports, many idle TCP connections, accepts failing with EMFILE, aborted
 * downloads, and a client that never reads. meshd runs with a low open-file limit
 * (`prlimit --nofile`) so each attack is cheap; each case asserts that meshd stays alive,
 * that other clients are answered during and after the attack, that the drops are counted in
 * `meshd_dropped_total`, and prints one line of figures (fds, RSS in MiB before, during and
 * after, requests answered to other clients during the attack).
 */
import assert from "node:assert/strict";
import net from "node:net";
import { waitFor } from "../testenv/process.ts";
import {
  alive,
  ATTACKER,
  BYSTANDER,
  CountingBackend,
  drops,
  httpStatus,
  idleConnections,
  logLines,
  type Meshd,
  procStats,
  service,
  slice,
  startMeshd,
  stopMeshd,
  TcpEcho,
  tcpEchoes,
  UdpClient,
  UdpEcho,
} from "./_load_env.ts";

const MESHD = "127.0.50.1";
const WEB = "127.0.50.50";
const ECHO = "127.0.50.60";
const WEB_HOST = "web.hl.mesh";

function figures(
  name: string,
  before: { fds: number; rssMiB: number },
  during: { fds: number; rssMiB: number },
  after: { fds: number; rssMiB: number },
  answered: string,
  extra = "",
): void {
  console.log(
    `figures: ${name}: fds ${before.fds}/${during.fds}/${after.fds}, RSS MiB ` +
      `${before.rssMiB}/${during.rssMiB}/${after.rssMiB} (before/during/after); ` +
      `answered to other clients during the attack: ${answered}${extra ? `; ${extra}` : ""}`,
  );
}

/** meshd with an HTTP service (web), a TCP echo service and a UDP echo service. */
async function withMesh(
  opts: {
    nofile: number;
    env?: Record<string, string>;
    bigBytes?: number;
    flags?: string[];
    ffi?: boolean;
  },
  fn: (m: Meshd, web: CountingBackend) => Promise<void>,
): Promise<void> {
  const web = new CountingBackend(WEB, opts.bigBytes);
  const udp = new UdpEcho(ECHO);
  const tcp = new TcpEcho(ECHO);
  let m: Meshd | undefined;
  try {
    m = await startMeshd({
      address: MESHD,
      nofile: opts.nofile,
      env: opts.env,
      flags: opts.flags,
      ffi: opts.ffi,
      services: 3,
      config: () => [
        service("web", 80),
        slice("web", WEB, web.port),
        service("echo", 7, { annotations: { "meshd.io/traffic-type": "tcp" } }),
        slice("echo", ECHO, tcp.port),
        service("dns", 53, { protocol: "UDP" }),
        slice("dns", ECHO, udp.port, "UDP"),
      ],
    });
    await fn(m, web);
  } finally {
    if (m) await stopMeshd(m);
    await Promise.all([web.close(), udp.close(), tcp.close()]);
  }
}

for (const l4 of [false, true]) {
  Deno.test(`meshd survives a UDP flood from many source ports, evicting the oldest flows${l4 ? " (--l4-worker)" : ""}`, async () => {
    // Default caps, from the open-file limit meshd reads: 10% of 256 is 25 flows.
    await withMesh({ nofile: 256, ...(l4 ? L4 : {}) }, async (m) => {
      const bystander = new UdpClient(BYSTANDER);
      const sockets: Deno.DatagramConn[] = [];
      try {
        assert.ok(await bystander.echoes(MESHD, m.udp), "no UDP echo before the flood");
        const before = procStats(m);
        let during = before;
        let answered = 0;
        let asked = 0;
        const payload = new TextEncoder().encode("flood");
        // 600 source ports, 100 at a time, each sending a datagram twice.
        for (let round = 0; round < 6; round++) {
          const batch = Array.from(
            { length: 100 },
            () => Deno.listenDatagram({ transport: "udp", hostname: ATTACKER, port: 0 }),
          );
          sockets.push(...batch);
          for (let k = 0; k < 2; k++) {
            await Promise.all(
              batch.map((s) =>
                s.send(payload, { transport: "udp", hostname: MESHD, port: m.udp }).catch(() => 0)
              ),
            );
          }
          const s = procStats(m);
          if (s.fds > during.fds) during = s;
          asked += 2;
          if (await bystander.echoes(MESHD, m.udp)) answered++;
          if ((await httpStatus(m, WEB_HOST)) === 200) answered++;
        }
        assert.ok(alive(m), `meshd died under the flood:\n${m.child.lines.slice(-5).join("\n")}`);
        assert.ok(during.fds < 256, `meshd reached ${during.fds} fds of 256`);
        const dropped = await drops(m);
        // One attacker address: its flows over --max-udp-flows-per-source evict its own.
        assert.ok(
          (dropped["udp_flow_evicted"] ?? 0) + (dropped["udp_source_limit"] ?? 0) >= 500,
          `expected flows evicted and counted, got ${JSON.stringify(dropped)}`,
        );
        assert.equal(answered, asked, "other clients went unanswered during the flood");
        for (const s of sockets) s.close();
        sockets.length = 0;
        assert.ok(await bystander.echoes(MESHD, m.udp), "no UDP echo after the flood");
        assert.equal(await httpStatus(m, WEB_HOST), 200);
        figures(
          "udp flood, 600 source ports, nofile 256",
          before,
          during,
          procStats(m),
          `${answered}/${asked}`,
          `dropped ${JSON.stringify(dropped)}`,
        );
      } finally {
        for (const s of sockets) s.close();
        await bystander.close();
      }
    });
  });
}

for (const l4 of [false, true]) {
  Deno.test(`meshd caps idle TCP connections per source and keeps answering others${l4 ? " (--l4-worker)" : ""}`, async () => {
    await withMesh({
      nofile: 256,
      env: { MESHD_MAX_CONNECTIONS: "100", MESHD_MAX_CONNECTIONS_PER_SOURCE: "40" },
      ...(l4 ? L4 : {}),
    }, async (m) => {
      const before = procStats(m);
      const toHttp = await idleConnections(MESHD, m.http, 300);
      const toTcp = await idleConnections(MESHD, m.tcp, 300);
      try {
        let answered = 0;
        const asked = 10;
        let during = procStats(m);
        for (let i = 0; i < asked / 2; i++) {
          if ((await httpStatus(m, WEB_HOST)) === 200) answered++;
          if (await tcpEchoes(MESHD, m.tcp)) answered++;
          const s = procStats(m);
          if (s.fds > during.fds) during = s;
        }
        assert.ok(alive(m), "meshd died under idle connections");
        assert.ok(during.fds < 256, `meshd reached ${during.fds} fds of 256`);
        assert.equal(answered, asked, "other clients went unanswered during the attack");
        const dropped = await drops(m);
        assert.ok(
          (dropped["source_limit"] ?? 0) >= 500,
          `expected connections over the per-source cap counted, got ${JSON.stringify(dropped)}`,
        );
        assert.equal(logLines(m, /accept failed/), 0, "accepts failed under the caps");
        toHttp.close();
        toTcp.close();
        await waitFor(
          "the bystander to be answered after the attack",
          async () =>
            (await httpStatus(m, WEB_HOST)) === 200 && await tcpEchoes(MESHD, m.tcp)
              ? true
              : undefined,
          15_000,
        );
        figures(
          "600 idle TCP connections from one source, nofile 256, caps 100/40",
          before,
          during,
          procStats(m),
          `${answered}/${asked}`,
          `dropped ${JSON.stringify(dropped)}`,
        );
      } finally {
        toHttp.close();
        toTcp.close();
      }
    });
  });
}

Deno.test("meshd keeps accepting after EMFILE, with one log line per interval", async () => {
  // Caps above the open-file limit, so the descriptors run out and accept fails.
  await withMesh({
    nofile: 200,
    env: { MESHD_MAX_CONNECTIONS: "5000", MESHD_MAX_CONNECTIONS_PER_SOURCE: "5000" },
  }, async (m) => {
    const before = procStats(m);
    const attack = await idleConnections(MESHD, m.http, 400);
    let during = before;
    try {
      await waitFor("accepts to fail with the descriptors gone", () => {
        const s = procStats(m);
        if (s.fds > during.fds) during = s;
        return logLines(m, /accept failed/) > 0 ? true : undefined;
      }, 20_000);
      // Keep the descriptors exhausted a while: a spinning loop would log thousands of lines.
      const until = performance.now() + 3000;
      while (performance.now() < until) {
        const s = procStats(m);
        if (s.fds > during.fds) during = s;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(alive(m), "meshd died with its descriptors exhausted");
    } finally {
      attack.close();
    }
    await waitFor(
      "the bystander to be answered after the attack",
      async () => (await httpStatus(m, WEB_HOST)) === 200 ? true : undefined,
      20_000,
    );
    const lines = logLines(m, /accept failed/);
    assert.ok(lines <= 3, `expected at most one accept-failure line per 10 s, got ${lines}`);
    const dropped = await drops(m);
    assert.ok(
      (dropped["accept_failed"] ?? 0) >= 1,
      `accept failures not counted: ${JSON.stringify(dropped)}`,
    );
    assert.ok(alive(m));
    figures(
      "400 idle connections over nofile 200 (EMFILE)",
      before,
      during,
      procStats(m),
      "n/a (no descriptor left to answer with)",
      `accept-failure log lines ${lines}, dropped ${JSON.stringify(dropped)}`,
    );
  });
});

/** meshd with its TCP and UDP ports on its own loop in a worker. */
const L4 = { flags: ["--l4-worker"], ffi: true };

Deno.test("meshd --l4-worker keeps accepting TCP after EMFILE, with one log line per interval and no busy loop", async () => {
  // The engine's listening socket stays readable while accepts fail: left in the loop, it
  // would be called every turn.
  await withMesh({
    nofile: 200,
    ...L4,
    env: { MESHD_MAX_CONNECTIONS: "5000", MESHD_MAX_CONNECTIONS_PER_SOURCE: "5000" },
  }, async (m) => {
    assert.ok(await tcpEchoes(MESHD, m.tcp), "no TCP echo before the attack");
    const cpu = () => {
      const f = Deno.readTextFileSync(`/proc/${m.child.pid}/stat`).split(") ")[1]!.split(" ");
      return Number(f[11]) + Number(f[12]); // utime + stime, in clock ticks
    };
    const attack = await idleConnections(MESHD, m.tcp, 400);
    let ticks = 0;
    try {
      await waitFor(
        "accepts to fail with the descriptors gone",
        () => logLines(m, /accept failed/) > 0 ? true : undefined,
        20_000,
      );
      // Keep the descriptors exhausted 3 s: a loop called every turn would take the whole core.
      const before = cpu();
      await new Promise((r) => setTimeout(r, 3000));
      ticks = cpu() - before;
      assert.ok(alive(m), "meshd died with its descriptors exhausted");
    } finally {
      attack.close();
    }
    await waitFor(
      "the TCP port to echo after the attack",
      async () => (await tcpEchoes(MESHD, m.tcp)) ? true : undefined,
      20_000,
    );
    const lines = logLines(m, /accept failed/);
    assert.ok(lines <= 3, `expected at most one accept-failure line per 10 s, got ${lines}`);
    const dropped = await drops(m);
    assert.ok((dropped["accept_failed"] ?? 0) >= 1, JSON.stringify(dropped));
    // 100 ticks a second: a spinning loop would use about 300 in 3 s.
    assert.ok(ticks < 150, `meshd used ${ticks} CPU ticks in 3 s with accepts failing`);
  });
});

/** Requests `/big`, reads at least `readBytes`, then closes the connection. */
function abortedDownload(m: Meshd, readBytes: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: MESHD, port: m.http, localAddress: ATTACKER });
    let got = 0;
    const timer = setTimeout(() => done(false), 10_000);
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    s.on("data", (c: Uint8Array) => {
      got += c.length;
      if (got >= readBytes) done(true);
    });
    s.on("error", () => done(false));
    s.on("close", () => done(false));
    s.write(`GET /big HTTP/1.1\r\nHost: ${WEB_HOST}\r\n\r\n`);
  });
}

Deno.test("meshd closes the backend connection of each aborted download", async () => {
  await withMesh({ nofile: 1024 }, async (m, web) => {
    const before = procStats(m);
    let answered = 0;
    let asked = 0;
    let during = before;
    for (let round = 0; round < 5; round++) {
      const started = await Promise.all(
        Array.from({ length: 20 }, () => abortedDownload(m, 256 * 1024)),
      );
      assert.ok(started.every(Boolean), "a download did not start");
      asked++;
      if ((await httpStatus(m, WEB_HOST)) === 200) answered++;
      const s = procStats(m);
      if (s.fds > during.fds) during = s;
    }
    // 100 downloads were started and abandoned; none may keep its backend connection.
    await waitFor(
      "the backend's connections of aborted downloads to close",
      () => web.bigOpen === 0 ? true : undefined,
      20_000,
      100,
    ).catch((e) => {
      throw new Error(`${(e as Error).message}; ${web.bigOpen} of ${web.bigStarted} still open`);
    });
    assert.ok(alive(m));
    assert.equal(answered, asked, "other clients went unanswered during the aborts");
    figures(
      "100 aborted 32 MiB downloads",
      before,
      during,
      procStats(m),
      `${answered}/${asked}`,
      `backend connections of downloads open after: ${web.bigOpen} of ${web.bigStarted}`,
    );
  });
});

Deno.test("meshd closes a client that never reads after --write-timeout, and its backend", async () => {
  await withMesh({ nofile: 1024, env: { MESHD_WRITE_TIMEOUT: "1s" } }, async (m, web) => {
    const before = procStats(m);
    const readers: net.Socket[] = [];
    try {
      for (let i = 0; i < 5; i++) {
        const s = net.connect({ host: MESHD, port: m.http, localAddress: ATTACKER });
        s.pause(); // never reads
        s.on("error", () => {});
        s.write(`GET /big HTTP/1.1\r\nHost: ${WEB_HOST}\r\n\r\n`);
        readers.push(s);
      }
      await waitFor(
        "the backend to send to the readers",
        () => web.bigStarted >= 5 ? true : undefined,
      );
      const during = procStats(m);
      const answered = (await httpStatus(m, WEB_HOST)) === 200 ? 1 : 0;
      await waitFor(
        "meshd to give up on the readers and close their backend connections",
        async () =>
          web.bigOpen === 0 && ((await drops(m))["write_timeout"] ?? 0) >= 5 ? true : undefined,
        20_000,
        100,
      ).catch(async (e) => {
        throw new Error(
          `${(e as Error).message}; backend open ${web.bigOpen}, dropped ${
            JSON.stringify(await drops(m))
          }`,
        );
      });
      assert.ok(alive(m));
      assert.equal(answered, 1, "another client went unanswered");
      figures(
        "5 clients that never read, --write-timeout 1s",
        before,
        during,
        procStats(m),
        `${answered}/1`,
      );
    } finally {
      for (const s of readers) s.destroy();
    }
  });
});
