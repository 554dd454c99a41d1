/**
 * HTTPRouteGroup regular expressions against hostile requests and hostile patterns, through
 * meshd with the file provider as users run it. A client picks the path and headers a pattern is
 * matched against, so matching must take linear time whatever the pattern (Traefik Mesh's Go
 * regexp does); and a pattern that is valid alone but not in the form meshd matches it in must
 * be refused with its object, not fail every later reload.
 */
import assert from "node:assert/strict";
import { waitFor } from "../testenv/process.ts";
import { apiGet, rawGet, serviceYaml, startFilesMesh, type Status } from "./_meshd_files.ts";

/** A TrafficSplit of web to web-v2 for the requests that match HTTPRouteGroup `g`. */
function splitYaml(matches: string): string {
  return `apiVersion: specs.smi-spec.io/v1alpha3
kind: HTTPRouteGroup
metadata: { name: g, namespace: sec }
spec:
  matches:
${matches}
---
apiVersion: split.smi-spec.io/v1alpha3
kind: TrafficSplit
metadata: { name: web, namespace: sec }
spec:
  service: web
  matches: [{ kind: HTTPRouteGroup, name: g }]
  backends: [{ service: web-v2, weight: 1 }]
`;
}

Deno.test("meshd matches a backtracking HTTPRouteGroup pattern in linear time: a client's path or header cannot stall it", async () => {
  const mesh = await startFilesMesh();
  try {
    await Deno.writeTextFile(`${mesh.dir}/v2.yaml`, serviceYaml("web-v2", mesh.backendPort));
    // Each pattern backtracks exponentially on the backtracking engine when it fails to match;
    // on Go's RE2 (Traefik Mesh) it takes linear time.
    await Deno.writeTextFile(
      `${mesh.dir}/split.yaml`,
      splitYaml(
        `    - { name: path, pathRegex: "/(a+)+b" }\n` +
          `    - { name: header, headers: [{ x-tier: "^(a|aa)+$" }] }\n`,
      ),
    );
    await waitFor("the split to apply", async () => {
      const c = await apiGet<{ services: { name: string; ports: { split: unknown }[] }[] }>(
        mesh,
        "/api/config",
      );
      return c.services.some((s) => s.name === "web" && s.ports[0]?.split) ? true : undefined;
    }, 15_000);
    const hostile = [
      { path: `/${"a".repeat(4000)}`, headers: {} },
      { path: "/x", headers: { "x-tier": `${"a".repeat(4000)}b` } },
    ];
    for (const h of hostile) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: mesh.http });
      const head = Object.entries(h.headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
      await conn.write(
        new TextEncoder().encode(
          `GET ${h.path} HTTP/1.1\r\nHost: web.sec.mesh\r\n${head}Connection: close\r\n\r\n`,
        ),
      );
      const started = Date.now();
      const timer = setTimeout(() => conn.close(), 5000);
      const text = await new Response(conn.readable).text().catch(() => "");
      clearTimeout(timer);
      assert.match(
        text,
        /^HTTP\/1\.1 200 /,
        `a hostile ${h.path.length > 10 ? "path" : "header"} must be answered at once, ` +
          `got ${JSON.stringify(text.slice(0, 40))} after ${Date.now() - started} ms`,
      );
    }
    const health = await fetch(`http://127.0.0.1:${mesh.api}/healthz`, {
      signal: AbortSignal.timeout(5000),
    });
    assert.equal(health.status, 200);
    await health.body?.cancel();
  } finally {
    // A stalled event loop takes no SIGTERM.
    mesh.meshd.kill("SIGKILL");
    await mesh.stop();
  }
});

Deno.test("meshd refuses a pathRegex that is valid alone but not as the prefix it stands for, and goes on applying changes", async () => {
  const mesh = await startFilesMesh();
  try {
    await Deno.writeTextFile(`${mesh.dir}/v2.yaml`, serviceYaml("web-v2", mesh.backendPort));
    // `/*` is a valid regex (any number of slashes), but meshd matches `^/(?:*)`, as Traefik
    // Mesh builds PathPrefix(`/{path:*}`), which Go's regexp refuses too.
    await Deno.writeTextFile(
      `${mesh.dir}/split.yaml`,
      splitYaml(`    - { name: all, pathRegex: "/*" }\n`),
    );
    await waitFor("the HTTPRouteGroup's error at /api/status", async () => {
      const s = await apiGet<Status>(mesh, "/api/status");
      const e = s.errors.find((e) => e.file === "split.yaml");
      if (!e) return undefined;
      assert.equal(e.field, "spec.matches[0].pathRegex");
      assert.match(e.message, /not a valid regular expression "\/\*"/);
      return true;
    }, 15_000);
    // The reload that carried it applied the rest: a Service added meanwhile routes.
    await Deno.writeTextFile(`${mesh.dir}/late.yaml`, serviceYaml("late", mesh.backendPort));
    await waitFor("late.sec.mesh to answer 200", async () => {
      const r = await rawGet(mesh.http, "late.sec.mesh");
      return r.status === 200 ? true : undefined;
    }, 15_000);
    const failed = mesh.meshd.lines.filter((l) => l.includes("reload failed"));
    assert.deepEqual(failed, [], "no reload may fail");
  } finally {
    await mesh.stop();
  }
});
