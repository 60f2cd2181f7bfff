/**
 * GPT-2 / nanoGPT model configuration and the canonical weight names the model reads.
 * @module
 */
import type { Activation } from "../backend/backend.ts";
import { describe } from "../util/check.ts";

/** Hyperparameters of a GPT-2 style model (nanoGPT's GPTConfig, HF's GPT2Config). */
export interface GPTConfig {
  /** Transformer blocks. */
  n_layer: number;
  /** Attention heads per block; divides n_embd. */
  n_head: number;
  /** Embedding width C (n_head * head_dim). */
  n_embd: number;
  /** Context length: rows of the position embedding. */
  block_size: number;
  /** Token ids 0..vocab_size-1: rows of wte (before padding to VOCAB_ALIGN). */
  vocab_size: number;
  /** Whether Linear and LayerNorm layers carry biases (nanoGPT `bias`; HF GPT-2 always true). */
  bias: boolean;
  /** nanoGPT: exact erf GELU; HF GPT-2 `gelu_new`: tanh approximation. */
  activation: Exclude<Activation, "none">;
  /** Epsilon of every layernorm, added to the variance (GPT-2: 1e-5). */
  layer_norm_eps: number;
}

/** The GPT-2 family sizes (OpenAI's released models). */
export const GPT2_SIZES: Record<string, Pick<GPTConfig, "n_layer" | "n_head" | "n_embd">> = {
  "gpt2": { n_layer: 12, n_head: 12, n_embd: 768 },
  "gpt2-medium": { n_layer: 24, n_head: 16, n_embd: 1024 },
  "gpt2-large": { n_layer: 36, n_head: 20, n_embd: 1280 },
  "gpt2-xl": { n_layer: 48, n_head: 25, n_embd: 1600 },
};

/** Full config of a GPT-2 size as OpenAI released it (vocab 50257, context 1024, tanh GELU). */
export function gpt2_config(name: string): GPTConfig {
  const s = GPT2_SIZES[name];
  if (!s) {
    throw new Error(`unknown GPT-2 size "${name}": expected one of ${Object.keys(GPT2_SIZES).join(", ")}`);
  }
  return {
    ...s,
    block_size: 1024,
    vocab_size: 50257,
    bias: true,
    activation: "gelu_tanh",
    layer_norm_eps: 1e-5,
  };
}

/** Throws an Error naming the field when a config is not one the model can run. */
export function validate_config(c: GPTConfig, what = "model config"): void {
  for (const k of ["n_layer", "n_head", "n_embd", "block_size", "vocab_size"] as const) {
    const v = c[k];
    if (!Number.isSafeInteger(v) || v <= 0) {
      throw new Error(`${what}: ${k} must be a positive integer, got ${describe(v)}`);
    }
  }
  if (c.n_embd % c.n_head !== 0) {
    throw new Error(`${what}: n_embd (${c.n_embd}) must be divisible by n_head (${c.n_head})`);
  }
  const eps: unknown = c.layer_norm_eps;
  if (typeof eps !== "number" || !Number.isFinite(eps) || !(eps > 0)) {
    throw new Error(`${what}: layer_norm_eps must be a finite number > 0, got ${describe(eps)}`);
  }
  if (typeof c.bias !== "boolean") {
    throw new Error(`${what}: bias must be a boolean, got ${describe(c.bias)}`);
  }
  if (c.activation !== "gelu_erf" && c.activation !== "gelu_tanh") {
    throw new Error(`${what}: activation must be "gelu_erf" or "gelu_tanh", got ${describe(c.activation)}`);
  }
}

/**
 * Canonical weight names and shapes, (out_features, in_features) for Linear weights.
 * `lm_head` is absent when tied to `wte` (always, for GPT-2 and nanoGPT).
 */
export function weight_shapes(c: GPTConfig): Map<string, number[]> {
  const C = c.n_embd;
  const m = new Map<string, number[]>();
  m.set("wte", [c.vocab_size, C]);
  m.set("wpe", [c.block_size, C]);
  for (let i = 0; i < c.n_layer; i++) {
    const p = `h.${i}.`;
    m.set(p + "ln_1.weight", [C]);
    m.set(p + "attn.c_attn.weight", [3 * C, C]);
    m.set(p + "attn.c_proj.weight", [C, C]);
    m.set(p + "ln_2.weight", [C]);
    m.set(p + "mlp.c_fc.weight", [4 * C, C]);
    m.set(p + "mlp.c_proj.weight", [C, 4 * C]);
    if (c.bias) {
      m.set(p + "ln_1.bias", [C]);
      m.set(p + "attn.c_attn.bias", [3 * C]);
      m.set(p + "attn.c_proj.bias", [C]);
      m.set(p + "ln_2.bias", [C]);
      m.set(p + "mlp.c_fc.bias", [4 * C]);
      m.set(p + "mlp.c_proj.bias", [C]);
    }
  }
  m.set("ln_f.weight", [C]);
  if (c.bias) m.set("ln_f.bias", [C]);
  return m;
}
