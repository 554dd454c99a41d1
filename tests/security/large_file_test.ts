/**
 * Issue 18, item 10: a large config file is parsed off the serving thread. While meshd reads
 * a 2.6 MB file of 30,000 endpoints (seconds of YAML parsing), another client keeps getting
 * answers from the last good config; a file past the size limit is an error naming it.
 */
import assert from "node:assert/strict";
import { apiGet, rawGet, rssKb, startFilesMesh, type Status } from "./_meshd_files.ts";
import { waitFor } from "../testenv/process.ts";

function bigYaml(endpoints: number): string {
  const eps: string[] = [];
  for (let i = 0; i < endpoints; i++) {
    eps.push(
      `  - addresses: ["127.0.61.${
        i % 250 + 1
      }"]\n    conditions: { ready: true }\n    nodeName: node-${i}\n`,
    );
  }
  return `apiVersion: v1
kind: Service
metadata: { name: big, namespace: sec }
spec: { ports: [{ name: web, port: 80 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: big-1, namespace: sec, labels: { kubernetes.io/service-name: big } }
addressType: IPv4
ports: [{ name: web, port: 9, protocol: TCP }]
endpoints:
${eps.join("")}`;
}

Deno.test("FileProvider keeps answering other clients while it parses a large file", async () => {
  const mesh = await startFilesMesh();
  try {
    const before = await apiGet<Status>(mesh, "/api/status");
    const rssBefore = rssKb(mesh.meshd.pid);
    const answers: number[] = []; // when each 200 from the last good config came
    const failures: number[] = [];
    let rssPeak = rssBefore;
    const t0 = performance.now();
    await Deno.writeTextFile(`${mesh.dir}/big.yaml`, bigYaml(30_000));
    // One client asks web.sec.mesh over and over; the loop ends once the big file is applied
    // (the version moves), or at a generous deadline.
    let applied = 0;
    while (performance.now() - t0 < 120_000) {
      const r = await rawGet(mesh.http, "web.sec.mesh", { timeoutMs: 120_000 });
      if (r.status === 200) answers.push(performance.now());
      else failures.push(r.status);
      rssPeak = Math.max(rssPeak, rssKb(mesh.meshd.pid));
      const s = await apiGet<Status>(mesh, "/api/status").catch(() => null);
      if (s && s.version > before.version) {
        applied = performance.now();
        break;
      }
    }
    assert.ok(applied > 0, "the large file was not applied within 120 s");
    assert.deepEqual(failures, [], "the last good config must keep answering");
    // The middle half of the time the load took: parsing, whatever the machine's speed. Were
    // it on the serving thread, not one answer would come in it.
    const d = applied - t0;
    const during = answers.filter((t) => t > t0 + d / 4 && t < t0 + (3 * d) / 4).length;
    console.log(
      `load ${d.toFixed(0)} ms; ${answers.length} answers, ${during} in its middle half; ` +
        `RSS ${rssBefore} kB before, ${rssPeak} kB peak, ${rssKb(mesh.meshd.pid)} kB after`,
    );
    assert.ok(d > 200, `the load took ${d.toFixed(0)} ms: too quick to judge, grow the file`);
    assert.ok(during > 0, `no answer in the middle of a ${d.toFixed(0)} ms load`);
    const services = await apiGet<{ service: string; endpoints: { total: number } }[]>(
      mesh,
      "/api/services",
    );
    // 30,000 endpoints over 250 addresses: the same address is one endpoint.
    assert.equal(services.find((s) => s.service === "big")?.endpoints.total, 250);

    // Past the size limit: an error naming the file, and the big Service stays as it was.
    await Deno.writeTextFile(`${mesh.dir}/big.yaml`, bigYaml(60_000));
    await waitFor("an error naming big.yaml", async () => {
      const s = await apiGet<Status>(mesh, "/api/status");
      return s.errors.find((e) => e.file === "big.yaml" && /more than the limit/.test(e.message));
    }, 30_000);
    assert.equal((await rawGet(mesh.http, "web.sec.mesh")).status, 200);
  } finally {
    await mesh.stop();
  }
});
