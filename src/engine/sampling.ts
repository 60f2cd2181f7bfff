/**
 * Sampling parameters of one request: defaults (those of nanoGPT's sample.py) and validation.
 * @module
 */
import { check_choice, check_int, check_keys, describe } from "../util/check.ts";

/** What happens past the model's context (block_size). */
export type ContextOverflow = "slide" | "error";

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
  /**
   * Past the model's context: "slide" (keep the last block_size tokens and recompute, as nanoGPT's
   * sample.py) or "error" (refuse a prompt + max_new_tokens longer than the context). Default: the
   * load option `context_overflow`, itself "slide" by default.
   */
  context_overflow?: ContextOverflow;
}

/** Every field resolved and checked. */
export type ResolvedSampling = Required<SamplingOptions>;

/** nanoGPT sample.py's defaults. */
export const SAMPLING_DEFAULTS: Readonly<Omit<ResolvedSampling, "seed">> = {
  max_new_tokens: 500,
  temperature: 0.8,
  top_k: 200,
  top_p: 1,
  stop: [],
  stop_at_eot: true,
  context_overflow: "slide",
};

/** The keys of SamplingOptions (for unknown-key checks). */
export const SAMPLING_KEYS: readonly (keyof SamplingOptions)[] = [
  "max_new_tokens",
  "temperature",
  "top_k",
  "top_p",
  "seed",
  "stop",
  "stop_at_eot",
  "context_overflow",
];

/**
 * Fills defaults (`defaults` over SAMPLING_DEFAULTS) and throws an Error naming the option when a
 * value is out of range or of the wrong type. Unknown keys are checked by the caller, which knows
 * what else a request may hold.
 */
export function resolve_sampling(
  o: SamplingOptions = {},
  defaults: Partial<ResolvedSampling> = {},
): ResolvedSampling {
  const given = Object.fromEntries(
    Object.entries(o).filter(([k, v]) =>
      v !== undefined && SAMPLING_KEYS.includes(k as keyof SamplingOptions)
    ),
  );
  const r: ResolvedSampling = {
    ...SAMPLING_DEFAULTS,
    seed: Math.floor(Math.random() * 2 ** 52),
    ...defaults,
    ...given,
  };
  check_int("max_new_tokens", r.max_new_tokens, 0);
  check_int("top_k", r.top_k, 0);
  check_int("seed", r.seed, 0);
  if (typeof r.temperature !== "number" || !Number.isFinite(r.temperature) || r.temperature < 0) {
    throw new RangeError(`temperature must be a finite number >= 0, got ${describe(r.temperature)}`);
  }
  if (typeof r.top_p !== "number" || !(r.top_p > 0 && r.top_p <= 1)) {
    throw new RangeError(`top_p must be in (0, 1], got ${describe(r.top_p)}`);
  }
  // findIndex, not some: some() skips the holes of a sparse array such as [, "x"].
  if (!Array.isArray(r.stop) || r.stop.findIndex((s) => typeof s !== "string" || s.length === 0) >= 0) {
    throw new TypeError(`stop must be an array of non-empty strings, got ${describe(r.stop)}`);
  }
  if (typeof r.stop_at_eot !== "boolean") {
    throw new TypeError(`stop_at_eot must be a boolean, got ${describe(r.stop_at_eot)}`);
  }
  check_choice("context_overflow", r.context_overflow, ["slide", "error"]);
  return r;
}

/** Throws naming the key when `o` holds anything but sampling options and `extra` keys. */
export function check_request_keys(o: unknown, what: string, extra: readonly string[] = []): void {
  check_keys(o, [...extra, ...SAMPLING_KEYS], what);
}

/** Splits a seed (< 2^53) into the (lo, hi) u32 pair the samplers key Philox with. */
export function seed_words(seed: number): [number, number] {
  return [seed % 2 ** 32 >>> 0, Math.floor(seed / 2 ** 32) >>> 0];
}
