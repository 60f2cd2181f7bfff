/**
 * Hugging Face GPT-2 directories (`config.json` + `model.safetensors`, as `save_pretrained` writes them
 * or the hub serves them) as a ModelSource with canonical tensor names.
 * @module
 */
import { join } from "node:path";
import { type GPTConfig, validate_config } from "../model/config.ts";
import { SafetensorsFile } from "./safetensors.ts";
import type { ModelSource } from "../model/source.ts";
import { canonical_tensors } from "./state_dict.ts";
import { describe } from "../util/check.ts";

const ACTIVATIONS: Record<string, GPTConfig["activation"]> = {
  gelu_new: "gelu_tanh",
  gelu_pytorch_tanh: "gelu_tanh",
  gelu: "gelu_erf",
};

/**
 * GPTConfig from a parsed GPT-2 `config.json`. `what` names the file in errors. Missing
 * `layer_norm_epsilon` / `activation_function` take transformers' defaults (1e-5, gelu_new).
 */
export function hf_config(json: unknown, what: string): GPTConfig {
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new Error(`${what}: not a JSON object`);
  }
  const j = json as Record<string, unknown>;
  if (j.model_type !== undefined && j.model_type !== "gpt2") {
    throw new Error(`${what}: model_type is ${describe(j.model_type)}: only "gpt2" is supported`);
  }
  const int = (k: string, fallback?: string) => {
    const key = j[k] === undefined && fallback !== undefined && j[fallback] !== undefined ? fallback : k;
    const v = j[key];
    if (v === undefined) throw new Error(`${what}: missing field "${k}"`);
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
      throw new Error(`${what}: field "${key}" must be a positive integer, got ${describe(v)}`);
    }
    return v;
  };
  const act_name = j.activation_function ?? "gelu_new";
  const activation = typeof act_name === "string" ? ACTIVATIONS[act_name] : undefined;
  if (!activation) {
    throw new Error(
      `${what}: activation_function ${describe(act_name)} is unsupported: expected one of ` +
        Object.keys(ACTIVATIONS).join(", "),
    );
  }
  const eps = j.layer_norm_epsilon ?? 1e-5;
  if (typeof eps !== "number" || !(eps > 0)) {
    throw new Error(
      `${what}: field "layer_norm_epsilon" must be a positive number, got ${describe(eps)}`,
    );
  }
  const config: GPTConfig = {
    n_layer: int("n_layer"),
    n_head: int("n_head"),
    n_embd: int("n_embd"),
    block_size: int("n_positions", "n_ctx"),
    vocab_size: int("vocab_size"),
    bias: true,
    activation,
    layer_norm_eps: eps,
  };
  if (j.n_inner != null && j.n_inner !== 4 * config.n_embd) {
    throw new Error(
      `${what}: field "n_inner" is ${describe(j.n_inner)}: only 4 * n_embd (${
        4 * config.n_embd
      }) is supported`,
    );
  }
  if (j.scale_attn_by_inverse_layer_idx === true) {
    throw new Error(`${what}: field "scale_attn_by_inverse_layer_idx" = true is unsupported`);
  }
  if (j.scale_attn_weights === false) {
    throw new Error(`${what}: field "scale_attn_weights" = false is unsupported`);
  }
  validate_config(config, what);
  return config;
}

/** Canonical name of an HF GPT-2 key (with or without `transformer.`). */
export function hf_canonical_name(key: string): string {
  const k = key.startsWith("transformer.") ? key.slice("transformer.".length) : key;
  if (k === "wte.weight" || k === "wpe.weight" || k === "lm_head.weight") {
    return k.slice(0, -".weight".length);
  }
  return k;
}

// Conv1D layers store their weight (in_features, out_features).
const CONV1D = /^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$/;
const DTYPES: Record<string, string> = { F32: "f32", F16: "f16", BF16: "bf16" };

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Opens the safetensors of `dir`: model.safetensors, or the shards its index names. */
async function open_weights(dir: string): Promise<SafetensorsFile[]> {
  const single = join(dir, "model.safetensors");
  if (await exists(single)) return [await SafetensorsFile.open(single)];
  const index_path = join(dir, "model.safetensors.index.json");
  if (!(await exists(index_path))) {
    throw new Error(`${dir}: no model.safetensors (or model.safetensors.index.json) in the directory`);
  }
  let index: unknown;
  try {
    index = JSON.parse(await Deno.readTextFile(index_path));
  } catch (e) {
    throw new Error(`${index_path}: invalid JSON: ${(e as Error).message}`, { cause: e });
  }
  const map = (index as { weight_map?: unknown })?.weight_map;
  if (!map || typeof map !== "object") throw new Error(`${index_path}: missing field "weight_map"`);
  const files = [...new Set(Object.values(map as Record<string, unknown>))];
  const out: SafetensorsFile[] = [];
  try {
    for (const f of files) {
      if (typeof f !== "string" || f.includes("/") || f.includes("\\")) {
        throw new Error(`${index_path}: weight_map names an invalid file ${JSON.stringify(f)}`);
      }
      out.push(await SafetensorsFile.open(join(dir, f)));
    }
  } catch (e) {
    for (const f of out) f.close();
    throw e;
  }
  return out;
}

/**
 * Opens an HF GPT-2 directory. The tensors must be exactly the model's (buffers `h.N.attn.bias` /
 * `h.N.attn.masked_bias` are ignored); missing, mis-shaped or unexpected ones are an Error naming the
 * tensor and the file. `lm_head.weight` is dropped when absent or byte-identical to wte.
 */
export async function open_hf(dir: string, opts: { origin?: string } = {}): Promise<ModelSource> {
  const config_path = join(dir, "config.json");
  let text: string;
  try {
    text = await Deno.readTextFile(config_path);
  } catch (e) {
    throw new Error(`${config_path}: cannot read: ${(e as Error).message}`, { cause: e });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${config_path}: invalid JSON: ${(e as Error).message}`, { cause: e });
  }
  const config = hf_config(json, config_path);
  const files = await open_weights(dir);
  const close_all = () => files.forEach((f) => f.close());
  try {
    const stored = files.flatMap((file) =>
      [...file.entries.values()].map((e) => ({
        key: e.name,
        file: file.path,
        dtype: DTYPES[e.dtype] ?? e.dtype,
        shape: e.shape,
        read: () => file.read(e.name),
      }))
    );
    const where = files.length === 1 ? files[0].path : dir;
    const tensors = await canonical_tensors(stored, config, {
      canonical: hf_canonical_name,
      transposed: CONV1D,
      model: `a GPT-2 with n_layer=${config.n_layer}`,
    }, where);
    return {
      origin: opts.origin ?? dir,
      format: "hf",
      config,
      tensors,
      tokenizer: { kind: "gpt2" },
      [Symbol.dispose]: close_all,
    };
  } catch (e) {
    close_all();
    throw e;
  }
}
