/**
 * Trace context through meshd: W3C `traceparent` and `tracestate`, and Zipkin's B3 (the single
 * `b3` header and the `X-B3-*` set) reach the backend byte for byte, through a TrafficSplit
 * and through a retry after a dead endpoint. meshd is not a tracer: it must neither drop nor
 * rewrite them, or the traces of everything behind it break apart.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { Child, freePort, waitFor, waitForPort } from "../testenv/process.ts";
import { startFileMeshd } from "../testenv/meshd.ts";
import { endpointSlice, pod, service, trafficSplit, yamlDocs } from "../testenv/objects.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const WHOAMI = `${ROOT}examples/quickstart/whoami.ts`;

// Addresses of this file's own.
const V1 = "127.0.73.10";
const V2 = "127.0.73.11";
const DEAD = "127.0.73.12"; // an endpoint of `flaky` that nothing listens on

const TRACE = {
  traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
  tracestate: "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
  b3: "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
  "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
  "x-b3-spanid": "e457b5a2e4d86bd1",
  "x-b3-parentspanid": "05e3ac9a4f6e3b90",
  "x-b3-sampled": "1",
  "x-b3-flags": "1",
};

function objects(p: { v1: number; v2: number; dead: number }): string {
  return yamlDocs(
    pod("tr", "v1-0", V1, "app"),
    pod("tr", "v2-0", V2, "app"),
    pod("tr", "dead-0", DEAD, "app"),
    service("tr", "api"),
    service("tr", "api-v1"),
    service("tr", "api-v2"),
    endpointSlice("tr", "api", "api-a", p.v1, [{ ip: V1, pod: "v1-0" }]),
    endpointSlice("tr", "api-v1", "api-v1-a", p.v1, [{ ip: V1, pod: "v1-0" }]),
    endpointSlice("tr", "api-v2", "api-v2-a", p.v2, [{ ip: V2, pod: "v2-0" }]),
    trafficSplit("tr", "api-split", "api", [["api-v1", 50], ["api-v2", 50]]),
    service("tr", "flaky", { annotations: { "meshd.io/retry-attempts": "3" } }),
    endpointSlice("tr", "flaky", "flaky-a", p.v1, [{ ip: V1, pod: "v1-0" }]),
    endpointSlice("tr", "flaky", "flaky-b", p.dead, [{ ip: DEAD, pod: "dead-0" }]),
  );
}

/** One GET of `host` through meshd with the trace headers; the status and the body. */
function get(port: number, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    let raw = "";
    socket.setEncoding("latin1");
    socket.on("data", (c: string) => raw += c);
    socket.on("error", reject);
    socket.on("end", () => {
      socket.destroy();
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0);
      resolve({ status, body: raw.slice(raw.indexOf("\r\n\r\n") + 4) });
    });
    const fields = Object.entries(TRACE).map(([k, v]) => `${k}: ${v}\r\n`).join("");
    socket.write(`GET / HTTP/1.1\r\nHost: ${host}\r\n${fields}Connection: close\r\n\r\n`);
  });
}

/** The header lines whoami echoed, by lower-case name. */
function echoed(body: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of body.split("\n")) {
    const i = line.indexOf(": ");
    if (i > 0) m.set(line.slice(0, i), line.slice(i + 2));
  }
  return m;
}

Deno.test("meshd passes traceparent, tracestate and B3 through unchanged, through a split and a retry", async () => {
  const dir = await Deno.makeTempDir({ prefix: "meshd-trace-" });
  const children: Child[] = [];
  try {
    const p = { v1: freePort(V1), v2: freePort(V2), dead: freePort(DEAD) };
    const whoami = (name: string, ip: string, port: number) =>
      new Child(name, ["run", "--allow-net", WHOAMI, "--name", name, "--listen", `${ip}:${port}`]);
    children.push(whoami("api-v1", V1, p.v1), whoami("api-v2", V2, p.v2));
    await Deno.writeTextFile(`${dir}/mesh.yaml`, objects(p));
    await Promise.all([waitForPort(V1, p.v1), waitForPort(V2, p.v2)]);
    const meshd = await startFileMeshd(dir);
    children.push(meshd.child);
    const { http, api } = meshd;

    const check = (where: string, body: string) => {
      const got = echoed(body);
      for (const [k, v] of Object.entries(TRACE)) assert.equal(got.get(k), v, `${where}: ${k}`);
    };
    // Through the split: both backends answer, each with the headers intact.
    const seen = new Set<string>();
    await waitFor(
      "answers from both sides of the split",
      async () => {
        const r = await get(http, "api.tr.mesh");
        assert.equal(r.status, 200, r.body);
        const name = echoed(r.body).get("name")!;
        check(`split, ${name}`, r.body);
        seen.add(name);
        return seen.size === 2 ? true : undefined;
      },
      20_000,
      0,
    );

    // Through retries: the dead endpoint is tried first now and then, and the request is sent
    // again to the live one with the same trace headers.
    const retries = async () => {
      const text = await (await fetch(`http://127.0.0.1:${api}/metrics`)).text();
      return Number(
        /^meshd_retries_total\{service="tr\/flaky"[^}]*\} (\d+)$/m.exec(text)?.[1] ?? 0,
      );
    };
    await waitFor(
      "a request to be retried",
      async () => {
        const r = await get(http, "flaky.tr.mesh");
        assert.equal(r.status, 200, r.body);
        check("after a retry", r.body);
        return (await retries()) > 0 ? true : undefined;
      },
      20_000,
      0,
    );
  } finally {
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(dir, { recursive: true });
  }
});
