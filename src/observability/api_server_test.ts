import assert from "node:assert/strict";
import { Logger } from "./log.ts";
import { type ApiSource, serveApi } from "./api_server.ts";

Deno.test("serveApi() serves config, services, status and health, ready only once applied", async () => {
  let config: unknown = null;
  const source: ApiSource = {
    config: () => config,
    services: () => [{ service: "web", namespace: "default", port: 80 }],
    ready: () => config !== null,
    status: () => ({ errors: [] }),
    metrics: () => "# TYPE meshd_up gauge\nmeshd_up 1\n",
  };
  const api = await serveApi({
    hostname: "127.0.0.1",
    port: 0,
    source,
    logger: new Logger({ write: () => {} }),
  });
  const get = async (path: string, method = "GET") => {
    const res = await fetch(`http://127.0.0.1:${api.addr.port}${path}`, { method });
    return { status: res.status, type: res.headers.get("content-type"), body: await res.text() };
  };
  try {
    assert.equal((await get("/healthz")).status, 200);
    const notReady = await get("/readyz");
    assert.equal(notReady.status, 503);
    assert.match(notReady.body, /no config applied yet/);
    assert.equal((await get("/api/config")).status, 503);

    config = { version: 4, services: [] };
    assert.equal((await get("/readyz")).status, 200);
    const c = await get("/api/config");
    assert.equal(c.status, 200);
    assert.equal(c.type, "application/json");
    assert.equal(JSON.parse(c.body).version, 4);
    assert.deepEqual(JSON.parse((await get("/api/services")).body), [
      { service: "web", namespace: "default", port: 80 },
    ]);
    assert.deepEqual(JSON.parse((await get("/api/status")).body), { errors: [] });

    const metrics = await get("/metrics");
    assert.equal(metrics.type, "text/plain; version=0.0.4; charset=utf-8");
    assert.match(metrics.body, /^meshd_up 1$/m);

    const missing = await get("/api/nope");
    assert.equal(missing.status, 404);
    assert.match(missing.body, /No such endpoint "\/api\/nope"/);
    assert.equal((await get("/api/config", "POST")).status, 405);
  } finally {
    await api.shutdown();
  }
});

Deno.test("serveApi() /readyz says why it is not ready, as the source tells", async () => {
  let reason = 'cannot bind tcp listener "127.0.0.1:7000" (Address already in use); retrying';
  const source: ApiSource = {
    config: () => ({ version: 1 }),
    services: () => [],
    ready: () => reason === "",
    notReadyReason: () => reason,
    status: () => ({}),
    metrics: () => "",
  };
  const api = await serveApi({
    hostname: "127.0.0.1",
    port: 0,
    source,
    logger: new Logger({ write: () => {} }),
  });
  const readyz = async () => {
    const res = await fetch(`http://127.0.0.1:${api.addr.port}/readyz`);
    return { status: res.status, body: await res.text() };
  };
  try {
    assert.deepEqual(await readyz(), { status: 503, body: `not ready: ${reason}\n` });
    reason = "";
    assert.deepEqual(await readyz(), { status: 200, body: "ready\n" });
  } finally {
    await api.shutdown();
  }
});

Deno.test("serveApi() with serves health answers probes only, with metrics /metrics only", async () => {
  const source: ApiSource = {
    config: () => ({ version: 1, secret: "sa-token-holder" }),
    services: () => [{ service: "web" }],
    ready: () => true,
    status: () => ({}),
    metrics: () => "meshd_up 1\n",
    nodes: () => [],
  };
  const logger = new Logger({ write: () => {} });
  const health = await serveApi({
    hostname: "127.0.0.1",
    port: 0,
    source,
    logger,
    serves: ["health"],
    name: "health",
  });
  const metrics = await serveApi({
    hostname: "127.0.0.1",
    port: 0,
    source,
    logger,
    serves: ["metrics"],
    name: "metrics",
  });
  const get = async (port: number, path: string) => {
    const res = await fetch(`http://127.0.0.1:${port}${path}`);
    return { status: res.status, body: await res.text() };
  };
  try {
    const h = health.addr.port;
    assert.deepEqual(await get(h, "/healthz"), { status: 200, body: "ok\n" });
    assert.deepEqual(await get(h, "/readyz"), { status: 200, body: "ready\n" });
    for (const path of ["/api/config", "/api/services", "/api/status", "/api/status/nodes"]) {
      const r = await get(h, path);
      assert.equal(r.status, 404, path);
      assert.doesNotMatch(r.body, /sa-token-holder|web/);
      assert.match(r.body, /on the health port; try \/healthz, \/readyz/);
    }
    assert.equal((await get(h, "/metrics")).status, 404);
    const m = metrics.addr.port;
    assert.deepEqual(await get(m, "/metrics"), { status: 200, body: "meshd_up 1\n" });
    for (const path of ["/api/config", "/healthz", "/readyz"]) {
      assert.equal((await get(m, path)).status, 404, path);
    }
  } finally {
    await health.shutdown();
    await metrics.shutdown();
  }
});

Deno.test("serveApi() with reusePort lets a second server bind the same port", async () => {
  const source: ApiSource = {
    config: () => null,
    services: () => [],
    ready: () => true,
    status: () => ({}),
    metrics: () => "",
  };
  const logger = new Logger({ write: () => {} });
  const first = await serveApi({ hostname: "127.0.0.1", port: 0, source, logger, reusePort: true });
  try {
    const second = await serveApi({
      hostname: "127.0.0.1",
      port: first.addr.port,
      source,
      logger,
      reusePort: true,
    });
    await second.shutdown();
    // Without it, the port is taken.
    await assert.rejects(
      serveApi({ hostname: "127.0.0.1", port: first.addr.port, source, logger }),
      Deno.errors.AddrInUse,
    );
  } finally {
    await first.shutdown();
  }
});
