/**
 * Retries (issue 18, item 7): `retry-attempts` is capped at 10 (a Service asking for more is
 * refused with an error naming the annotation and the value), each service's retries stay
 * within a budget (a fifth of its requests plus 10 per 10 s), and a request whose client has
 * gone is not retried any more.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { waitFor } from "../testenv/process.ts";
import {
  alive,
  BYSTANDER,
  CountingBackend,
  drops,
  httpStatus,
  type Meshd,
  metric,
  procStats,
  service,
  slice,
  startMeshd,
  stopMeshd,
} from "./_load_env.ts";

const MESHD = "127.0.50.6";
const WEB = "127.0.50.52";
const FAILING = "127.0.50.53";

/** A backend that accepts each connection and closes it after `holdMs`, answering nothing. */
class FailingBackend {
  accepted = 0;
  readonly #listener: Deno.TcpListener;
  readonly #done: Promise<void>;
  readonly #holdMs: number;
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();

  constructor(hostname: string, holdMs: number) {
    this.#holdMs = holdMs;
    this.#listener = Deno.listen({ hostname, port: 0 });
    this.#done = this.#run();
  }

  get port(): number {
    return (this.#listener.addr as Deno.NetAddr).port;
  }

  async #run(): Promise<void> {
    for (;;) {
      let c: Deno.Conn;
      try {
        c = await this.#listener.accept();
      } catch {
        return;
      }
      this.accepted++;
      const t = setTimeout(() => {
        this.#timers.delete(t);
        c.close();
      }, this.#holdMs);
      this.#timers.add(t);
    }
  }

  async close(): Promise<void> {
    this.#listener.close();
    for (const t of this.#timers) clearTimeout(t);
    await this.#done;
  }
}

Deno.test("retry-attempts above 10 is refused, naming the annotation and the value", async () => {
  const web = new CountingBackend(WEB);
  let m: Meshd | undefined;
  try {
    m = await startMeshd({
      address: MESHD,
      nofile: 1024,
      services: 1,
      config: () => [
        service("web", 80),
        slice("web", WEB, web.port),
        service("many", 80, { annotations: { "meshd.io/retry-attempts": "1000000" } }),
        slice("many", WEB, web.port),
      ],
    });
    const mesh = m;
    const status = await waitFor("the refusal in /api/status", async () => {
      const text = await (await fetch(`http://${MESHD}:${mesh.api}/api/status`)).text();
      return text.includes("retry-attempts") ? text : undefined;
    });
    assert.match(
      status,
      /Cannot parse annotation \\"meshd.io\/retry-attempts\\" on Service \\"hl\/many\\": value is \\"1000000\\", expected an integer from 0 to 10/,
    );
    assert.equal(await httpStatus(mesh, "many.hl.mesh"), 404);
    assert.equal(await httpStatus(mesh, "web.hl.mesh"), 200);
  } finally {
    if (m) await stopMeshd(m);
    await web.close();
  }
});

Deno.test("retries of a failing service stay within its retry budget", async () => {
  const failing = new FailingBackend(FAILING, 0);
  const web = new CountingBackend(WEB);
  let m: Meshd | undefined;
  try {
    m = await startMeshd({
      address: MESHD,
      nofile: 1024,
      services: 2,
      config: () => [
        service("web", 80),
        slice("web", WEB, web.port),
        service("flaky", 80, { annotations: { "meshd.io/retry-attempts": "10" } }),
        slice("flaky", FAILING, failing.port),
      ],
    });
    const before = procStats(m);
    const requests = 40;
    let answered = 0;
    for (let i = 0; i < requests; i++) {
      assert.equal(await httpStatus(m, "flaky.hl.mesh"), 502);
      if (i % 8 === 0 && (await httpStatus(m, "web.hl.mesh")) === 200) answered++;
    }
    const during = procStats(m);
    // Without a budget: 40 requests x 11 tries = 440. With it: 40 + 10 + 20% of 40 = 58 in
    // one 10 s window; twice the requests leaves room for a slow run spanning two windows.
    assert.ok(
      failing.accepted <= 2 * requests,
      `${failing.accepted} backend connections for ${requests} requests`,
    );
    const dropped = await drops(m);
    assert.ok(
      (dropped["retry_budget"] ?? 0) >= 1,
      `budget drops not counted: ${JSON.stringify(dropped)}`,
    );
    assert.equal(answered, 5, "other clients went unanswered");
    assert.ok(alive(m));
    console.log(
      `figures: retry budget, ${requests} requests with retry-attempts 10 to a failing backend: ` +
        `${failing.accepted} backend connections (440 unbounded); fds ${before.fds}/${during.fds}/${
          procStats(m).fds
        }, RSS MiB ${before.rssMiB}/${during.rssMiB}/${
          procStats(m).rssMiB
        } (before/during/after); answered to other clients during the attack: ${answered}/5; dropped ${
          JSON.stringify(dropped)
        }`,
    );
  } finally {
    if (m) await stopMeshd(m);
    await Promise.all([failing.close(), web.close()]);
  }
});

Deno.test("a request whose client left is not retried any more", async () => {
  // Each try takes 300 ms to fail: 10 retries would go on for 3 s after the client left.
  const failing = new FailingBackend(FAILING, 300);
  let m: Meshd | undefined;
  try {
    m = await startMeshd({
      address: MESHD,
      nofile: 1024,
      services: 1,
      config: () => [
        service("slow", 80, { annotations: { "meshd.io/retry-attempts": "10" } }),
        slice("slow", FAILING, failing.port),
      ],
    });
    const mesh = m;
    const s = net.connect({ host: MESHD, port: m.http, localAddress: BYSTANDER });
    s.on("error", () => {});
    s.write("GET / HTTP/1.1\r\nHost: slow.hl.mesh\r\n\r\n");
    await waitFor(
      "the first try to reach the backend",
      () => failing.accepted >= 1 ? true : undefined,
    );
    s.destroy();
    const left = failing.accepted;
    await waitFor(
      "meshd to finish the request",
      async () =>
        (await metric(mesh, "meshd_open_connections", 'service="hl/slow"')) === 0
          ? true
          : undefined,
      15_000,
    );
    assert.ok(
      failing.accepted <= left + 1,
      `${failing.accepted - left} more tries after the client left (at most 1 expected)`,
    );
    console.log(
      `figures: client left during retries: ${failing.accepted} tries in all, ${
        failing.accepted - left
      } after it left (11 unbounded)`,
    );
  } finally {
    if (m) await stopMeshd(m);
    await failing.close();
  }
});
