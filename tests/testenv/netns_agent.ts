/**
 * The program the netns harness runs inside each node and pod network namespace. The test
 * drives it over stdin/stdout, one JSON object per line (`{id, op, ...}` in, `{id, ok, ...}`
 * out), so it never needs a network path from the host into a namespace:
 *
 * - `serve`: a pod's small programs: whoami over HTTP (answers JSON saying which pod served
 *   and who connected), a TCP service that names the pod and echoes, a UDP one that does the
 *   same per datagram.
 * - `relay`: listens on TCP inside the namespace and pipes each connection to a Unix socket
 *   (a path, which crosses namespaces), through which the test reaches the API server.
 * - `forward`: the other way, a Unix socket to TCP inside the namespace, through which the API
 *   server reaches a real node's kubelet (`kubectl exec`, `logs`).
 * - `fetch`, `tcp`, `udp`: one client exchange from inside the namespace, names resolved by
 *   the namespace's resolv.conf.
 * - `load` / `load-status` / `load-stop`: a bounded HTTP load loop; the replies count
 *   successes, failures (with their reasons) and which pod answered.
 *
 * Started as `ip netns exec <ns> deno run --allow-all netns_agent.ts <name> <run dir>`; the run
 * dir is only there so leftovers of a crashed run can be found by their command line.
 *
 * @module
 */

const NAME = Deno.args[0] ?? "agent";
const enc = new TextEncoder();
const dec = new TextDecoder();

type Msg = { id: number; op: string; [k: string]: unknown };
type Reply = Record<string, unknown>;

function send(o: Reply): void {
  Deno.stdout.writeSync(enc.encode(JSON.stringify(o) + "\n"));
}

function errText(e: unknown): string {
  const err = e as Error & { cause?: Error };
  const cause = err.cause?.message ? ` (${err.cause.message})` : "";
  return `${err.name}: ${err.message}${cause}`;
}

// ---- serving ----

function serveHttp(port: number): void {
  Deno.serve({ hostname: "0.0.0.0", port, onListen: () => {} }, async (req, info) => {
    const remote = info.remoteAddr as Deno.NetAddr;
    const body = req.body ? (await req.arrayBuffer()).byteLength : 0;
    return Response.json({
      pod: NAME,
      remote: remote.hostname,
      host: req.headers.get("host"),
      path: new URL(req.url).pathname,
      bodyBytes: body,
    });
  });
}

async function serveTcp(port: number): Promise<void> {
  const l = Deno.listen({ hostname: "0.0.0.0", port });
  for await (const c of l) {
    (async () => {
      const remote = (c.remoteAddr as Deno.NetAddr).hostname;
      try {
        await c.write(enc.encode(`${NAME} ${remote}\n`));
        const buf = new Uint8Array(16 * 1024);
        for (;;) {
          const n = await c.read(buf);
          if (n === null) break;
          await c.write(buf.subarray(0, n));
        }
      } catch { /* the client went away */ }
      try {
        c.close();
      } catch { /* closed */ }
    })();
  }
}

async function serveUdp(port: number): Promise<void> {
  const s = Deno.listenDatagram({ hostname: "0.0.0.0", port, transport: "udp" });
  for await (const [data, addr] of s) {
    const from = (addr as Deno.NetAddr).hostname;
    await s.send(enc.encode(`${NAME} ${from} ${dec.decode(data)}`), addr).catch(() => {});
  }
}

// ---- relaying ----

async function relay(hostname: string, port: number, path: string): Promise<void> {
  const l = Deno.listen({ hostname, port });
  for await (const c of l) {
    (async () => {
      let u: Deno.UnixConn | null = null;
      try {
        u = await Deno.connect({ transport: "unix", path });
        await Promise.all([
          c.readable.pipeTo(u.writable).catch(() => {}),
          u.readable.pipeTo(c.writable).catch(() => {}),
        ]);
      } catch {
        try {
          c.close();
        } catch { /* closed */ }
      }
    })();
  }
}

/** The other way: listens on Unix socket `path` and pipes each connection to TCP `hostname:port` here. */
async function forward(path: string, hostname: string, port: number): Promise<void> {
  const l = Deno.listen({ transport: "unix", path });
  for await (const u of l) {
    (async () => {
      let c: Deno.TcpConn | null = null;
      try {
        c = await Deno.connect({ hostname, port });
        await Promise.all([
          u.readable.pipeTo(c.writable).catch(() => {}),
          c.readable.pipeTo(u.writable).catch(() => {}),
        ]);
      } catch {
        try {
          u.close();
        } catch { /* closed */ }
      }
    })();
  }
}

// ---- client side ----

async function fetchOnce(m: Msg): Promise<Reply> {
  const t0 = performance.now();
  try {
    const r = await fetch(m["url"] as string, {
      method: (m["method"] as string) ?? "GET",
      headers: (m["headers"] as Record<string, string>) ?? {},
      body: (m["body"] as string) ?? undefined,
      signal: AbortSignal.timeout((m["timeoutMs"] as number) ?? 5_000),
    });
    const body = await r.text();
    return { status: r.status, body, ms: performance.now() - t0 };
  } catch (e) {
    return { error: errText(e), ms: performance.now() - t0 };
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

async function resolve(host: string): Promise<string> {
  if (/^[0-9.]+$/.test(host)) return host;
  // Deno.resolveDns reads the namespace's /etc/resolv.conf, as getaddrinfo would.
  const [a] = await Deno.resolveDns(host, "A");
  if (!a) throw new Error(`${host} has no A record`);
  return a;
}

async function tcpOnce(m: Msg): Promise<Reply> {
  const timeout = (m["timeoutMs"] as number) ?? 5_000;
  let c: Deno.TcpConn | null = null;
  try {
    const hostname = await resolve(m["host"] as string);
    c = await withTimeout(
      Deno.connect({ hostname, port: m["port"] as number }),
      timeout,
      "connect",
    );
    const payload = m["send"] as string;
    await c.write(enc.encode(payload));
    // The server names itself in a first line, then echoes: read until the echo is whole.
    let got = "";
    const buf = new Uint8Array(16 * 1024);
    while (!got.includes("\n") || got.slice(got.indexOf("\n") + 1).length < payload.length) {
      const n = await withTimeout(c.read(buf), timeout, "read");
      if (n === null) break;
      got += dec.decode(buf.subarray(0, n));
    }
    return { reply: got };
  } catch (e) {
    return { error: errText(e) };
  } finally {
    try {
      c?.close();
    } catch { /* closed */ }
  }
}

async function udpOnce(m: Msg): Promise<Reply> {
  const timeout = (m["timeoutMs"] as number) ?? 2_000;
  const s = Deno.listenDatagram({ hostname: "0.0.0.0", port: 0, transport: "udp" });
  try {
    const hostname = await resolve(m["host"] as string);
    await s.send(enc.encode(m["send"] as string), {
      transport: "udp",
      hostname,
      port: m["port"] as number,
    });
    const [data] = await withTimeout(s.receive(), timeout, "udp receive");
    return { reply: dec.decode(data) };
  } catch (e) {
    return { error: errText(e) };
  } finally {
    s.close();
  }
}

/** Load loops by the id of the message that started them. */
const loads = new Map<number, { stop: boolean; done: Promise<Reply>; counts: () => Reply }>();

function startLoad(m: Msg): void {
  const url = m["url"] as string;
  const maxRequests = (m["maxRequests"] as number) ?? 10_000;
  const maxMs = (m["maxMs"] as number) ?? 30_000;
  const concurrency = (m["concurrency"] as number) ?? 2;
  const end = performance.now() + maxMs;
  let sent = 0, ok = 0, failed = 0;
  const errors: Record<string, number> = {};
  const by: Record<string, number> = {};
  const state = {
    stop: false,
    done: Promise.resolve({} as Reply),
    counts: (): Reply => ({ sent, ok, failed, errors, by }),
  };
  const worker = async () => {
    while (!state.stop && sent < maxRequests && performance.now() < end) {
      sent++;
      const r = await fetchOnce({ id: 0, op: "fetch", url, timeoutMs: 5_000 });
      if (r["status"] === 200) {
        ok++;
        const pod = (JSON.parse(r["body"] as string) as { pod: string }).pod;
        by[pod] = (by[pod] ?? 0) + 1;
      } else {
        failed++;
        const why = (r["error"] as string) ?? `status ${r["status"]}`;
        errors[why] = (errors[why] ?? 0) + 1;
      }
    }
  };
  state.done = Promise.all(Array.from({ length: concurrency }, worker)).then(state.counts);
  loads.set(m.id, state);
}

// ---- the command loop ----

async function handle(m: Msg): Promise<Reply> {
  switch (m.op) {
    case "serve": {
      if (m["http"]) serveHttp(m["http"] as number);
      if (m["tcp"]) serveTcp(m["tcp"] as number).catch((e) => console.error(errText(e)));
      if (m["udp"]) serveUdp(m["udp"] as number).catch((e) => console.error(errText(e)));
      return {};
    }
    case "relay":
      relay(m["hostname"] as string, m["port"] as number, m["path"] as string)
        .catch((e) => console.error(errText(e)));
      return {};
    case "forward":
      forward(m["path"] as string, m["hostname"] as string, m["port"] as number)
        .catch((e) => console.error(errText(e)));
      return {};
    case "fetch":
      return await fetchOnce(m);
    case "tcp":
      return await tcpOnce(m);
    case "udp":
      return await udpOnce(m);
    case "load":
      startLoad(m);
      return {};
    case "load-status": {
      const l = loads.get(m["load"] as number);
      return l ? l.counts() : { error: `no load loop ${m["load"]}` };
    }
    case "load-stop": {
      const l = loads.get(m["load"] as number);
      if (!l) return { error: `no load loop ${m["load"]}` };
      l.stop = true;
      loads.delete(m["load"] as number);
      return await l.done;
    }
    default:
      return { error: `unknown op ${m.op}` };
  }
}

let rest = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  const lines = (rest + chunk).split("\n");
  rest = lines.pop()!;
  for (const line of lines.filter(Boolean)) {
    const m = JSON.parse(line) as Msg;
    handle(m).then(
      (r) => send({ id: m.id, ...r }),
      (e) => send({ id: m.id, error: errText(e) }),
    );
  }
}
// stdin closed: the test is done with this namespace.
Deno.exit(0);
