/**
 * Smooth weighted round robin (the algorithm nginx uses): each pick adds every item's weight
 * to its running score, takes the highest, and subtracts the total from it. Over any run of
 * `sum(weights)` picks each item is chosen exactly `weight` times, interleaved rather than in
 * bursts, so a 75/25 split is 75/25 after a hundred requests, not just on average.
 *
 * @example
 * ```ts
 * const w = new WeightedChooser([["v1", 3], ["v2", 1]]);
 * w.next(); // "v1", then "v1", "v2", "v1", ...
 * ```
 */
export class WeightedChooser<T> {
  readonly #items: T[];
  readonly #weights: number[];
  readonly #current: number[];
  readonly #total: number;

  /** Items with weights above 0; others are left out. */
  constructor(items: readonly [T, number][]) {
    const kept = items.filter(([, w]) => w > 0);
    this.#items = kept.map(([t]) => t);
    this.#weights = kept.map(([, w]) => w);
    this.#current = kept.map(() => 0);
    this.#total = this.#weights.reduce((a, b) => a + b, 0);
  }

  /** The items that can be chosen. */
  get items(): readonly T[] {
    return this.#items;
  }

  /** How many items can be chosen. */
  get size(): number {
    return this.#items.length;
  }

  /** The next item, or `undefined` when there is none. */
  next(): T | undefined {
    let best = -1;
    for (let i = 0; i < this.#items.length; i++) {
      this.#current[i]! += this.#weights[i]!;
      if (best < 0 || this.#current[i]! > this.#current[best]!) best = i;
    }
    if (best < 0) return undefined;
    this.#current[best]! -= this.#total;
    return this.#items[best];
  }
}
