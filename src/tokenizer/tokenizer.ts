/**
 * Text <-> token ids for the models this engine runs: GPT-2 BPE (the hub models, and nanoGPT checkpoints
 * without a `meta.pkl`) and nanoGPT's character vocabularies.
 * @module
 */
import type { TokenizerSpec } from "../model/source.ts";
import { CharTokenizer } from "./char.ts";

/** Maps text to token ids and back. */
export interface Tokenizer {
  /** Number of token ids (ids are 0..vocab_size-1). */
  readonly vocab_size: number;
  /** The end-of-text token (GPT-2: 50256), or null when the vocabulary has none. */
  readonly eot_id: number | null;
  /** Token ids of `text`. Throws naming the offending character when the text cannot be encoded. */
  encode(text: string): number[];
  /** Text of `ids`; bytes that are not valid UTF-8 become U+FFFD. */
  decode(ids: number[]): string;
  /**
   * Raw UTF-8 bytes of `ids`. A BPE token can hold part of a multi-byte character, so a streamer
   * feeds these to a `TextDecoder` with `{ stream: true }` instead of decoding token by token.
   */
  decode_bytes(ids: number[]): Uint8Array;
}

/**
 * The tokenizer a loader's TokenizerSpec describes. GPT-2 BPE's tables (and the npm package that
 * holds them) load only when a model asks for them, so a character-level model runs offline.
 */
export async function create_tokenizer(spec: TokenizerSpec): Promise<Tokenizer> {
  switch (spec.kind) {
    case "gpt2": {
      // A computed specifier: Deno's module graph then never fetches js-tiktoken up front.
      const gpt2_module = "./gpt2.ts";
      const { gpt2_tokenizer } = await import(gpt2_module) as typeof import("./gpt2.ts");
      return gpt2_tokenizer();
    }
    case "char":
      return new CharTokenizer(spec.stoi, spec.itos);
    default:
      throw new Error(`unknown tokenizer kind "${(spec as { kind: unknown }).kind}"`);
  }
}
