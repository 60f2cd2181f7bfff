/**
 * From a checkpoint's state dict (nanoGPT's or Hugging Face's key names, any container) to the
 * canonical tensors the model reads: every expected tensor present with its exact shape, nothing
 * unexpected, and `lm_head` kept only when it is not a copy of `wte`. One checker for every loader.
 * @module
 */
import type { DType } from "../backend/backend.ts";
import { type GPTConfig, weight_shapes } from "../model/config.ts";
import type { TensorSource } from "../model/source.ts";

/** One tensor as a checkpoint stores it, not yet read. */
export interface StoredTensor {
  /** Its key in the file ("transformer.h.0.ln_1.weight", "_orig_mod.lm_head.weight"). */
  readonly key: string;
  /** The file that holds it, for messages. */
  readonly file: string;
  /** Element type in the file, or the file's own name for one the model cannot take ("i64"). */
  readonly dtype: DType | string;
  /** Stored shape. */
  readonly shape: readonly number[];
  /** Reads its bytes, contiguous and row-major. */
  read(): Promise<Uint8Array>;
  /** True when both are the same bytes of the file (a tied weight), without reading them. */
  same_view?(other: StoredTensor): boolean;
}

/** How a format names and lays out its tensors. */
export interface StateDictFormat {
  /** The canonical name of a key ("wte", "h.0.attn.c_attn.weight", "lm_head"). */
  canonical(key: string): string;
  /** Canonical names stored transposed, (in, out) (Hugging Face's Conv1D layers). */
  transposed?: RegExp;
  /** Describes the model in the error for an unexpected tensor ("a GPT with n_layer=4, bias=false"). */
  model: string;
}

const shape_str = (s: readonly number[]) => `[${s.join(", ")}]`;
const DTYPES: readonly string[] = ["f32", "f16", "bf16"];
/** The causal-mask buffers older nanoGPT and transformers keep in their state dicts. */
const MASK_BUFFER = /^h\.\d+\.attn\.(bias|masked_bias)$/;

function same_bytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function check_shape(t: StoredTensor, name: string, want: readonly number[], note = ""): void {
  if (t.shape.length !== want.length || t.shape.some((s, i) => s !== want[i])) {
    throw new Error(
      `${t.file}: tensor "${name}" ("${t.key}") has shape ${shape_str(t.shape)}, expected ${
        shape_str(want)
      }${note}`,
    );
  }
}

function check_dtype(t: StoredTensor): DType {
  if (!DTYPES.includes(t.dtype)) {
    throw new Error(`${t.file}: tensor "${t.key}" has dtype ${t.dtype}: expected f32, f16 or bf16`);
  }
  return t.dtype as DType;
}

/**
 * The canonical tensors of `config` from a state dict. A missing, mis-shaped, duplicated or
 * unexpected tensor, or one of a dtype the model cannot take, is an Error naming it, its file and
 * both shapes. `where` names the checkpoint in errors that concern no single tensor.
 */
export async function canonical_tensors(
  stored: Iterable<StoredTensor>,
  config: GPTConfig,
  format: StateDictFormat,
  where: string,
): Promise<Map<string, TensorSource>> {
  const expected = weight_shapes(config);
  const found = new Map<string, StoredTensor>();
  const unexpected: string[] = [];
  let lm_head: StoredTensor | null = null;
  for (const t of stored) {
    const name = format.canonical(t.key);
    if (MASK_BUFFER.test(name)) continue;
    if (name === "lm_head") {
      lm_head = t;
      continue;
    }
    if (!expected.has(name)) {
      unexpected.push(`"${t.key}" with shape ${shape_str(t.shape)} in ${t.file}`);
      continue;
    }
    const prev = found.get(name);
    if (prev) throw new Error(`${t.file}: tensors "${prev.key}" and "${t.key}" both map to "${name}"`);
    found.set(name, t);
  }
  const tensors = new Map<string, TensorSource>();
  for (const [name, shape] of expected) {
    const t = found.get(name);
    if (!t) throw new Error(`${where}: missing tensor "${name}" (expected shape ${shape_str(shape)})`);
    const transposed = format.transposed?.test(name) ?? false;
    const want = transposed ? [shape[1], shape[0]] : shape;
    check_shape(t, name, want, transposed ? " (Conv1D: in, out)" : "");
    tensors.set(name, {
      name,
      dtype: check_dtype(t),
      shape: [...shape],
      ...(transposed ? { stored_transposed: [want[0], want[1]] as [number, number] } : {}),
      read: () => t.read(),
    });
  }
  if (unexpected.length) {
    throw new Error(
      `${where}: unexpected model tensor ${unexpected.join(", ")} (not part of ${format.model})`,
    );
  }
  if (lm_head) {
    const lm: StoredTensor = lm_head, wte = found.get("wte")!;
    const shape = [config.vocab_size, config.n_embd];
    check_shape(lm, "lm_head", shape);
    const dtype = check_dtype(lm);
    const tied = lm.same_view?.(wte) ||
      (lm.dtype === wte.dtype && same_bytes(await lm.read(), await wte.read()));
    if (!tied) tensors.set("lm_head", { name: "lm_head", dtype, shape, read: () => lm.read() });
  }
  return tensors;
}
