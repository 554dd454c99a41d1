import type { ConfigError } from "./errors.ts";
import type { MeshObject } from "./objects.ts";

/**
 * What one load of objects produced, from either provider (the files or the Kubernetes API):
 * the input of `compileMeshConfig`, with what was wrong with it.
 */
export interface LoadResult {
  /** The objects in force: new where they decoded, the last good version where they did not. */
  objects: MeshObject[];
  /** Bad input, each naming the file, the document and, where it can, the field. */
  errors: ConfigError[];
  /** Skipped documents (unknown kinds) and objects kept from an earlier load. */
  warnings: string[];
  /**
   * Documents skipped without a warning, for the debug log: kinds any application manifest
   * carries (ServiceAccount, Deployment, ...).
   */
  notes?: string[];
}
