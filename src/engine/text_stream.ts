/**
 * Turns one sequence's tokens into text pieces as they arrive: UTF-8 reassembly across tokens
 * (a BPE token can hold part of a character) and stop strings (text that could still become a
 * stop string is held back, and the stop string itself is never emitted).
 * @module
 */
import type { Tokenizer } from "../tokenizer/tokenizer.ts";

/** Incremental detokenizer with stop strings. */
export class TextStream {
  #tok: Tokenizer;
  #decoder = new TextDecoder("utf-8", { fatal: false });
  #stops: string[];
  #held = "";
  /** All text emitted so far. */
  text = "";
  /** True once a stop string was found. */
  stopped = false;

  /** Decodes with `tokenizer`; the text ends before the first of `stops` it contains. */
  constructor(tokenizer: Tokenizer, stops: string[]) {
    this.#tok = tokenizer;
    this.#stops = stops;
  }

  /** Adds a token; returns the text that can be emitted now (possibly ""). */
  push(token: number): string {
    if (this.stopped) return "";
    const s = this.#held + this.#decoder.decode(this.#tok.decode_bytes([token]), { stream: true });
    return this.#emit(s, false);
  }

  /** Flushes what is held back at the end of generation. */
  finish(): string {
    if (this.stopped) return "";
    return this.#emit(this.#held + this.#decoder.decode(), true);
  }

  #emit(s: string, final: boolean): string {
    let cut = -1;
    for (const stop of this.#stops) {
      const i = s.indexOf(stop);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.stopped = true;
      this.#held = "";
      const out = s.slice(0, cut);
      this.text += out;
      return out;
    }
    let keep = 0;
    if (!final) {
      // Hold back the longest suffix of s that is a proper prefix of a stop string.
      for (const stop of this.#stops) {
        for (let n = Math.min(stop.length - 1, s.length); n > keep; n--) {
          if (s.endsWith(stop.slice(0, n))) {
            keep = n;
            break;
          }
        }
      }
    }
    this.#held = s.slice(s.length - keep);
    const out = s.slice(0, s.length - keep);
    this.text += out;
    return out;
  }
}
