/**
 * The tests' seeded random numbers.
 * @module
 */

/** A seeded uniform generator in [0, 1) (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The seed of a test file's random inputs: a fixed default, or $NGPT_TEST_SEED to try another;
 * print it in every failure message so a failure can be replayed.
 */
export function test_seed(fallback = 0x5eed): number {
  let v: string | undefined;
  try {
    v = Deno.env.get("NGPT_TEST_SEED");
  } catch { /* no env permission: the default */ }
  if (v === undefined || v === "") return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new Error(`NGPT_TEST_SEED must be an integer, got "${v}"`);
  return n;
}
