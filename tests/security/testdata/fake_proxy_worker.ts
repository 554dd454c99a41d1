/**
 * A proxy worker with no proxy, for `proxy_pool_hostile_test.ts`: it answers the pool's
 * messages with a made-up state and metrics, where each metrics answer counts 10 requests more
 * (a counter) and reports one open connection (a gauge). Worker 1 dies on config version 66
 * and hangs for good (a busy loop) on version 77.
 *
 * @module
 */

// deno-lint-ignore no-explicit-any
const scope = self as any as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
};

let index = -1;
let version = 0;
let scrapes = 0;

function state(): Record<string, unknown> {
  return {
    version,
    httpAddress: "127.0.69.20:1",
    listening: { tcp: [], udp: [] },
    bindErrors: [],
    inFlight: 0,
    udpAwaiting: 0,
  };
}

scope.onmessage = (e: MessageEvent) => {
  const m = e.data;
  const reply = (body: Record<string, unknown>) => scope.postMessage({ id: m.id, ...body });
  switch (m.t) {
    case "start":
      index = m.index;
      reply({ t: "ok", state: state() });
      return;
    case "apply":
      if (index === 1 && m.config.version === 66) {
        setTimeout(() => {
          throw new Error("crashed by the test");
        });
        return;
      }
      if (index === 1 && m.config.version === 77) {
        setTimeout(() => {
          while (true) { /* hung by the test */ }
        });
        return;
      }
      version = m.config.version;
      reply({ t: "ok", state: state() });
      return;
    case "metrics":
      scrapes++;
      reply({
        t: "ok",
        metrics: [
          {
            name: "meshd_test_requests_total",
            help: "Requests.",
            type: "counter",
            merge: "sum",
            series: [["", scrapes * 10]],
          },
          {
            name: "meshd_test_open_connections",
            help: "Open connections.",
            type: "gauge",
            merge: "sum",
            series: [["", 1]],
          },
        ],
      });
      return;
    default:
      reply({ t: "ok", state: state() });
  }
};
