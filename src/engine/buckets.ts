/**
 * The bounded sets of step shapes the engine records (one CUDA graph each): a launch is padded up to
 * the next bucket, so the graph dictionary stays bounded however requests arrive. Padding costs
 * rows that compute nothing useful: decode rows are cheap (weights dominate at small batch, and
 * attention skips inactive slots), so batch buckets grow by about an eighth at most.
 * @module
 */

/** Decode batch buckets: 1, 2, 4, 8, then steps of 8 up to 64, of 16 up to 128, of 32 up to 256, of 64 beyond. */
export function batch_bucket(n: number, max: number): number {
  if (n <= 0) return 1;
  let b: number;
  if (n <= 8) b = n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : 8;
  else if (n <= 64) b = Math.ceil(n / 8) * 8;
  else if (n <= 128) b = Math.ceil(n / 16) * 16;
  else if (n <= 256) b = Math.ceil(n / 32) * 32;
  else b = Math.ceil(n / 64) * 64;
  return Math.min(b, max);
}

/** Decode length buckets: multiples of 128 (the attention split changes little within one), capped at the context. */
export function length_bucket(n: number, context: number): number {
  return Math.min(context, Math.max(128, Math.ceil(n / 128) * 128));
}

/** Prefill row buckets: powers of two from 16, capped at the budget. */
export function rows_bucket(n: number, max: number): number {
  let b = 16;
  while (b < n) b *= 2;
  return Math.min(b, max);
}

/** Prefill sequence buckets: powers of two, capped. */
export function seqs_bucket(n: number, max: number): number {
  let b = 1;
  while (b < n) b *= 2;
  return Math.min(b, max);
}
