/**
 * Sampling parameters of one request: defaults (those of nanoGPT's sample.py) and validation.
 * @module
 */

/** How to pick tokens and when to stop, per request. */
export interface SamplingOptions {
  /** Tokens to generate at most (default 500, as nanoGPT's sample.py). */
  max_new_tokens?: number;
  /** Softmax temperature; 0 = greedy argmax (default 0.8, as sample.py). */
  temperature?: number;
  /** Keep only the k most likely tokens; 0 = off (default 200, as sample.py). */
  top_k?: number;
  /** Keep the smallest set of tokens whose probability reaches p; 1 = off (default 1). */
  top_p?: number;
  /** Seed of the request's random stream: the same seed gives the same text (default: random). */
  seed?: number;
  /** Stop when the text contains any of these; the stop string is not returned. */
  stop?: string[];
  /** Stop at the end-of-text token when the tokenizer has one (default true). */
  stop_at_eot?: boolean;
}

/** Every field resolved and checked. */
export type ResolvedSampling = Required<SamplingOptions>;

/** nanoGPT sample.py's defaults. */
export const SAMPLING_DEFAULTS: Omit<ResolvedSampling, "seed"> = {
  max_new_tokens: 500,
  temperature: 0.8,
  top_k: 200,
  top_p: 1,
  stop: [],
  stop_at_eot: true,
};

/** Fills defaults and throws an Error naming the option when a value is out of range. */
export function resolve_sampling(o: SamplingOptions = {}): ResolvedSampling {
  const r: ResolvedSampling = {
    ...SAMPLING_DEFAULTS,
    seed: Math.floor(Math.random() * 2 ** 52),
    ...Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)),
  };
  const int_at_least = (name: keyof ResolvedSampling, v: number, min: number) => {
    if (!Number.isSafeInteger(v) || v < min) {
      throw new RangeError(`${name} must be an integer >= ${min}, got ${v}`);
    }
  };
  int_at_least("max_new_tokens", r.max_new_tokens, 0);
  int_at_least("top_k", r.top_k, 0);
  int_at_least("seed", r.seed, 0);
  if (!Number.isFinite(r.temperature) || r.temperature < 0) {
    throw new RangeError(`temperature must be a finite number >= 0, got ${r.temperature}`);
  }
  if (!(r.top_p > 0 && r.top_p <= 1)) throw new RangeError(`top_p must be in (0, 1], got ${r.top_p}`);
  if (!Array.isArray(r.stop) || r.stop.some((s) => typeof s !== "string" || s.length === 0)) {
    throw new TypeError(`stop must be an array of non-empty strings, got ${JSON.stringify(r.stop)}`);
  }
  return r;
}

/** Splits a seed (< 2^53) into the (lo, hi) u32 pair the samplers key Philox with. */
export function seed_words(seed: number): [number, number] {
  return [seed % 2 ** 32 >>> 0, Math.floor(seed / 2 ** 32) >>> 0];
}
