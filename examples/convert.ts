/**
 * Converts a nanoGPT checkpoint (`ckpt.pt` as train.py writes it, optimizer state and all) into one
 * compact, self-contained safetensors file that ngpt loads like the checkpoint itself:
 *
 *   deno run -A examples/convert.ts path/to/ckpt.pt out.safetensors [--dtype f32|f16|bf16]
 *
 * The file holds the model's tensors under nanoGPT's state-dict names (the tied lm_head once, as
 * wte) and, in `__metadata__`, `format: "nanogpt"`, `model_args`, the character vocabulary when the
 * checkpoint has a meta.pkl (`vocab`: the character of each id), `iter_num` and `best_val_loss`.
 * The optimizer state is left out. With the default `--dtype f32` every weight is copied bit for bit.
 * models/shakespeare-char/model.safetensors, ngpt's embedded default model, is made this way.
 * @module
 */
import { parseArgs } from "node:util";
import { type DType, dtype_bytes } from "../src/backend/backend.ts";
import { open_model } from "../src/loaders/open_model.ts";
import { NANOGPT_SAFETENSORS_FORMAT } from "../src/loaders/nanogpt.ts";
import { type TensorToWrite, write_safetensors } from "../src/loaders/safetensors.ts";
import type { ModelSource } from "../src/model/source.ts";
import { convert_dtype } from "../src/loaders/convert_dtype.ts";

/** nanoGPT's state-dict key of a canonical tensor name. */
export function nanogpt_key(name: string): string {
  if (name === "lm_head") return "lm_head.weight";
  if (name === "wte" || name === "wpe") return `transformer.${name}.weight`;
  return `transformer.${name}`;
}

/** The `__metadata__` of a converted nanoGPT model. */
export function nanogpt_metadata(src: ModelSource): Record<string, string> {
  const c = src.config;
  const meta: Record<string, string> = {
    format: NANOGPT_SAFETENSORS_FORMAT,
    model_args: JSON.stringify({
      n_layer: c.n_layer,
      n_head: c.n_head,
      n_embd: c.n_embd,
      block_size: c.block_size,
      vocab_size: c.vocab_size,
      bias: c.bias,
    }),
  };
  if (src.tokenizer.kind === "char") {
    const itos = src.tokenizer.itos;
    const vocab = Array.from({ length: itos.size }, (_, i) => {
      const ch = itos.get(i);
      if (ch === undefined) {
        throw new Error(`${src.origin}: the vocabulary has no token ${i} (ids must be 0..n-1)`);
      }
      return ch;
    });
    meta.vocab = JSON.stringify(vocab);
  }
  for (const [k, v] of Object.entries(src.info ?? {})) meta[k] = String(v);
  return meta;
}

/** Writes `src` (a nanoGPT model) to `out` as a converted safetensors file, in `dtype`. */
export async function convert_nanogpt(src: ModelSource, out: string, dtype: DType = "f32"): Promise<void> {
  if (src.format !== "nanogpt") {
    throw new Error(`${src.origin}: only nanoGPT checkpoints convert (this is a ${src.format} model)`);
  }
  const tensors: TensorToWrite[] = [...src.tensors.values()].map((t) => ({
    name: nanogpt_key(t.name),
    dtype,
    shape: t.shape,
    read: async () => {
      const bytes = await t.read();
      const n = bytes.length / dtype_bytes(t.dtype);
      return t.dtype === dtype ? bytes : convert_dtype(bytes, t.dtype, dtype, n);
    },
  }));
  await write_safetensors(out, tensors, nanogpt_metadata(src));
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { dtype: { type: "string", default: "f32" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help || positionals.length !== 2) {
    console.error("usage: deno run -A examples/convert.ts CKPT_PT OUT_SAFETENSORS [--dtype f32|f16|bf16]");
    Deno.exit(values.help ? 0 : 2);
  }
  const dtype = values.dtype as DType;
  if (!["f32", "f16", "bf16"].includes(dtype)) {
    console.error(`error: --dtype must be f32, f16 or bf16, got "${values.dtype}"`);
    Deno.exit(2);
  }
  try {
    using src = await open_model(positionals[0]);
    await convert_nanogpt(src, positionals[1], dtype);
    const bytes = (await Deno.stat(positionals[1])).size;
    console.error(
      `wrote ${positionals[1]} (${(bytes / 1e6).toFixed(2)} MB, ${src.tensors.size} tensors, ${dtype})`,
    );
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
