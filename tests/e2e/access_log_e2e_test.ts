/**
 * `meshd run --access-log logfmt --request-id` as a user runs it (file provider, userspace
 * path): the access log lines come on stdout and meshd's own log on stderr, a Service annotated
 * `meshd.io/access-log: "false"` is left out, and the request id meshd added is the one logged.
 */
import assert from "node:assert/strict";
import { freePort, waitFor } from "../testenv/process.ts";
import { type FileMeshd, startFileMeshd } from "../testenv/meshd.ts";
import { endpointSlice, pod, service, yamlDocs } from "../testenv/objects.ts";

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
