/**
 * The engine's two recorded steps over the device state: a decode step (one token for each slot
 * up to a batch bucket: forward, sample, logprobs when asked, advance the lengths), run k times
 * per launch as a device-side loop; and a prefill step (packed prompt chunks: forward, the prompt's
 * logprobs when asked, sample each final chunk's next token, scatter it into its decode slot).
 * Each is captured once per key (a CUDA graph) and replayed; the keys come from bounded sets of
 * shapes (src/engine/buckets.ts), so the graph dictionary stays bounded however requests arrive.
 * @module
 */
import type { Backend, Buf, LoopLog } from "../backend/backend.ts";
import { sub_buf } from "../backend/buf.ts";
import type { GPT } from "../model/gpt.ts";
import { type DeviceState, LOGPROB_WORDS } from "./device_state.ts";
import { MAX_LOGPROBS } from "./request.ts";

/** The shape of a decode launch. */
export interface DecodeShape {
  /** Slots computed (a bucket above the highest active slot). */
  B: number;
  /** A bound on any slot's length + 1 during the launch (a bucket: it picks the attention split). */
  max_len: number;
  /** Steps in the launch. */
  k: number;
  /** Whether the steps compute logprobs. */
  logprobs: boolean;
}

/** The shape of a prefill launch. */
export interface PrefillShape {
  /** Sequences (a bucket) and token rows (a bucket). */
  P: number;
  N: number;
  /** A bound on any sequence's rows. */
  max_seq_rows: number;
  /**
   * Every row's logprob of its next token (p.targets) and, with MAX_LOGPROBS, its most likely
   * tokens: -1 none, 0 the target's only (scoring), or MAX_LOGPROBS.
   */
  prompt_logprobs: -1 | 0 | typeof MAX_LOGPROBS;
}

/** Records and launches the engine's steps. */
export class Steps {
  #m: GPT;
  #be: Backend;
  #st: DeviceState;

  constructor(model: GPT, state: DeviceState) {
    this.#m = model;
    this.#be = model.backend;
    this.#st = state;
  }

  /** One decode step over slots 0..B-1 (inactive slots have n_new 0). */
  #decode_step(s: DecodeShape): void {
    const st = this.#st, sl = st.slot, be = this.#be, m = this.#m, B = s.B;
    const v4 = (b: Buf) => sub_buf(b, 0, B * 4);
    const lengths = v4(sl.lengths), n_new = v4(sl.n_new), next = v4(st.next_token);
    m.forward(st.ws, {
      rows: B,
      tokens: next,
      positions: lengths,
      attend: (l, out, qkv) =>
        be.attention({
          out,
          qkv,
          cache: st.kv[l],
          layout: st.layout,
          block_table: sl.block_table,
          lengths,
          B,
          n_new,
          max_len: s.max_len,
        }),
      logit_rows: null,
      decode: st.kv_table
        ? {
          kv_table: st.kv_table,
          int8_kv: st.opts.kv_dtype === "int8",
          layout: st.layout,
          block_table: sl.block_table,
          n_new,
          max_len: s.max_len,
        }
        : undefined,
    });
    this.#sample(next, lengths, n_new, sl, B);
    if (s.logprobs) this.#logprobs(st.lp, next, B);
    be.advance({ lengths, n_new, B });
  }

  #sample(
    out: Buf,
    lengths: Buf,
    n_new: Buf,
    p: { temperature: Buf; top_k: Buf; top_p: Buf; seed: Buf },
    B: number,
  ) {
    const m = this.#m;
    this.#be.sample({
      tokens_out: out,
      logits: this.#st.ws.logits,
      lengths,
      n_new,
      temperature: p.temperature,
      top_k: p.top_k,
      top_p: p.top_p,
      seed: p.seed,
      B,
      V: m.config.vocab_size,
      ld: m.vocab_padded,
    });
  }

  #logprobs(out: Buf, targets: Buf, rows: number, top_n = MAX_LOGPROBS): void {
    const m = this.#m;
    this.#be.logprobs({
      out,
      logits: this.#st.ws.logits,
      targets,
      rows,
      V: m.config.vocab_size,
      ld: m.vocab_padded,
      top_n,
    });
  }

  /**
   * Launches k decode steps; with k > 1, step i's tokens (and logprobs) are logged into row
   * log_steps - k + i of the logs (the last row is the step's own output).
   */
  decode(s: DecodeShape): void {
    const key = `decode:${s.B}:${s.max_len}:${s.logprobs ? "lp" : "-"}`;
    if (s.k === 1) {
      this.#be.run_step(key, () => this.#decode_step(s));
      return;
    }
    const st = this.#st, S = st.opts.slots;
    const log: LoopLog = {
      first_row: st.opts.log_steps - s.k,
      copies: [{ src: st.next_token, dst: st.token_log, words: s.B, stride: S }],
    };
    if (s.logprobs) {
      log.copies.push({ src: st.lp, dst: st.lp_log, words: s.B * LOGPROB_WORDS, stride: S * LOGPROB_WORDS });
    }
    this.#be.run_loop(`${key}:x${s.k}`, s.k, () => this.#decode_step(s), log);
  }

  /** Launches one prefill step over the inputs written into the prefill arrays. */
  prefill(s: PrefillShape): void {
    const key = `prefill:${s.P}:${s.N}:${s.max_seq_rows}:lp${s.prompt_logprobs}`;
    this.#be.run_step(key, () => this.#prefill_step(s));
  }

  #prefill_step(s: PrefillShape): void {
    const st = this.#st, p = st.pre, be = this.#be, m = this.#m, ws = st.ws;
    const v4 = (b: Buf, n: number) => sub_buf(b, 0, n * 4);
    const lengths = v4(p.lengths, s.P);
    m.hidden(ws, {
      rows: s.N,
      tokens: v4(p.tokens, s.N),
      positions: v4(p.positions, s.N),
      attend: (l, out, qkv) =>
        be.attention({
          out,
          qkv,
          cache: st.kv[l],
          layout: st.layout,
          block_table: p.block_table,
          lengths,
          B: s.P,
          seq_start: v4(p.seq_start, s.P + 1),
          row_seq: v4(p.row_seq, s.N),
          positions: v4(p.positions, s.N),
          rows: s.N,
          max_seq_rows: s.max_seq_rows,
        }),
      logit_rows: null,
    });
    if (s.prompt_logprobs >= 0) this.#prompt_logprobs(s.N, s.prompt_logprobs);
    const C = m.config.n_embd;
    be.gather_rows({ out: ws.last, x: ws.x, idx: v4(p.last_row, s.P), n: s.P, C });
    m.logits(ws.logits, ws.last, s.P);
    const next = v4(st.pre_next, s.P);
    this.#sample(next, lengths, v4(p.n_new, s.P), p, s.P);
    this.#logprobs(st.pre_lp, next, s.P);
    be.scatter({ dst: st.next_token, src: next, idx: v4(p.scatter, s.P), n: s.P });
  }

  /**
   * Every row's logprobs (of the next prompt token, p.targets; rows of 1 + 2 top_n floats) in
   * chunks of the workspace's logit rows: a fused LM head and log-softmax whose logits never exist
   * for all rows at once.
   */
  #prompt_logprobs(N: number, top_n: number): void {
    const st = this.#st, ws = st.ws, m = this.#m;
    const C = m.config.n_embd, es = ws.x.bytes / (ws.rows * C), R = ws.logit_rows, W = 1 + 2 * top_n;
    for (let r0 = 0; r0 < N; r0 += R) {
      const n = Math.min(R, N - r0);
      m.logits(ws.logits, sub_buf(ws.x, r0 * C * es, n * C * es), n);
      this.#logprobs(
        sub_buf(st.prompt_lp, r0 * W * 4, n * W * 4),
        sub_buf(st.pre.targets, r0 * 4, n * 4),
        n,
        top_n,
      );
    }
  }
}
