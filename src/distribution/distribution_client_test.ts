/**
 * The node's client against a leader that goes away at the worst moment. The client runs in a
 * worker: if its event loop gets stuck, the test's own loop still turns, sees it, and ends it.
 */
import assert from "node:assert/strict";
import { waitFor } from "../_testing.ts";
import { createLeaderIdentity } from "./leader_identity.ts";
import type { SubscriberEvent, SubscriberStart } from "./testdata/subscriber_worker.ts";

/** An empty HTTP/2 SETTINGS frame (RFC 9113, 6.5), then a GOAWAY (6.8): last stream 0, NO_ERROR. */
const SETTINGS_THEN_GOAWAY = new Uint8Array([
  ...[0, 0, 0, 0x4, 0, 0, 0, 0, 0],
  ...[0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
]);

Deno.test("DistributionClient leaves, and keeps its thread turning, a leader whose GOAWAY comes with its SETTINGS", async () => {
  // A leader that stops leading as a node connects: its SETTINGS and GOAWAY reach the node in
  // one read (a busy node reads late). The node's gRPC library then took the connection as
  // ready and dead at once, and retried the call on it forever in microtasks: no timer, no
  // I/O and no log line ran again in the process, and its memory grew until it was killed.
  const identity = await createLeaderIdentity("leaving-leader");
  const listener = Deno.listenTls({
    hostname: "127.0.62.1",
    port: 0,
    cert: identity.certPem,
    key: identity.keyPem,
    alpnProtocols: ["h2"],
  });
  const port = (listener.addr as Deno.NetAddr).port;
  const conns = new Set<Deno.TlsConn>();
  let accepted = 0;
  const served: Promise<void>[] = [];
  const serve = async (conn: Deno.TlsConn) => {
    const buf = new Uint8Array(4096);
    try {
      await conn.handshake();
      await conn.read(buf); // the node's preface and SETTINGS
      await conn.write(SETTINGS_THEN_GOAWAY);
      while (await conn.read(buf) !== null) { /* until the node leaves */ }
    } catch { /* the node reset it, or the test closed it */ }
    conns.delete(conn);
    try {
      conn.close();
    } catch { /* closed */ }
  };
  const accepting = (async () => {
    for await (const conn of listener) {
      accepted++;
      conns.add(conn);
      served.push(serve(conn));
    }
  })();

  const worker = new Worker(new URL("./testdata/subscriber_worker.ts", import.meta.url), {
    type: "module",
  });
  let lastBeat = performance.now();
  const logs: string[] = [];
  worker.onmessage = (e: MessageEvent<SubscriberEvent>) => {
    if (e.data.t === "beat") lastBeat = performance.now();
    else logs.push(e.data.line);
  };
  try {
    worker.postMessage(
      { address: `127.0.62.1:${port}`, certPem: identity.certPem } satisfies SubscriberStart,
    );
    await waitFor("the node to connect three times, its thread turning", () => {
      const silentMs = Math.round(performance.now() - lastBeat);
      if (silentMs > 1000) throw new Error(`the node's thread is stuck: silent ${silentMs} ms`);
      return accepted >= 3 ? true : undefined;
    });
    assert.match(logs.join("\n"), /config stream from the leader failed/);
  } finally {
    worker.terminate();
    listener.close();
    await accepting;
    for (const c of conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await Promise.all(served);
  }
});
