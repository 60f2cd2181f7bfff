/**
 * nanoGPT checkpoints (`ckpt.pt` as train.py saves it) as a ModelSource: config from `model_args`,
 * tensors under canonical names, and the vocabulary found the way nanoGPT's sample.py finds it.
 * @module
 */
import { dirname, join, resolve } from "node:path";
import { type GPTConfig, validate_config, weight_shapes } from "../model/config.ts";
import { unpickle } from "./pickle.ts";
import type { ModelSource, TensorSource, TokenizerSpec } from "./source.ts";
import { TorchCheckpoint, TorchTensor } from "./torch_checkpoint.ts";

/** Reads a required / optional field of a pickled dict. */
function field(m: Map<unknown, unknown>, key: string, what: string): unknown {
  if (!m.has(key)) throw new Error(`${what}: missing field "${key}"`);
  return m.get(key);
}

/** GPTConfig from a nanoGPT checkpoint's `model_args` (exact erf GELU, LayerNorm eps 1e-5). */
export function nanogpt_config(model_args: unknown, what: string): GPTConfig {
  if (!(model_args instanceof Map)) throw new Error(`${what}: model_args is not a dict`);
  const int = (k: string) => {
    const v = field(model_args, k, `${what}: model_args`);
    if (typeof v !== "number" || !Number.isSafeInteger(v)) {
      throw new Error(`${what}: model_args.${k} must be an integer, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const bias = model_args.has("bias") ? model_args.get("bias") : true; // nanoGPT's GPTConfig default
  if (typeof bias !== "boolean") throw new Error(`${what}: model_args.bias must be a bool, got ${bias}`);
  const config: GPTConfig = {
    n_layer: int("n_layer"),
    n_head: int("n_head"),
    n_embd: int("n_embd"),
    block_size: int("block_size"),
    vocab_size: int("vocab_size"),
    bias,
    activation: "gelu_erf",
    layer_norm_eps: 1e-5,
  };
  validate_config(config, `${what}: model_args`);
  return config;
}

/** Canonical name of a nanoGPT state-dict key (`_orig_mod.` and `transformer.` stripped). */
export function nanogpt_canonical_name(key: string): string {
  let k = key;
  while (k.startsWith("_orig_mod.")) k = k.slice("_orig_mod.".length);
  if (k.startsWith("transformer.")) k = k.slice("transformer.".length);
  if (k === "wte.weight" || k === "wpe.weight" || k === "lm_head.weight") {
    return k.slice(0, -".weight".length);
  }
  return k;
}

/**
 * A character vocabulary from a nanoGPT `meta.pkl` (a dict with `stoi` and `itos`); with `vocab_size`,
 * every id must be below it.
 */
export async function load_char_vocab(
  meta_path: string,
  vocab_size?: number,
): Promise<TokenizerSpec & { kind: "char" }> {
  const meta = unpickle(await Deno.readFile(meta_path), { what: meta_path });
  if (!(meta instanceof Map)) throw new Error(`${meta_path}: expected a pickled dict`);
  const stoi = field(meta, "stoi", meta_path);
  const itos = field(meta, "itos", meta_path);
  if (!(stoi instanceof Map) || !(itos instanceof Map)) {
    throw new Error(`${meta_path}: stoi and itos must be dicts`);
  }
  for (const [s, i] of stoi) {
    if (typeof s !== "string" || typeof i !== "number") {
      throw new Error(`${meta_path}: stoi must map str -> int, found ${JSON.stringify(s)} -> ${i}`);
    }
  }
  for (const [i, s] of itos) {
    if (typeof s !== "string" || typeof i !== "number") {
      throw new Error(`${meta_path}: itos must map int -> str, found ${i} -> ${JSON.stringify(s)}`);
    }
    if (vocab_size !== undefined && (!Number.isInteger(i) || i < 0 || i >= vocab_size)) {
      throw new Error(`${meta_path}: token id ${i} is outside the model's vocab_size ${vocab_size}`);
    }
  }
  return { kind: "char", stoi: stoi as Map<string, number>, itos: itos as Map<number, string> };
}

async function is_file(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/**
 * The vocabulary of a nanoGPT checkpoint, like sample.py: `meta.pkl` beside the checkpoint, else
 * `data/<dataset>/meta.pkl` relative to the working directory, then to the checkpoint's directory's
 * parent (the nanoGPT repo when the checkpoint sits in `out-*`); with none, GPT-2 BPE. With
 * `vocab_size`, a meta.pkl holding larger ids is an error naming it.
 */
export async function find_nanogpt_vocab(
  ckpt_path: string,
  dataset?: string,
  vocab_size?: number,
): Promise<TokenizerSpec> {
  const abs = resolve(ckpt_path);
  const candidates = [join(dirname(abs), "meta.pkl")];
  if (dataset && /^[\w.-]+$/.test(dataset) && dataset !== "." && dataset !== "..") {
    candidates.push(resolve(join("data", dataset, "meta.pkl")));
    candidates.push(join(dirname(dirname(abs)), "data", dataset, "meta.pkl"));
  }
  for (const c of candidates) if (await is_file(c)) return await load_char_vocab(c, vocab_size);
  return { kind: "gpt2" };
}

function same_bytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

const shape_str = (s: readonly number[]) => `[${s.join(", ")}]`;

/**
 * Opens a nanoGPT checkpoint. Every canonical tensor must be present with its exact shape; a missing,
 * mis-shaped or unexpected tensor is an Error naming it, both shapes and the file.
 */
export async function open_nanogpt(path: string, opts: { origin?: string } = {}): Promise<ModelSource> {
  const ckpt = await TorchCheckpoint.open(path);
  try {
    const root = ckpt.root;
    if (!(root instanceof Map)) {
      throw new Error(`${path}: not a nanoGPT checkpoint (the pickle is not a dict)`);
    }
    if (!root.has("model") || !root.has("model_args")) {
      throw new Error(
        `${path}: not a nanoGPT checkpoint: expected "model" and "model_args" entries, found ` +
          `${[...root.keys()].map((k) => JSON.stringify(k)).join(", ")}`,
      );
    }
    const config = nanogpt_config(root.get("model_args"), path);
    const model = root.get("model");
    if (!(model instanceof Map)) throw new Error(`${path}: "model" is not a state dict`);

    const expected = weight_shapes(config);
    const found = new Map<string, { key: string; t: TorchTensor }>();
    const unexpected: string[] = [];
    let lm_head: { key: string; t: TorchTensor } | null = null;
    for (const [key, t] of model) {
      if (typeof key !== "string") throw new Error(`${path}: model has a non-string key ${key}`);
      if (!(t instanceof TorchTensor)) throw new Error(`${path}: model entry "${key}" is not a tensor`);
      const name = nanogpt_canonical_name(key);
      // The causal-mask buffer older nanoGPT (no flash attention) keeps in its state dict.
      if (/^h\.\d+\.attn\.(bias|masked_bias)$/.test(name) && t.shape.length === 4) continue;
      if (name === "lm_head") {
        lm_head = { key, t };
        continue;
      }
      if (!expected.has(name)) {
        unexpected.push(`"${key}" with shape ${shape_str(t.shape)}`);
        continue;
      }
      const prev = found.get(name);
      if (prev) throw new Error(`${path}: tensors "${prev.key}" and "${key}" both map to "${name}"`);
      found.set(name, { key, t });
    }
    for (const [name, shape] of expected) {
      const f = found.get(name);
      if (!f) throw new Error(`${path}: missing tensor "${name}" (expected shape ${shape_str(shape)})`);
      if (f.t.shape.length !== shape.length || f.t.shape.some((s, i) => s !== shape[i])) {
        throw new Error(
          `${path}: tensor "${name}" ("${f.key}") has shape ${shape_str(f.t.shape)}, expected ${
            shape_str(shape)
          }`,
        );
      }
    }
    if (unexpected.length) {
      throw new Error(
        `${path}: unexpected model tensor ${unexpected.join(", ")} (not part of a GPT with n_layer=` +
          `${config.n_layer}, bias=${config.bias})`,
      );
    }
    if (lm_head) {
      const wte = found.get("wte")!;
      const shape = [config.vocab_size, config.n_embd];
      if (lm_head.t.shape.length !== 2 || lm_head.t.shape.some((s, i) => s !== shape[i])) {
        throw new Error(
          `${path}: tensor "lm_head" ("${lm_head.key}") has shape ${shape_str(lm_head.t.shape)}, ` +
            `expected ${shape_str(shape)}`,
        );
      }
      const tied = lm_head.t.same_view(wte.t) ||
        (lm_head.t.dtype === wte.t.dtype && same_bytes(await lm_head.t.read(), await wte.t.read()));
      if (tied) lm_head = null;
      else found.set("lm_head", lm_head);
    }

    const tensors = new Map<string, TensorSource>();
    for (const [name, { key, t }] of found) {
      const dtype = t.dtype;
      if (dtype !== "f32" && dtype !== "f16" && dtype !== "bf16") {
        throw new Error(`${path}: tensor "${name}" ("${key}") has dtype ${dtype}: expected f32, f16 or bf16`);
      }
      tensors.set(name, { name, dtype, shape: [...t.shape], read: () => t.read() });
    }

    const cfg = root.get("config");
    const dataset = cfg instanceof Map && typeof cfg.get("dataset") === "string"
      ? cfg.get("dataset") as string
      : undefined;
    const tokenizer = await find_nanogpt_vocab(path, dataset, config.vocab_size);
    return {
      origin: opts.origin ?? path,
      format: "nanogpt",
      config,
      tensors,
      tokenizer,
      [Symbol.dispose]: () => ckpt.close(),
    };
  } catch (e) {
    ckpt.close();
    throw e;
  }
}
