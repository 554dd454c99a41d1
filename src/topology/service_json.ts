import type { MeshService } from "./mesh_config.ts";

const cache = new WeakMap<MeshService, string>();

/**
 * The JSON text of a service, computed once per service object. MeshConfig services are never
 * changed once built, so a config that keeps the unchanged services of the one before (as
 * {@linkcode buildMeshConfig} and `applyDelta` do) compares them for free: by reference, or
 * by text already made. With 10,000 services this is most of what a one-endpoint change costs
 * the leader.
 */
export function serviceJson(s: MeshService): string {
  let text = cache.get(s);
  if (text === undefined) {
    text = JSON.stringify(s);
    cache.set(s, text);
  }
  return text;
}

/** Records `text` as the JSON of `s`, made by whoever built it. */
export function knownServiceJson(s: MeshService, text: string): void {
  cache.set(s, text);
}
