/** Numeric comparison helpers for tests. */

/** ||a - b|| / ||b|| in f64 (||a - b|| when b is all zeros); Infinity when a holds a non-finite value. */
export function rel_l2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** Index of the largest value (lowest index on ties). */
export function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

/** Path of a fixture file under tests/fixtures/. */
export function fixture(name: string): string {
  return decodeURIComponent(new URL(`../fixtures/${name}`, import.meta.url).pathname);
}
