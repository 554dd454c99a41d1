/**
 * A token bucket: `rate` tokens a second, at most `burst` saved up. It starts full, so a
 * client that was quiet may send `burst` requests at once and then `rate` a second.
 *
 * @example
 * ```ts
 * const bucket = new TokenBucket(100, 200);
 * if (!bucket.take()) respond(429);
 * ```
 */
export class TokenBucket {
  #tokens: number;
  #last: number;

  constructor(
    readonly rate: number,
    readonly burst: number,
    readonly now: () => number = Date.now,
  ) {
    this.#tokens = burst;
    this.#last = now();
  }

  /** Takes one token; false when there is none (the request is over the limit). */
  take(): boolean {
    const t = this.now();
    if (t > this.#last) {
      this.#tokens = Math.min(this.burst, this.#tokens + ((t - this.#last) * this.rate) / 1000);
      this.#last = t;
    }
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  /** Milliseconds until the next token, for a Retry-After hint. */
  waitMs(): number {
    return this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) * 1000) / this.rate);
  }
}
