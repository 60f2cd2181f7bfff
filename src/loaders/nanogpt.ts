/**
 * nanoGPT checkpoints (`ckpt.pt` as train.py saves it) as a ModelSource: config from `model_args`,
 * tensors under canonical names, and the vocabulary found the way nanoGPT's sample.py finds it.
 * @module
 */
import { dirname, join, resolve } from "node:path";
import { type GPTConfig, validate_config } from "../model/config.ts";
import { describe } from "../util/check.ts";
import type { ModelSource, TokenizerSpec } from "../model/source.ts";
import { unpickle } from "./pickle.ts";
import { CharTokenizer } from "../tokenizer/char.ts";
import { SafetensorsFile } from "./safetensors.ts";
import { canonical_tensors, type StateDictFormat, type StoredTensor } from "./state_dict.ts";
import { MAX_PICKLE_BYTES, TorchCheckpoint, TorchTensor } from "./torch_checkpoint.ts";

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
      throw new Error(`${what}: model_args.${k} must be an integer, got ${describe(v)}`);
    }
    return v;
  };
  const bias = model_args.has("bias") ? model_args.get("bias") : true; // nanoGPT's GPTConfig default
  if (typeof bias !== "boolean") {
    throw new Error(`${what}: model_args.bias must be a bool, got ${describe(bias)}`);
  }
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
  const bytes = (await Deno.stat(meta_path)).size;
  if (bytes > MAX_PICKLE_BYTES) {
    throw new Error(`${meta_path}: ${bytes} bytes is more than the ${MAX_PICKLE_BYTES} a meta.pkl may hold`);
  }
  const meta = unpickle(await Deno.readFile(meta_path), { what: meta_path });
  if (!(meta instanceof Map)) throw new Error(`${meta_path}: expected a pickled dict`);
  const stoi = field(meta, "stoi", meta_path);
  const itos = field(meta, "itos", meta_path);
  if (!(stoi instanceof Map) || !(itos instanceof Map)) {
    throw new Error(`${meta_path}: stoi and itos must be dicts`);
  }
  for (const [s, i] of stoi) {
    if (typeof s !== "string" || typeof i !== "number") {
      throw new Error(`${meta_path}: stoi must map str -> int, found ${describe(s)} -> ${describe(i)}`);
    }
  }
  for (const [i, s] of itos) {
    if (typeof s !== "string" || typeof i !== "number") {
      throw new Error(`${meta_path}: itos must map int -> str, found ${describe(i)} -> ${describe(s)}`);
    }
    if (vocab_size !== undefined && (!Number.isInteger(i) || i < 0 || i >= vocab_size)) {
      throw new Error(`${meta_path}: token id ${i} is outside the model's vocab_size ${vocab_size}`);
    }
  }
  const spec = {
    kind: "char" as const,
    stoi: stoi as Map<string, number>,
    itos: itos as Map<number, string>,
  };
  try {
    new CharTokenizer(spec.stoi, spec.itos); // single characters, stoi and itos inverse
  } catch (e) {
    throw new Error(`${meta_path}: ${(e as Error).message}`, { cause: e });
  }
  return spec;
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

/** nanoGPT's state-dict names: `_orig_mod.` (torch.compile) and `transformer.` prefixes. */
function nanogpt_format(config: GPTConfig): StateDictFormat {
  return {
    canonical: nanogpt_canonical_name,
    model: `a GPT with n_layer=${config.n_layer}, bias=${config.bias}`,
  };
}

/**
 * A checkpoint's `iter_num` and `best_val_loss`, where they are numbers or one-element float
 * tensors (train.py saves the loss as a 0-d tensor).
 */
async function checkpoint_info(root: Map<unknown, unknown>): Promise<Record<string, number>> {
  const info: Record<string, number> = {};
  for (const k of ["iter_num", "best_val_loss"]) {
    const v = root.get(k);
    if (typeof v === "number") info[k] = v;
    else if (typeof v === "bigint") info[k] = Number(v);
    else if (v instanceof TorchTensor && v.numel === 1 && (v.dtype === "f32" || v.dtype === "f64")) {
      const b = await v.read();
      const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
      info[k] = v.dtype === "f32" ? dv.getFloat32(0, true) : dv.getFloat64(0, true);
    }
  }
  return info;
}

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
    const views = new Map<StoredTensor, TorchTensor>();
    for (const [key, t] of model) {
      if (typeof key !== "string") throw new Error(`${path}: model has a non-string key ${key}`);
      if (!(t instanceof TorchTensor)) throw new Error(`${path}: model entry "${key}" is not a tensor`);
      views.set({
        key,
        file: path,
        dtype: t.dtype,
        shape: t.shape,
        read: () => t.read(),
        same_view: (other) => views.get(other)?.same_view(t) ?? false,
      }, t);
    }
    const tensors = await canonical_tensors(views.keys(), config, nanogpt_format(config), path);
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
      info: await checkpoint_info(root),
      [Symbol.dispose]: () => ckpt.close(),
    };
  } catch (e) {
    ckpt.close();
    throw e;
  }
}

/** `__metadata__.format` of a nanoGPT model converted to safetensors (examples/convert.ts). */
export const NANOGPT_SAFETENSORS_FORMAT = "nanogpt";

/**
 * Opens a nanoGPT model converted to safetensors by examples/convert.ts: the state dict's tensors
 * under nanoGPT's names, and in `__metadata__` the `format` ("nanogpt"), `model_args` (JSON), and,
 * when the model has one, `vocab` (JSON: the character of each token id, nanoGPT's `itos`);
 * without a vocab the tokenizer is GPT-2 BPE, as nanoGPT's sample.py does.
 */
export async function open_nanogpt_safetensors(
  path: string,
  opts: { origin?: string } = {},
): Promise<ModelSource> {
  const file = await SafetensorsFile.open(path);
  try {
    const meta = file.metadata ?? {};
    if (meta.format !== NANOGPT_SAFETENSORS_FORMAT) {
      throw new Error(
        `${path}: not a converted nanoGPT model (its __metadata__.format is ${
          JSON.stringify(meta.format)
        }, ` +
          `expected "${NANOGPT_SAFETENSORS_FORMAT}"), and no config.json beside it for a Hugging Face model`,
      );
    }
    const json = (k: string) => {
      try {
        return JSON.parse(meta[k]);
      } catch (e) {
        throw new Error(`${path}: __metadata__.${k} is not valid JSON: ${(e as Error).message}`, {
          cause: e,
        });
      }
    };
    if (typeof meta.model_args !== "string") throw new Error(`${path}: __metadata__ has no model_args`);
    const args = json("model_args");
    if (args === null || typeof args !== "object" || Array.isArray(args)) {
      throw new Error(`${path}: __metadata__.model_args is not a JSON object`);
    }
    const config = nanogpt_config(new Map(Object.entries(args)), path);
    const stored: StoredTensor[] = [...file.entries.values()].map((e) => ({
      key: e.name,
      file: path,
      dtype: ({ F32: "f32", F16: "f16", BF16: "bf16" } as Record<string, string>)[e.dtype] ?? e.dtype,
      shape: e.shape,
      read: () => file.read(e.name),
    }));
    const tensors = await canonical_tensors(stored, config, nanogpt_format(config), path);
    let tokenizer: TokenizerSpec = { kind: "gpt2" };
    if (meta.vocab !== undefined) {
      const itos = json("vocab");
      if (
        !Array.isArray(itos) || itos.length > config.vocab_size || !itos.every((c) => typeof c === "string")
      ) {
        throw new Error(
          `${path}: __metadata__.vocab must be a JSON array of at most vocab_size (${config.vocab_size}) strings`,
        );
      }
      tokenizer = {
        kind: "char",
        stoi: new Map(itos.map((c, i) => [c as string, i])),
        itos: new Map(itos.map((c, i) => [i, c as string])),
      };
    }
    const info: Record<string, number> = {};
    for (const k of ["iter_num", "best_val_loss"]) {
      if (meta[k] !== undefined && Number.isFinite(Number(meta[k]))) info[k] = Number(meta[k]);
    }
    return {
      origin: opts.origin ?? path,
      format: "nanogpt",
      config,
      tensors,
      tokenizer,
      info,
      [Symbol.dispose]: () => file.close(),
    };
  } catch (e) {
    file.close();
    throw e;
  }
}
