/**
 * What every loader produces: a model's config, its tensors under canonical names (read lazily,
 * one at a time, so a large checkpoint never sits whole in host memory), and its tokenizer.
 * @module
 */
import type { DType } from "../backend/backend.ts";
import type { GPTConfig } from "./config.ts";

/** One tensor of a checkpoint, not yet read. */
export interface TensorSource {
  /** Canonical name (see model/config.ts weight_shapes). */
  readonly name: string;
  /** Element type as stored in the file. */
  readonly dtype: DType;
  /** Canonical shape: Linear weights (out_features, in_features). */
  readonly shape: number[];
  /**
   * Set when the file stores the tensor transposed relative to the canonical shape (HF Conv1D
   * stores (in, out)): the stored (rows, cols); the backend transposes while writing it.
   */
  readonly stored_transposed?: [number, number];
  /** Reads the raw little-endian bytes, contiguous, in stored order. */
  read(): Promise<Uint8Array>;
}

/** How text maps to token ids. */
export type TokenizerSpec =
  | { kind: "gpt2" }
  | { kind: "char"; stoi: Map<string, number>; itos: Map<number, string> };

/** A model ready to be loaded onto a backend. */
export interface ModelSource extends Disposable {
  /** Where it came from (a path or a hub name), for messages. */
  readonly origin: string;
  /** "nanogpt" (torch checkpoint), "hf" (config.json + safetensors) or "random". */
  readonly format: "nanogpt" | "hf" | "random";
  /** Its hyperparameters. */
  readonly config: GPTConfig;
  /** Every canonical tensor; `lm_head` only when untied. */
  readonly tensors: Map<string, TensorSource>;
  /** Its tokenizer: GPT-2's BPE, or a character table (nanoGPT's meta.pkl). */
  readonly tokenizer: TokenizerSpec;
  /**
   * What the checkpoint says about itself besides its weights: nanoGPT's `iter_num` and
   * `best_val_loss` (the validation loss train.py measured), when present.
   */
  readonly info?: Readonly<Record<string, number>>;
}
