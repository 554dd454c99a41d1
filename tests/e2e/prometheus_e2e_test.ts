/**
 * meshd's Grafana dashboard against a real Prometheus: Debian's `prometheus` scrapes two meshd
 * processes while clients make traffic that moves every signal the dashboard shows (requests,
 * a denial, retries and an ejection caused by a dead endpoint, a circuit breaker), and every
 * query the dashboard holds is evaluated through Prometheus's HTTP API. A query that returns
 * nothing, or only NaN, fails the test: a renamed metric or label cannot leave a panel empty
 * without anyone noticing.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { Child, freePort, waitFor, waitForPort } from "../testenv/process.ts";
import { startFileMeshd } from "../testenv/meshd.ts";
import {
  anyHttpRoute,
  endpointSlice,
  pod,
  service,
  trafficTarget,
  yamlDocs,
} from "../testenv/objects.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const WHOAMI = `${ROOT}examples/quickstart/whoami.ts`;
const DASHBOARD = `${ROOT}manifests/observability/meshd-dashboard.json`;

// Addresses of this file's own.
const WEB_POD = "127.0.72.1"; // ServiceAccount obs/web: let in
const INTRUDER_POD = "127.0.72.2"; // ServiceAccount obs/intruder: denied
const API_POD = "127.0.72.10"; // the live endpoint
const DEAD_POD = "127.0.72.11"; // an endpoint nothing listens on: retries and an ejection

/** The Prometheus binary from Debian's package, fetched into the cache once. */
async function prometheusBinary(): Promise<string> {
  const out = await new Deno.Command("bash", {
    args: [`${ROOT}tests/testenv/prometheus/fetch.sh`],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  assert.ok(out.success, "tests/testenv/prometheus/fetch.sh failed");
  return new TextDecoder().decode(out.stdout).trim();
}

function mesh(apiPort: number, deadPort: number): string {
  return yamlDocs(
    pod("obs", "web-0", WEB_POD, "web"),
    pod("obs", "intruder-0", INTRUDER_POD, "intruder"),
    pod("obs", "api-0", API_POD, "api"),
    pod("obs", "api-1", DEAD_POD, "api"),
    service("obs", "api", {
      annotations: {
        "meshd.io/retry-attempts": "2",
        "meshd.io/circuit-breaker-expression": "NetworkErrorRatio() > 0.9",
      },
    }),
    endpointSlice("obs", "api", "api-a", apiPort, [{ ip: API_POD, pod: "api-0" }]),
    endpointSlice("obs", "api", "api-b", deadPort, [{ ip: DEAD_POD, pod: "api-1" }]),
    anyHttpRoute("obs", "all"),
    trafficTarget("obs", "web-to-api", "web", "api", "all", ["any"]),
  );
}

/** One GET of `api.obs.mesh` from `source` through the meshd on `port`; the status. */
function get(source: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress: source });
    let raw = "";
    socket.setEncoding("latin1");
    socket.on("data", (c: string) => raw += c);
    socket.on("error", reject);
    socket.on("end", () => {
      socket.destroy();
      resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0));
    });
    socket.write("GET / HTTP/1.1\r\nHost: api.obs.mesh\r\nConnection: close\r\n\r\n");
  });
}

interface PromVector {
  metric: Record<string, string>;
  value: [number, string];
}

/** Every query in the dashboard: its panels' targets and its variables' queries. */
function dashboardQueries(): { where: string; expr: string }[] {
  const d = JSON.parse(Deno.readTextFileSync(DASHBOARD));
  const out: { where: string; expr: string }[] = [];
  for (const p of d.panels ?? []) {
    for (const t of p.targets ?? []) out.push({ where: `${p.title} (${t.refId})`, expr: t.expr });
  }
  for (const v of d.templating?.list ?? []) {
    if (v.type !== "query") continue;
    // Grafana's label_values(metric, label) is what Prometheus's series API answers.
    const q = typeof v.query === "string" ? v.query : v.query.query;
    const m = /^label_values\((\w+),\s*(\w+)\)$/.exec(q);
    assert.ok(m, `variable ${v.name}: only label_values(metric, label) is checked, got ${q}`);
    out.push({ where: `variable $${v.name}`, expr: `group by (${m[2]}) (${m[1]})` });
  }
  return out;
}

Deno.test("meshd dashboard: every query returns data from a real Prometheus scraping two meshd", async () => {
  const prometheus = await prometheusBinary();
  const dir = await Deno.makeTempDir({ prefix: "meshd-prometheus-" });
  const children: Child[] = [];
  try {
    const apiPort = freePort(API_POD);
    const deadPort = freePort(DEAD_POD);
    children.push(
      new Child("api", [
        "run",
        "--allow-net",
        WHOAMI,
        "--name",
        "api",
        "--listen",
        `${API_POD}:${apiPort}`,
      ]),
    );
    await Deno.mkdir(`${dir}/config`);
    await Deno.writeTextFile(`${dir}/config/mesh.yaml`, mesh(apiPort, deadPort));

    await waitForPort(API_POD, apiPort);
    const nodes: { http: number; api: number; metrics: number }[] = [];
    for (const i of [0, 1]) {
      const metrics = freePort();
      const m = await startFileMeshd(`${dir}/config`, [
        "--metrics-port",
        String(metrics),
        "--acl=true",
        "--outlier-failures",
        "1",
        "--log-format",
        "json",
      ], `meshd-${i}`);
      children.push(m.child);
      nodes.push({ ...m, metrics });
    }

    const promPort = freePort();
    await Deno.writeTextFile(
      `${dir}/prometheus.yml`,
      `global: { scrape_interval: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: meshd
    static_configs:
      - targets: [${nodes.map((n) => `"127.0.0.1:${n.metrics}"`).join(", ")}]
`,
    );
    children.push(
      new Child("prometheus", [
        `--config.file=${dir}/prometheus.yml`,
        `--storage.tsdb.path=${dir}/tsdb`,
        `--web.listen-address=127.0.0.1:${promPort}`,
        "--log.level=warn",
      ], { command: prometheus }),
    );
    const query = async (expr: string): Promise<PromVector[]> => {
      const r = await fetch(
        `http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(expr)}`,
      );
      const body = await r.json();
      assert.equal(body.status, "success", `${expr}: ${JSON.stringify(body)}`);
      return body.data.result as PromVector[];
    };
    await waitFor(
      "Prometheus to scrape both meshd",
      async () => {
        const up = await query("up == 1");
        return up.length === 2 ? true : undefined;
      },
      30_000,
      250,
    );

    // Traffic through both nodes for as long as the queries run: let in, denied, and sent to a
    // dead endpoint first now and then (retried, then ejected). Rates need two samples.
    const statuses = new Map<number, number>();
    let stop = false;
    const traffic = (async () => {
      while (!stop) {
        for (const n of nodes) {
          for (const [source, count] of [[WEB_POD, 4], [INTRUDER_POD, 1]] as const) {
            for (let k = 0; k < count; k++) {
              const s = await get(source, n.http);
              statuses.set(s, (statuses.get(s) ?? 0) + 1);
            }
          }
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    try {
      const queries = dashboardQueries();
      assert.ok(queries.length >= 15, `the dashboard has ${queries.length} queries`);
      // $__rate_interval is Grafana's; 4 scrape intervals is its floor. "All" is `.*`.
      const concrete = (e: string) =>
        e.replaceAll("$__rate_interval", "4s").replaceAll("$instance", ".*").replaceAll(
          "$service",
          ".*",
        );
      const results = new Map<string, PromVector[]>();
      await waitFor(
        "every dashboard query to return a number",
        async () => {
          const empty: string[] = [];
          for (const q of queries) {
            const r = await query(concrete(q.expr));
            results.set(q.where, r);
            if (!r.some((v) => Number.isFinite(Number(v.value[1])))) empty.push(q.where);
          }
          return empty.length === 0 ? true : (() => {
            throw new Error(`no data yet for: ${empty.join("; ")}`);
          })();
        },
        45_000,
        1000,
      );

      // The signals are the ones the traffic made, from both nodes.
      assert.ok(
        (statuses.get(200) ?? 0) > 0 && (statuses.get(403) ?? 0) > 0,
        `statuses ${[...statuses]}`,
      );
      const one = (where: string) => results.get(where) ?? [];
      const denied = one("Denied per second, by reason (A)");
      assert.ok(denied.some((v) => v.metric.reason === "acl"), JSON.stringify(denied));
      const versions = one("Config version per node (A)");
      assert.equal(versions.length, 2, JSON.stringify(versions));
      assert.deepEqual(
        new Set(one("Data path per node (A)").map((v) => v.metric.datapath)),
        new Set(["userspace"]),
      );
      const ejected = one("Endpoint ejections (A)");
      assert.ok(
        ejected.some((v) => v.metric.endpoint === `${DEAD_POD}:${deadPort}`),
        JSON.stringify(ejected),
      );
      assert.ok(one("Retries per second (A)").length > 0);
      assert.ok(
        one("variable $service").some((v) => v.metric.service?.includes("api")),
        JSON.stringify(one("variable $service")),
      );
    } finally {
      stop = true;
      await traffic;
    }
  } finally {
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("meshd manifests: the scrape annotations name the port meshd serves /metrics on", async () => {
  for (const file of ["manifests/daemonset.yaml", "charts/meshd/templates/daemonset.yaml"]) {
    const text = await Deno.readTextFile(`${ROOT}${file}`);
    const annotated = /prometheus\.io\/port: "(\d+)"/.exec(text)?.[1];
    const served = /--metrics-port=(\d+)/.exec(text)?.[1];
    assert.ok(annotated && served, `${file}: annotation ${annotated}, flag ${served}`);
    assert.equal(annotated, served, file);
    assert.match(text, /prometheus\.io\/scrape: "true"/, file);
    assert.match(text, /prometheus\.io\/path: \/metrics/, file);
  }
});
