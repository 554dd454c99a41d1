/** A part of a running meshd: started in the order of its assembly, stopped in reverse. */
export interface Service {
  /** What it is, for a reader of the assembly. */
  readonly name: string;
  /** Starts it; throws a `CliError` the user can act on when it cannot. */
  start(): Promise<void> | void;
  /** Stops it; called even when its start threw, so it stops what got started. */
  stop?(): Promise<void> | void;
}

/**
 * Starts services one after the other and stops, in reverse, each one it tried to start: a
 * service started after another may use it until it stops.
 *
 * @example
 * ```ts
 * const stack = new ServiceStack();
 * try {
 *   await stack.start([proxy, api]);
 * } finally {
 *   await stack.stop();
 * }
 * ```
 */
export class ServiceStack {
  readonly #tried: Service[] = [];

  /** Starts `services` in order; the first that throws stops the rest from starting. */
  async start(services: readonly Service[]): Promise<void> {
    for (const s of services) {
      this.#tried.push(s);
      await s.start();
    }
  }

  /**
   * Stops every service it tried to start, the last first. A stop that throws does not keep
   * the ones before it running (the proxy's listeners open, say): they are stopped all the
   * same, and the first error is thrown once all are.
   */
  async stop(): Promise<void> {
    let failed: { error: unknown } | null = null;
    while (this.#tried.length > 0) {
      try {
        await this.#tried.pop()!.stop?.();
      } catch (e) {
        failed ??= { error: e };
      }
    }
    if (failed) throw failed.error;
  }
}
