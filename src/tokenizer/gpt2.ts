/**
 * GPT-2 byte-level BPE (50257 tokens, `<|endoftext|>` = 50256) via js-tiktoken's gpt2 ranks.
 * @module
 */
// Inline, exactly versioned npm: specifiers on purpose: mod.ts must work when imported from a URL,
// where this repo's deno.json (an import map) does not apply.
// deno-lint-ignore no-import-prefix
import { Tiktoken } from "npm:js-tiktoken@1.0.21/lite";
// deno-lint-ignore no-import-prefix
import gpt2_ranks from "npm:js-tiktoken@1.0.21/ranks/gpt2";
import type { Tokenizer } from "./tokenizer.ts";

/** GPT-2's end-of-text token id. */
export const GPT2_EOT_ID = 50256;
/** Size of GPT-2's vocabulary. */
export const GPT2_VOCAB_SIZE = 50257;
const EOT_TEXT = "<|endoftext|>";

/**
 * Every token's bytes, by id, decoded from the ranks file: each line is `<prefix> <first id> <base64
 * of token first id> <base64 of the next> ...`.
 */
function token_bytes_table(
  ranks: { bpe_ranks: string; special_tokens: Record<string, number> },
): Uint8Array[] {
  const table: Uint8Array[] = [];
  for (const line of ranks.bpe_ranks.split("\n")) {
    if (!line) continue;
    const parts = line.split(" ");
    const first = Number.parseInt(parts[1], 10);
    for (let i = 2; i < parts.length; i++) {
      table[first + i - 2] = Uint8Array.from(atob(parts[i]), (c) => c.charCodeAt(0));
    }
  }
  const enc = new TextEncoder();
  for (const [text, id] of Object.entries(ranks.special_tokens)) table[id] = enc.encode(text);
  return table;
}

class Gpt2Tokenizer implements Tokenizer {
  readonly vocab_size = GPT2_VOCAB_SIZE;
  readonly eot_id = GPT2_EOT_ID;
  #bpe: Tiktoken | null = null;
  readonly #bytes = token_bytes_table(gpt2_ranks);
  // ignoreBOM: a leading U+FEFF is text the model wrote, not a byte order mark to drop.
  readonly #decoder = new TextDecoder("utf-8", { ignoreBOM: true });

  constructor() {
    for (let i = 0; i < GPT2_VOCAB_SIZE; i++) {
      if (!this.#bytes[i]) throw new Error(`GPT-2 ranks: token ${i} is missing`);
    }
  }

  encode(text: string): number[] {
    this.#bpe ??= new Tiktoken(gpt2_ranks);
    return this.#bpe.encode(text, [EOT_TEXT]);
  }

  decode(ids: number[]): string {
    return this.#decoder.decode(this.decode_bytes(ids));
  }

  decode_bytes(ids: number[]): Uint8Array {
    let n = 0;
    for (let k = 0; k < ids.length; k++) {
      const b = this.#bytes[ids[k]];
      if (!Number.isInteger(ids[k]) || b === undefined) {
        throw new Error(`token id ${ids[k]} at index ${k} is not a GPT-2 token (0..${GPT2_VOCAB_SIZE - 1})`);
      }
      n += b.length;
    }
    const out = new Uint8Array(n);
    let o = 0;
    for (const id of ids) {
      out.set(this.#bytes[id], o);
      o += this.#bytes[id].length;
    }
    return out;
  }
}

let shared: Gpt2Tokenizer | null = null;

/** The GPT-2 tokenizer (built once, then shared: its tables take a few hundred ms to build). */
export function gpt2_tokenizer(): Tokenizer {
  shared ??= new Gpt2Tokenizer();
  return shared;
}
