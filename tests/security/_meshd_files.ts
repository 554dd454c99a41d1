/**
 * A meshd with the file provider on a temporary directory and one whoami backend, for the
 * bad-file tests of this tier. Addresses 127.0.60.x and 127.0.61.x are this tier's own.
 *
 * @module
 */
import { type Child, freePort, waitFor, waitForPort } from "../testenv/process.ts";
import { spawnMeshd } from "../testenv/meshd.ts";
import { rawGet, startWhoami } from "../testenv/backends.ts";

export { rawGet };

export const BACKEND_IP = "127.0.60.1";

/** A Service and its EndpointSlice in namespace `sec`, routed to the whoami backend. */
export function serviceYaml(name: string, port: number): string {
  return `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: sec }
spec: { ports: [{ name: web, port: 80 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ${name}-1
  namespace: sec
  labels: { kubernetes.io/service-name: ${name} }
addressType: IPv4
ports: [{ name: web, port: ${port}, protocol: TCP }]
endpoints:
  - addresses: ["${BACKEND_IP}"]
    conditions: { ready: true }
`;
}

/** A running meshd, its directory and ports. */
export interface FilesMesh {
  dir: string;
  meshd: Child;
  http: number;
  api: number;
  backendPort: number;
  stop(): Promise<void>;
}

/** Starts the backend and meshd with `web.yaml` in the directory; waits until it routes. */
export async function startFilesMesh(extraArgs: string[] = []): Promise<FilesMesh> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-sec-" });
  const children: Child[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(children.map((c) => c.stop()));
    await Deno.remove(dir, { recursive: true });
  };
  try {
    const backendPort = freePort(BACKEND_IP);
    children.push(startWhoami(BACKEND_IP, backendPort));
    await Deno.writeTextFile(`${dir}/web.yaml`, serviceYaml("web", backendPort));
    const http = freePort();
    const api = freePort();
    const tcp = freePort();
    const meshd = spawnMeshd([
      "--provider=file",
      "--config-dir",
      dir,
      "--http-port",
      String(http),
      "--api-port",
      String(api),
      "--tcp-ports",
      `${tcp}-${tcp}`,
      "--log-format",
      "json",
      ...extraArgs,
    ]);
    children.push(meshd);
    await waitForPort(BACKEND_IP, backendPort);
    const mesh = { dir, meshd, http, api, backendPort, stop };
    await waitFor("meshd to route web.sec.mesh", async () => {
      const r = await rawGet(http, "web.sec.mesh");
      return r.status === 200 ? true : undefined;
    }, 30_000);
    return mesh;
  } catch (e) {
    await stop();
    throw e;
  }
}

/** `/api/status` of meshd. */
export interface Status {
  version: number;
  errors: { file?: string; field?: string; message: string }[];
  warnings: string[];
}

export async function apiGet<T>(mesh: FilesMesh, path: string): Promise<T> {
  const res = await fetch(`http://127.0.0.1:${mesh.api}${path}`, {
    signal: AbortSignal.timeout(5000),
  });
  return await res.json() as T;
}

/** meshd's resident memory in kB, from /proc. */
export function rssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
  return Number(m?.[1] ?? 0);
}
