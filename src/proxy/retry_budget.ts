/** How many retries a service may make: a share of its requests, plus a small floor. */
export interface RetryBudgetOptions {
  /** Retries allowed as a share of the requests in the window. Default 0.2. */
  ratio?: number;
  /** Retries always allowed in a window, for services with little traffic. Default 10. */
  minRetries?: number;
  /** The window, in ms. Default 10 s. */
  windowMs?: number;
  /** The clock in ms; a test seam. Default `performance.now`. */
  now?: () => number;
}

const SLOTS = 10;

/**
 * One service's retry budget, as Finagle and Envoy keep one: over the last `windowMs`,
 * retries may be at most `ratio` of the requests plus `minRetries`. When a backend fails every
 * request, retries then add a fifth to its load rather than multiplying it.
 *
 * @example
 * ```ts
 * const budget = new RetryBudget();
 * budget.request();
 * if (budget.retry()) {
 *   // send it again
 * }
 * ```
 */
export class RetryBudget {
  readonly #ratio: number;
  readonly #min: number;
  readonly #slotMs: number;
  readonly #now: () => number;
  // Requests and retries per slot of windowMs / SLOTS, as a ring.
  readonly #requests = new Array<number>(SLOTS).fill(0);
  readonly #retries = new Array<number>(SLOTS).fill(0);
  #slot = 0;

  constructor(options: RetryBudgetOptions = {}) {
    this.#ratio = options.ratio ?? 0.2;
    this.#min = options.minRetries ?? 10;
    this.#slotMs = (options.windowMs ?? 10_000) / SLOTS;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Counts a request (its first try). */
  request(): void {
    this.#requests[this.#advance()]!++;
  }

  /** Takes one retry from the budget; false when it is spent. */
  retry(): boolean {
    const i = this.#advance();
    let requests = 0;
    let retries = 0;
    for (let k = 0; k < SLOTS; k++) {
      requests += this.#requests[k]!;
      retries += this.#retries[k]!;
    }
    if (retries >= this.#min + this.#ratio * requests) return false;
    this.#retries[i]!++;
    return true;
  }

  /** Moves the ring to now, clearing the slots that left the window; returns the current. */
  #advance(): number {
    const slot = Math.floor(this.#now() / this.#slotMs);
    const gap = Math.min(SLOTS, slot - this.#slot);
    for (let k = 1; k <= gap; k++) {
      const i = (this.#slot + k) % SLOTS;
      this.#requests[i] = 0;
      this.#retries[i] = 0;
    }
    if (gap > 0) this.#slot = slot;
    return this.#slot % SLOTS;
  }
}

/** The retry budget of each service, by service key. */
export class RetryBudgets {
  readonly #budgets = new Map<string, RetryBudget>();
  readonly #options: RetryBudgetOptions;

  constructor(options: RetryBudgetOptions = {}) {
    this.#options = options;
  }

  /** The budget of `service` (`namespace/name`). */
  of(service: string): RetryBudget {
    let b = this.#budgets.get(service);
    if (!b) this.#budgets.set(service, b = new RetryBudget(this.#options));
    return b;
  }

  /** Forgets the budgets of services not in `keep`. */
  retain(keep: Set<string>): void {
    for (const k of this.#budgets.keys()) if (!keep.has(k)) this.#budgets.delete(k);
  }
}
