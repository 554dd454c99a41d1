import assert from "node:assert/strict";
import { KubeConfig } from "@kubernetes/client-node";
import { KubeApi, KubeApiError, type WatchEvent } from "./api.ts";
import { makePki } from "../_testing_tls.ts";

// This file's loopback address.
const HOST = "127.0.68.20";

/**
 * A TLS server on loopback standing in for the API server: `answer` gets each request. The
 * KubeApi it returns trusts the server's CA and sends a bearer token; `seen` holds the URL and
 * headers of each request.
 */
async function withApiServer(
  answer: (req: Request) => Response,
  body: (api: KubeApi, seen: { url: URL; headers: Headers }[]) => Promise<void>,
): Promise<void> {
  const pki = await makePki([HOST]);
  // (What was asked, kept at once: a request cannot be read once it is answered.)
  const seen: { url: URL; headers: Headers }[] = [];
  const server = Deno.serve({
    hostname: HOST,
    port: 0,
    cert: pki.cert,
    key: pki.key,
    onListen: () => {},
  }, (req) => {
    seen.push({ url: new URL(req.url), headers: new Headers(req.headers) });
    return answer(req);
  });
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{
      name: "test",
      server: `https://${HOST}:${server.addr.port}`,
      caData: btoa(pki.caCert),
    }],
    users: [{ name: "test", token: "t0ken" }],
    contexts: [{ name: "test", cluster: "test", user: "test" }],
    currentContext: "test",
  });
  const api = new KubeApi(kc);
  try {
    await body(api, seen);
  } finally {
    api.close();
    await server.shutdown();
  }
}

/** A streamed body that sends `chunks` one by one, then ends. */
function stream(chunks: string[]): Response {
  const enc = new TextEncoder();
  return new Response(
    new ReadableStream({
      start(c) {
        for (const chunk of chunks) c.enqueue(enc.encode(chunk));
        c.close();
      },
    }),
    { headers: { "content-type": "application/json" } },
  );
}

/** What `watch()` of pods rejected with: a KubeApiError's message, status and reason. */
async function watchFailure(
  api: KubeApi,
  resourceVersion: string,
): Promise<{ message: string; status: number; reason: string }> {
  const err = await api.watch("/api/v1/pods", resourceVersion, () => {}).then(() => null, (e) => e);
  assert.ok(err instanceof KubeApiError, `expected a KubeApiError, got ${err}`);
  return { message: err.message, status: err.status, reason: err.reason };
}

const pod = (name: string) => ({ kind: "Pod", metadata: { name, resourceVersion: "7" } });

Deno.test("KubeApi.watch() delivers each event in order, a line split across chunks included", async () => {
  const line = (type: string, name: string) => JSON.stringify({ type, object: pod(name) }) + "\n";
  const second = line("MODIFIED", "b");
  await withApiServer(
    () =>
      stream([
        line("ADDED", "a") + second.slice(0, 10),
        second.slice(10),
        "\n",
        line("BOOKMARK", "c"),
      ]),
    async (api, seen) => {
      const events: WatchEvent[] = [];
      await api.watch("/api/v1/pods", "5", (ev) => events.push(ev), { timeoutSeconds: 30 });
      assert.deepEqual(events.map((e) => [e.type, e.object["metadata"]]), [
        ["ADDED", { name: "a", resourceVersion: "7" }],
        ["MODIFIED", { name: "b", resourceVersion: "7" }],
        ["BOOKMARK", { name: "c", resourceVersion: "7" }],
      ]);
      const q = seen[0]!.url.searchParams;
      assert.equal(q.get("watch"), "true");
      assert.equal(q.get("allowWatchBookmarks"), "true");
      assert.equal(q.get("resourceVersion"), "5");
      assert.equal(q.get("timeoutSeconds"), "30");
      assert.equal(seen[0]!.headers.get("authorization"), "Bearer t0ken");
      assert.equal(seen[0]!.headers.get("accept-encoding"), "identity");
    },
  );
});

Deno.test("KubeApi.watch() rejects with the Status of an ERROR event (410 Gone)", async () => {
  const gone = {
    type: "ERROR",
    object: {
      kind: "Status",
      message: "too old resource version: 5 (9)",
      reason: "Expired",
      code: 410,
    },
  };
  await withApiServer(() => stream([JSON.stringify(gone) + "\n"]), async (api) => {
    assert.deepEqual(await watchFailure(api, "5"), {
      message: "watch /api/v1/pods: too old resource version: 5 (9)",
      status: 410,
      reason: "Expired",
    });
  });
});

Deno.test("KubeApi.watch() rejects with the server's status and message when it refuses the watch", async () => {
  const forbidden = { kind: "Status", message: 'pods is forbidden: User "x"', reason: "Forbidden" };
  await withApiServer(
    () => Response.json(forbidden, { status: 403, statusText: "Forbidden" }),
    async (api) => {
      assert.deepEqual(await watchFailure(api, ""), {
        message: 'watch /api/v1/pods: 403 pods is forbidden: User "x"',
        status: 403,
        reason: "Forbidden",
      });
    },
  );
});

Deno.test("KubeApi.watch() rejects a line that is not JSON as a bad event", async () => {
  await withApiServer(() => stream(["{not json\n"]), async (api) => {
    const err = await watchFailure(api, "1");
    assert.match(err.message, /^watch \/api\/v1\/pods: bad event: SyntaxError/);
    assert.equal(err.status, 0);
  });
});

/** A body that streams `piece` for ever (until the reader cancels it). */
function endless(piece: string, headers: HeadersInit = {}): Response {
  const bytes = new TextEncoder().encode(piece);
  return new Response(new ReadableStream({ pull: (c) => c.enqueue(bytes) }), { headers });
}

Deno.test("KubeApi.request() cuts off an answer longer than its limit with a one-line error", async () => {
  await withApiServer(
    (req) =>
      new URL(req.url).pathname === "/declared"
        ? new Response("x".repeat(5000), { headers: { "content-length": "5000" } })
        : endless('{"items":[' + '{"kind":"Pod"},'.repeat(100)),
    async (api) => {
      const small = new KubeApi(api.kc, { answerBytes: 4096, eventBytes: 4096 });
      try {
        for (const path of ["/endless", "/declared"]) {
          const err = await small.request("GET", path).then(() => null, (e) => e);
          assert.ok(err instanceof KubeApiError, `${path}: expected a KubeApiError, got ${err}`);
          assert.equal(
            err.message,
            `GET ${path}: the answer is longer than 4 KiB, more than meshd reads`,
          );
        }
        const text = await small.requestText("GET", "/endless").then(() => null, (e) => e);
        assert.match(String(text), /GET \/endless: the answer is longer than/);
      } finally {
        small.close();
      }
    },
  );
});

Deno.test("KubeApi.watch() gives up on an event longer than 16 MiB instead of holding it", async () => {
  await withApiServer(
    () => endless('{"type":"ADDED","object":{"x":"' + "y".repeat(65536)),
    async (api) => {
      const f = await watchFailure(api, "1");
      assert.equal(
        f.message,
        "watch /api/v1/pods: an event is longer than 16 MiB, more than meshd reads",
      );
      assert.equal(f.status, 0);
    },
  );
});
