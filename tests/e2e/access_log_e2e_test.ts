/**
 * `meshd run --access-log logfmt --request-id` as a user runs it (file provider, userspace
 * path): the access log lines come on stdout and meshd's own log on stderr, a Service annotated
 * `meshd.io/access-log: "false"` is left out, and the request id meshd added is the one logged.
 * A stdout nobody reads never stalls the proxy: lines are dropped and counted, and those
 * written are whole.
 */
import assert from "node:assert/strict";
import { freePort, waitFor } from "../testenv/process.ts";
import { type FileMeshd, MESHD_V8_FLAGS, meshdArgv, startFileMeshd } from "../testenv/meshd.ts";
import { RawClient } from "../../src/proxy/_testing.ts";
import { endpointSlice, pod, service, yamlDocs } from "../testenv/objects.ts";

/** Reads `stream` to its end, a line at a time, into `into`. */
async function collect(stream: ReadableStream<Uint8Array>, into: string[]): Promise<void> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    const parts = (rest + chunk).split("\n");
    rest = parts.pop()!;
    into.push(...parts);
  }
  if (rest) into.push(rest);
}

// Addresses of this file's own.
const BACKEND = "127.0.68.10";

/** One request through meshd; the status and the body. */
async function get(
  port: number,
  host: string,
  path: string,
): Promise<{ status: number; body: string }> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await c.write(
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`,
      ),
    );
    let raw = "";
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await c.read(buf);
      if (n === null) break;
      raw += new TextDecoder().decode(buf.subarray(0, n));
    }
    return {
      status: Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0),
      body: raw.slice(raw.indexOf("\r\n\r\n") + 4),
    };
  } finally {
    c.close();
  }
}

Deno.test("meshd run --access-log logfmt writes one line per request on stdout, apart from its own log", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-accesslog-" });
  const bport = freePort(BACKEND);
  const backend = Deno.serve(
    { hostname: BACKEND, port: bport, onListen: () => {} },
    (req) => new Response(`id=${req.headers.get("x-request-id")}\n`),
  );
  let meshd: FileMeshd | null = null;
  try {
    await Deno.writeTextFile(
      `${dir}/mesh.yaml`,
      yamlDocs(
        pod("al", "web-0", BACKEND, "web"),
        service("al", "web"),
        endpointSlice("al", "web", "web-a", bport, [{ ip: BACKEND, pod: "web-0" }]),
        service("al", "quiet", { annotations: { "meshd.io/access-log": "false" } }),
        endpointSlice("al", "quiet", "quiet-a", bport, [{ ip: BACKEND, pod: "web-0" }]),
      ),
    );
    meshd = await startFileMeshd(dir, ["--access-log", "logfmt", "--request-id"]);
    const { stdout, stderr } = meshd.child;

    const quiet = await get(meshd.http, "quiet.al.mesh", "/");
    assert.equal(quiet.status, 200, quiet.body);
    const r = await get(meshd.http, "web.al.mesh", "/hello?x=1");
    assert.equal(r.status, 200, r.body);
    const id = /^id=(.*)$/m.exec(r.body)?.[1] ?? "";
    assert.match(id, /^[0-9a-f-]{36}$/, r.body);
    const line = await waitFor(
      "the access log line on stdout",
      () => stdout.find((l) => l.includes("service=al/web:80")),
    );
    assert.match(
      line,
      new RegExp(
        `^time=\\S+Z protocol=http source=127\\.0\\.0\\.1:\\d+ service=al/web:80 ` +
          `endpoint=${
            BACKEND.replaceAll(".", "\\.")
          }:${bport} method=GET authority=web\\.al\\.mesh ` +
          `path=/hello request_id=${id} status=200 duration_ms=[\\d.]+ bytes_in=0 ` +
          `bytes_out=${r.body.length} retries=0$`,
      ),
    );
    // Every stdout line is an access log line, and the annotated-off service has none.
    assert.deepEqual(stdout.filter((l) => l !== ""), [line]);
    // meshd's own log stays on stderr.
    assert.ok(stderr.some((l) => l.includes("meshd starting")), stderr.join("\n"));
    assert.ok(!stderr.some((l) => l.includes("protocol=http")), stderr.join("\n"));
  } finally {
    await meshd?.child.stop();
    await backend.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

// The ops2 session's addresses (127.0.67.0/24).
const SLOW_BACKEND = "127.0.67.10";

/** `meshd_access_log_dropped_total` from meshd's `/metrics`. */
async function droppedLines(apiPort: number): Promise<number> {
  const r = await fetch(`http://127.0.0.1:${apiPort}/metrics`);
  const m = /^meshd_access_log_dropped_total (\d+)$/m.exec(await r.text());
  if (!m) throw new Error("meshd_access_log_dropped_total is not served");
  return Number(m[1]);
}

Deno.test("meshd run --access-log json: a stdout nobody reads drops and counts lines, and never stalls requests", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-accesslog-stuck-" });
  const bport = freePort(SLOW_BACKEND);
  const backend = Deno.serve(
    { hostname: SLOW_BACKEND, port: bport, onListen: () => {} },
    () => new Response("ok\n"),
  );
  const ports = { http: freePort(), api: freePort(), tcp: freePort(), udp: freePort() };
  const stderr: string[] = [];
  let proc: Deno.ChildProcess | null = null;
  let drained: Promise<unknown> = Promise.resolve();
  try {
    await Deno.writeTextFile(
      `${dir}/mesh.yaml`,
      yamlDocs(
        pod("al2", "web-0", SLOW_BACKEND, "web"),
        service("al2", "web"),
        endpointSlice("al2", "web", "web-a", bport, [{ ip: SLOW_BACKEND, pod: "web-0" }]),
      ),
    );
    proc = new Deno.Command(Deno.execPath(), {
      args: meshdArgv([
        "--config-dir",
        dir,
        "--http-port",
        String(ports.http),
        "--api-port",
        String(ports.api),
        "--tcp-ports",
        `${ports.tcp}-${ports.tcp}`,
        "--udp-ports",
        `${ports.udp}-${ports.udp}`,
        "--access-log",
        "json",
        // Two isolates write to the one pipe: their lines must not mix.
        "--workers",
        "2",
      ], [MESHD_V8_FLAGS, "--allow-all"]),
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped", // and never read until meshd has exited
      stderr: "piped",
    }).spawn();
    drained = collect(proc.stderr, stderr);
    await waitFor("meshd to be ready", async () => {
      const r = await fetch(`http://127.0.0.1:${ports.api}/readyz`).catch(() => null);
      await r?.body?.cancel();
      return r?.status === 200 ? true : undefined;
    }, 30_000);

    // Lines of ~3 KB: the pipe (64 KiB) and each worker's queue (1 MiB) fill after some
    // 700 requests. Four keep-alive clients, so both workers get requests.
    const path = "/" + "p".repeat(3000);
    const clients = await Promise.all([0, 1, 2, 3].map(() => RawClient.connect(ports.http)));
    let sent = 0;
    try {
      for (let round = 0; round < 1000 && (await droppedLines(ports.api)) === 0; round++) {
        await Promise.all(clients.map(async (c) => {
          for (let i = 0; i < 5; i++) {
            // A stalled proxy would leave this waiting: the test's own timeout says so.
            const r = await c.request(
              `GET ${path}?n=${sent} HTTP/1.1\r\nHost: web.al2.mesh\r\n\r\n`,
            );
            assert.equal(r.status, 200, r.head);
            sent++;
          }
        }));
      }
      const dropped = await droppedLines(ports.api);
      assert.ok(dropped > 0, `no line dropped after ${sent} requests`);
      // Still flowing once lines are being dropped.
      for (const c of clients) {
        const r = await c.request(`GET ${path} HTTP/1.1\r\nHost: web.al2.mesh\r\n\r\n`);
        assert.equal(r.status, 200);
      }
      assert.ok(await droppedLines(ports.api) > dropped, "each line that does not fit is counted");
    } finally {
      for (const c of clients) c.close();
    }
    await waitFor(
      "the warning on stderr",
      () => stderr.find((l) => l.includes("access log lines dropped")),
    );

    // Shutdown does not hang on the stuck stdout: it waits a little for it, then goes.
    proc.kill("SIGTERM");
    const status = await Promise.race([
      proc.status,
      new Promise<null>((r) => setTimeout(() => r(null), 20_000)),
    ]);
    assert.ok(status !== null, "meshd did not exit within 20 s of SIGTERM");
    const lines = (await new Response(proc.stdout).text()).split("\n");
    assert.equal(lines.pop(), "", "stdout ends with a whole line");
    assert.ok(lines.length >= 15, `${lines.length} lines`);
    for (const l of lines) {
      const entry = JSON.parse(l); // throws on a cut or mixed line
      assert.equal(entry.service, "al2/web:80");
      assert.equal(entry.path, path);
    }
    proc = null;
  } finally {
    if (proc) {
      try {
        proc.kill("SIGTERM");
      } catch { /* already gone */ }
      await proc.stdout.cancel().catch(() => {});
      await proc.status;
    }
    await drained;
    await backend.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
