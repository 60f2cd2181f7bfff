/**
 * Random-weight models (format "random") for benchmarks and tests without a checkpoint: deterministic
 * normal(0, 0.02) weights, LayerNorm weights 1 and biases 0, generated lazily, one tensor per read.
 *
 * Speed: gpt2-xl has 1.5e9 weights, too many to draw one by one in JavaScript. A pool of 2^20 normal
 * samples is drawn once per (seed, dtype); each tensor is filled with 1024-element runs copied from
 * pool offsets chosen by a PRNG keyed by the seed and the tensor's name. Every weight is normal(0,
 * 0.02), and the result depends only on (seed, name, dtype), not on the read order.
 * @module
 */
import { type GPTConfig, validate_config, weight_shapes } from "../model/config.ts";
import type { ModelSource, TensorSource } from "../model/source.ts";

const POOL_SIZE = 1 << 20;
const RUN = 1024;
const STD = 0.02;

/** mulberry32: a small, fast 32-bit PRNG. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** FNV-1a of a string, mixed with a seed. */
function hash(seed: number, s: string): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** f32 -> bf16 bits, round to nearest even. */
function bf16_bits(x: number, scratch_f: Float32Array, scratch_u: Uint32Array): number {
  scratch_f[0] = x;
  const u = scratch_u[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

const pools = new Map<string, Float32Array | Uint16Array>();

function normal_pool(seed: number, dtype: "f32" | "bf16"): Float32Array | Uint16Array {
  const key = `${seed}:${dtype}`;
  const cached = pools.get(key);
  if (cached) return cached;
  const next = mulberry32(hash(seed, "normal pool"));
  const f = new Float32Array(POOL_SIZE);
  for (let i = 0; i < POOL_SIZE; i += 2) {
    // Box-Muller; u1 in (0, 1].
    const u1 = (next() + 1) / 4294967296;
    const u2 = next() / 4294967296;
    const r = Math.sqrt(-2 * Math.log(u1)) * STD;
    f[i] = r * Math.cos(2 * Math.PI * u2);
    f[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  let pool: Float32Array | Uint16Array = f;
  if (dtype === "bf16") {
    const b = new Uint16Array(POOL_SIZE);
    const sf = new Float32Array(1);
    const su = new Uint32Array(sf.buffer);
    for (let i = 0; i < POOL_SIZE; i++) b[i] = bf16_bits(f[i], sf, su);
    pool = b;
  }
  pools.set(key, pool);
  return pool;
}

function fill_tensor(name: string, numel: number, seed: number, dtype: "f32" | "bf16"): Uint8Array {
  const out = dtype === "f32" ? new Float32Array(numel) : new Uint16Array(numel);
  const is_ln_weight = /(^|\.)ln_(1|2|f)\.weight$/.test(name);
  if (name.endsWith(".bias")) return new Uint8Array(out.buffer); // zeros
  if (is_ln_weight) {
    out.fill(dtype === "f32" ? 1 : 0x3f80);
    return new Uint8Array(out.buffer);
  }
  const pool = normal_pool(seed, dtype);
  const next = mulberry32(hash(seed, name));
  const span = POOL_SIZE - RUN;
  for (let o = 0; o < numel; o += RUN) {
    const n = Math.min(RUN, numel - o);
    const src = next() % span;
    if (out instanceof Float32Array) out.set((pool as Float32Array).subarray(src, src + n), o);
    else out.set((pool as Uint16Array).subarray(src, src + n), o);
  }
  return new Uint8Array(out.buffer);
}

/**
 * A ModelSource of random weights for `config` (normal(0, 0.02); LayerNorm weights 1, biases 0), in
 * f32 or bf16 (half the bytes), deterministic in `seed` (default 0). Tokenizer: GPT-2 BPE.
 * `origin` names it in messages (default: its size and seed).
 */
export function random_model_source(
  config: GPTConfig,
  opts: { seed?: number; dtype?: "f32" | "bf16"; origin?: string } = {},
): ModelSource {
  validate_config(config, "random model config");
  const seed = (opts.seed ?? 0) >>> 0;
  const dtype = opts.dtype ?? "f32";
  if (dtype !== "f32" && dtype !== "bf16") {
    throw new Error(`random model: dtype must be f32 or bf16, got ${dtype}`);
  }
  const tensors = new Map<string, TensorSource>();
  for (const [name, shape] of weight_shapes(config)) {
    const numel = shape.reduce((a, b) => a * b, 1);
    tensors.set(name, {
      name,
      dtype,
      shape,
      read: () => Promise.resolve(fill_tensor(name, numel, seed, dtype)),
    });
  }
  return {
    origin: opts.origin ?? `random (n_layer ${config.n_layer}, n_embd ${config.n_embd}, seed ${seed})`,
    format: "random",
    config,
    tensors,
    tokenizer: { kind: "gpt2" },
    [Symbol.dispose]: () => {},
  };
}
