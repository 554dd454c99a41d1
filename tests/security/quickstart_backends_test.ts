/**
 * scripts/quickstart when a backend cannot start: it used to print "meshd is running" while a
 * whoami had died with AddrInUse. Now it checks that each backend process itself listens, says
 * which one could not, and stops; QUICKSTART_NET moves the backends out of the way.
 */
import assert from "node:assert/strict";
import { Child, freePort, waitFor } from "../testenv/process.ts";

const QUICKSTART = new URL("../../scripts/quickstart", import.meta.url).pathname;

interface Run {
  child: Child;
  out: () => string;
  http: number;
}

function quickstart(env: Record<string, string>): Run {
  const http = freePort();
  const tcp = freePort();
  const child = new Child("quickstart", [], {
    command: QUICKSTART,
    env: {
      MESHD_HTTP_PORT: String(http),
      MESHD_API_PORT: String(freePort()),
      MESHD_TCP_PORTS: `${tcp}-${tcp}`,
      ...env,
    },
  });
  return { child, out: () => child.lines.join("\n"), http };
}

async function stop(run: Run): Promise<void> {
  run.child.kill("SIGINT");
  await run.child.exited();
}

async function refused(hostname: string, port: number): Promise<boolean> {
  try {
    (await Deno.connect({ hostname, port })).close();
    return false;
  } catch {
    return true;
  }
}

Deno.test("scripts/quickstart names a backend that cannot listen and does not claim to run", async () => {
  // Something else holds whoami-2's address, as a second quickstart would.
  const squatter = Deno.listen({ hostname: "127.78.1.2", port: 8080 });
  const run = quickstart({ QUICKSTART_NET: "127.78" });
  try {
    let code: number | undefined;
    run.child.status.then((s) => code = s.code);
    await waitFor(
      "the quickstart to exit or to print its commands",
      () => code !== undefined || run.out().includes("Press Ctrl-C") || undefined,
      120_000,
    );
    assert.doesNotMatch(run.out(), /meshd is running/);
    assert.equal(code, 1, run.out());
    await run.child.exited();
    assert.match(run.out(), /whoami-2 could not listen on 127\.78\.1\.2:8080/);
    assert.match(run.out(), /QUICKSTART_NET=127\.N/);
    // What it had started is gone again.
    for (
      const [h, p] of [["127.78.1.1", 8080], ["127.78.1.3", 8080], ["127.78.2.1", 7000]] as const
    ) {
      await waitFor(
        `${h}:${p} to be closed`,
        async () => (await refused(h, p)) || undefined,
        10_000,
      );
    }
  } finally {
    await stop(run);
    squatter.close();
  }
});

Deno.test("scripts/quickstart with QUICKSTART_NET serves the moved backends", async () => {
  const run = quickstart({ QUICKSTART_NET: "127.79" });
  try {
    await waitFor(
      "the quickstart to print its commands",
      () => run.out().includes("Press Ctrl-C") || undefined,
      120_000,
    );
    assert.match(run.out(), /meshd is running/);
    const names = new Set<string>();
    for (let i = 0; i < 6; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: run.http });
      await conn.write(
        new TextEncoder().encode(
          "GET / HTTP/1.1\r\nHost: whoami.default.mesh\r\nConnection: close\r\n\r\n",
        ),
      );
      const text = await new Response(conn.readable).text();
      names.add(/^name: (.*)$/m.exec(text)?.[1] ?? text);
    }
    assert.deepEqual([...names].sort(), ["whoami-1", "whoami-2", "whoami-3"]);
    // They are where they were moved to.
    for (
      const [h, p] of [["127.79.1.1", 8080], ["127.79.1.3", 8080], ["127.79.2.1", 7000]] as const
    ) {
      assert.equal(await refused(h, p), false, `nothing listens on ${h}:${p}`);
    }
    const bad = quickstart({ QUICKSTART_NET: "10.0" });
    assert.equal((await bad.child.exited()).code, 1);
    assert.match(bad.out(), /QUICKSTART_NET is "10\.0", expected 127\.N/);
  } finally {
    await stop(run);
  }
});
