import type { Registry } from "../observability/mod.ts";
import type { MeshConfig } from "../topology/mod.ts";
import type { BindError, ListenerState } from "./node_proxy.ts";

/**
 * What the node and the CLI drive: one {@linkcode NodeProxy} in the main isolate
 * (`--workers 1`), or a {@linkcode ProxyPool} of workers. See NodeProxy for each member.
 */
export interface DataPlane {
  /** Where the node's own metrics go (with a pool: the main isolate's, not the workers'). */
  readonly registry: Registry;
  readonly httpAddress: string;
  readonly version: number;
  readonly inFlight: number;
  start(): Promise<void>;
  apply(config: MeshConfig): Promise<void>;
  listener(protocol: string, listenPort: number | null): ListenerState;
  bindErrors(): BindError[];
  /**
   * The ports bound now; `own` says how many sockets this process holds on a port when more
   * than one (a pool's workers each bind it).
   */
  listening(): {
    tcp: number[];
    udp: number[];
    own?: { tcp: ReadonlyMap<number, number>; udp: ReadonlyMap<number, number> };
  };
  udpAwaitingAnswer(ms: number): number;
  drain(): Promise<void>;
  stop(): Promise<void>;
  /** `/metrics` when it must be gathered (a pool's workers); else the registry's. */
  metrics?(): Promise<string>;
}
