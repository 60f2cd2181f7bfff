/**
 * nanoGPT's character-level tokenizer: one token per character, from `meta.pkl`'s stoi / itos.
 * @module
 */
import type { Tokenizer } from "./tokenizer.ts";
import { describe } from "../util/check.ts";

/** Character vocabulary tokenizer (nanoGPT `data/<dataset>/meta.pkl`). */
export class CharTokenizer implements Tokenizer {
  readonly vocab_size: number;
  readonly eot_id: null = null;
  readonly #stoi: Map<string, number>;
  readonly #itos: Map<number, string>;
  readonly #encoder = new TextEncoder();

  /** `stoi` and `itos` must be inverse maps of single characters (checked). */
  constructor(stoi: Map<string, number>, itos: Map<number, string>) {
    for (const [s, i] of stoi) {
      // encode() reads the text one code point at a time: a longer key could never match.
      if (typeof s !== "string" || [...s].length !== 1) {
        throw new Error(`char vocabulary: stoi key ${describe(s)} is not a single character`);
      }
      if (!Number.isInteger(i) || i < 0) {
        throw new Error(`char vocabulary: stoi[${JSON.stringify(s)}] = ${i}`);
      }
      if (itos.get(i) !== s) {
        throw new Error(
          `char vocabulary: stoi[${JSON.stringify(s)}] = ${i} but itos[${i}] = ${
            JSON.stringify(itos.get(i))
          }`,
        );
      }
    }
    let max = -1;
    for (const [i, s] of itos) {
      if (!Number.isInteger(i) || i < 0) throw new Error(`char vocabulary: itos key ${i} is not an id`);
      if (typeof s !== "string") throw new Error(`char vocabulary: itos[${i}] is not a string`);
      max = Math.max(max, i);
    }
    this.#stoi = stoi;
    this.#itos = itos;
    this.vocab_size = max + 1;
  }

  encode(text: string): number[] {
    const out: number[] = [];
    let index = 0;
    for (const ch of text) {
      const id = this.#stoi.get(ch);
      if (id === undefined) {
        throw new Error(
          `character ${JSON.stringify(ch)} at index ${index} of the text is not in the vocabulary`,
        );
      }
      out.push(id);
      index++;
    }
    return out;
  }

  decode(ids: number[]): string {
    let s = "";
    for (let k = 0; k < ids.length; k++) {
      const c = this.#itos.get(ids[k]);
      if (c === undefined) throw new Error(`token id ${ids[k]} at index ${k} is not in the vocabulary`);
      s += c;
    }
    return s;
  }

  decode_bytes(ids: number[]): Uint8Array {
    return this.#encoder.encode(this.decode(ids));
  }
}
