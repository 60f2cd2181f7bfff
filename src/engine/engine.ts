/**
 * The engine: runs batches of requests through a model on its backend. It owns the device batch
 * (KV cache, lengths, sampling parameters), turns prompts into a ragged prefill step, then runs
 * one decode step per token — each a recorded step (a CUDA graph keyed by phase and shape) — and
 * reads sampled tokens back one step behind, so the host never stalls the device in steady state.
 * @module
 */
import type { Backend, Buf, PendingRead } from "../backend/backend.ts";
import type { GPT } from "../model/gpt.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import { DeviceBatch } from "./batch.ts";
import {
  check_request_keys,
  type ContextOverflow,
  resolve_sampling,
  type ResolvedSampling,
  type SamplingOptions,
  seed_words,
} from "./sampling.ts";
import { TextStream } from "./text_stream.ts";

/** One generation request: a prompt (text or token ids) and its sampling options. */
export interface GenerateRequest extends SamplingOptions {
  prompt: string | number[];
}

/** Why a sequence ended. */
export type FinishReason = "length" | "eot" | "stop";

/** The outcome of one request. */
export interface GenerateResult {
  /** Generated text (without the prompt, the end-of-text token or the stop string). */
  text: string;
  /** Generated token ids (the end-of-text token included when it ended the sequence). */
  tokens: number[];
  finish_reason: FinishReason;
  /** Prompt length in tokens (before any cropping to the context). */
  prompt_tokens: number;
}

export type { ContextOverflow };

/** A piece of text from sequence `index`; `done` is set on its last piece. */
export interface TextEvent {
  index: number;
  text: string;
  done?: FinishReason;
}

/** Engine options. */
export interface EngineOptions {
  /**
   * "slide" (default) follows nanoGPT's sample.py: keep the last block_size tokens and recompute;
   * "error" refuses prompts + max_new_tokens longer than the context.
   */
  context_overflow?: ContextOverflow;
  /** Most token slots one step processes; larger prefills are split by sequence (default 16384). */
  max_prefill_rows?: number;
  /**
   * Decode steps recorded into one launch (one CUDA graph) in steady state (default 8; 1 turns
   * this off). Tokens come back once per launch, so a sequence that ends mid-launch costs up to
   * steps_per_launch - 1 wasted steps, and streamed text arrives in pieces of that many tokens.
   */
  steps_per_launch?: number;
}

/** Timings of the last run, in milliseconds from its start. */
export interface RunStats {
  /** Time to the first token of every sequence on the host. */
  ttft_ms: number;
  /** Decode steps launched. */
  decode_steps: number;
  /** Time from the first token to the end. */
  decode_ms: number;
  total_ms: number;
  /**
   * Host time per decode step after the first token: launching, reading back and handling tokens,
   * excluding time blocked waiting for the device. Below the device's step time, the device never
   * waits for the host.
   */
  host_us_per_step: number;
  /** Of host_us_per_step: time in the launch calls (run_step / run_loop) and in read_async. */
  launch_us_per_step: number;
  /**
   * The median over steady-state steps of their launch's host time per step (what
   * host_us_per_step is without the occasional stall of the host: a page fault, another process).
   */
  host_us_median: number;
}

interface Seq {
  req: ResolvedSampling;
  prompt: number[];
  /** Prompt + generated tokens (for sliding past the context). */
  history: number[];
  generated: number[];
  /** Streaming detokenizer; null when the text is decoded once at the end. */
  text: TextStream | null;
  done: FinishReason | null;
  /** Tokens in this sequence's KV cache on the device, as the host mirrors it. */
  len: number;
  /** Whether the device treats the sequence as active (n_new = 1). */
  active: boolean;
}

/** KV cache lengths are multiples of this (a few percent of memory at most, for 100+ token runs). */
const CACHE_T_ALIGN = 8;

/** The median of values each counted `weight` times ([value, weight] pairs). */
function weighted_median(xs: [number, number][]): number {
  const s = [...xs].sort((a, b) => a[0] - b[0]);
  const half = s.reduce((t, x) => t + x[1], 0) / 2;
  let seen = 0;
  for (const [v, w] of s) {
    seen += w;
    if (seen >= half) return v;
  }
  return 0;
}

function next_pow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** Runs generation on one model. */
export class Engine implements Disposable {
  readonly model: GPT;
  readonly tokenizer: Tokenizer;
  readonly context_overflow: ContextOverflow;
  readonly max_prefill_rows: number;
  readonly steps_per_launch: number;
  /** Timings of the last run. */
  stats: RunStats = {
    ttft_ms: 0,
    decode_steps: 0,
    decode_ms: 0,
    total_ms: 0,
    host_us_per_step: 0,
    launch_us_per_step: 0,
    host_us_median: 0,
  };
  #batch: DeviceBatch | null = null;
  #busy = false;

  constructor(model: GPT, tokenizer: Tokenizer, opts: EngineOptions = {}) {
    this.model = model;
    this.tokenizer = tokenizer;
    this.context_overflow = opts.context_overflow ?? "slide";
    this.max_prefill_rows = opts.max_prefill_rows ?? 16384;
    this.steps_per_launch = opts.steps_per_launch ?? 8;
    if (
      !(Number.isInteger(this.steps_per_launch) && this.steps_per_launch >= 1 && this.steps_per_launch <= 64)
    ) {
      throw new RangeError(`steps_per_launch must be an integer in [1, 64], got ${opts.steps_per_launch}`);
    }
    if (this.context_overflow !== "slide" && this.context_overflow !== "error") {
      throw new RangeError(`context_overflow must be "slide" or "error", got ${this.context_overflow}`);
    }
  }

  get #be(): Backend {
    return this.model.backend;
  }

  /** Bytes of the KV cache currently allocated. */
  get kv_bytes(): number {
    return this.#batch?.kv_bytes ?? 0;
  }

  /**
   * Allocates the device batch for `batch` sequences of up to `max_T` tokens now, so that later
   * runs within it allocate nothing and reuse their recorded steps.
   */
  reserve(batch: number, max_T: number): void {
    this.#ensure_batch(batch, this.#cache_T(Math.min(max_T, this.model.config.block_size)));
  }

  /** Tokenizes a prompt (or checks given ids); an empty prompt starts from end-of-text when there is one. */
  encode_prompt(prompt: string | number[]): number[] {
    const V = this.model.config.vocab_size;
    const ids = typeof prompt === "string" ? this.tokenizer.encode(prompt) : [...prompt];
    for (let i = 0; i < ids.length; i++) {
      if (!Number.isInteger(ids[i]) || ids[i] < 0 || ids[i] >= V) {
        throw new RangeError(`prompt token ${i} is ${ids[i]}: token ids must be integers in [0, ${V})`);
      }
    }
    if (ids.length === 0) {
      if (this.tokenizer.eot_id === null) {
        throw new Error("the prompt is empty and the tokenizer has no end-of-text token");
      }
      ids.push(this.tokenizer.eot_id);
    }
    return ids;
  }

  /** Makes sure the device batch holds `B` sequences of `max_T` tokens (reallocating if smaller). */
  #ensure_batch(B: number, max_T: number): DeviceBatch {
    const cur = this.#batch;
    if (cur && cur.batch >= B && cur.max_T >= max_T) return cur;
    const want_B = Math.max(B, cur?.batch ?? 0);
    const want_T = Math.min(this.model.config.block_size, Math.max(max_T, cur?.max_T ?? 0));
    if (cur) {
      this.#be.synchronize();
      this.#be.reset_steps?.();
      cur[Symbol.dispose]();
      this.#batch = null;
    }
    this.#batch = new DeviceBatch(this.model, want_B, want_T, this.max_prefill_rows, this.steps_per_launch);
    return this.#batch;
  }

  /** Writes int32 values for sequences 0..n-1 into a per-sequence buffer. */
  #write_i32(buf: Buf, values: number[]): void {
    this.#be.write(buf, Int32Array.from(values));
  }

  /**
   * Runs one ragged step for sequences 0..B-1: `inputs[b]` are its new tokens (empty: inactive),
   * `lengths[b]` what its cache already holds. Split into groups of sequences so that each group's
   * B*T token slots fit the workspace. With T == 1 and inputs taken from next_token, use #decode.
   */
  #ragged_step(batch: DeviceBatch, inputs: number[][], lengths: number[], sample = true): void {
    const B = inputs.length, be = this.#be;
    const longest = Math.max(1, ...inputs.map((x) => x.length));
    const T = Math.min(batch.max_T, Math.max(16, next_pow2(longest)));
    if (longest > batch.max_T) throw new Error(`internal: step of ${longest} tokens > cache ${batch.max_T}`);
    const toks = new Int32Array(B * T);
    inputs.forEach((x, b) => toks.set(x, b * T));
    be.write(batch.tokens, toks);
    this.#write_i32(batch.state.lengths, lengths);
    this.#write_i32(batch.state.n_new, inputs.map((x) => x.length));
    const group = Math.max(1, Math.min(B, Math.floor(batch.ws.rows / T)));
    for (let b0 = 0; b0 < B; b0 += group) {
      const nb = Math.min(group, B - b0);
      const g = batch.group(b0, nb, T);
      be.run_step(
        `prefill:${b0}:${nb}:${T}:${sample ? "s" : "n"}`,
        () => this.model.forward(batch.ws, g.state, g.cache, g.tokens, nb, T, batch.max_T, sample),
      );
    }
  }

  /**
   * `k` decode steps for sequences 0..B-1 in one launch, one slot each, each reading and sampling
   * into next_token; with k > 1 step i's tokens are also logged into row log_steps - k + i of
   * the token log (the last row is next_token itself).
   */
  #decode(batch: DeviceBatch, B: number, k = 1, sample = true): void {
    const s = batch.state;
    const step = () => this.model.forward(batch.ws, s, batch.cache, s.next_token, B, 1, batch.max_T, sample);
    const key = `decode:${B}:${sample ? "s" : "n"}`;
    if (k === 1) {
      this.#be.run_step(key, step);
      return;
    }
    const log = {
      src: s.next_token,
      dst: batch.token_log,
      first_row: batch.log_steps - k,
      stride: batch.batch,
      B,
    };
    this.#be.run_loop(`${key}:x${k}`, k, step, log);
  }

  /** Reads back the tokens of the last `k` steps: row j of sequence b at int32 j * batch.batch + b. */
  #read_tokens(batch: DeviceBatch, B: number, k = 1): PendingRead {
    const be = this.#be;
    const offset = (batch.log_steps - k) * batch.batch * 4, bytes = ((k - 1) * batch.batch + B) * 4;
    if (be.read_async) return be.read_async(batch.token_log, bytes, offset);
    const out = new Uint8Array(bytes);
    be.read(batch.token_log, out, offset);
    return { done: () => true, wait: () => out };
  }

  /**
   * Generates for a batch of requests, yielding text pieces as tokens come back. One request per
   * sequence; each has its own sampling parameters, seed and stop conditions.
   */
  run(requests: GenerateRequest[]): AsyncGenerator<TextEvent> {
    return this.#exclusive(requests, true);
  }

  /** #run, refusing to start while another run of this engine is in progress. */
  async *#exclusive(requests: GenerateRequest[], stream_text: boolean): AsyncGenerator<TextEvent> {
    if (this.#busy) throw new Error("this engine is already generating: one run at a time");
    this.#busy = true;
    try {
      yield* this.#run(requests, stream_text);
    } finally {
      this.#busy = false;
    }
  }

  /**
   * The generation loop. With `stream_text` false, sequences without stop strings skip per-token
   * detokenization (their text is decoded once at the end) and no text events are yielded for them.
   */
  async *#run(requests: GenerateRequest[], stream_text: boolean): AsyncGenerator<TextEvent> {
    const t0 = performance.now();
    const cfg = this.model.config, bs = cfg.block_size, eot = this.tokenizer.eot_id;
    const seqs: Seq[] = requests.map((r, i) => {
      let req: ResolvedSampling;
      try {
        check_request_keys(r, "request", ["prompt"]);
        req = resolve_sampling(r, { context_overflow: this.context_overflow });
      } catch (e) {
        if (e instanceof Error) e.message = `request ${i}: ${e.message}`;
        throw e;
      }
      const prompt = this.encode_prompt(r.prompt);
      if (req.context_overflow === "error" && prompt.length + req.max_new_tokens > bs) {
        throw new RangeError(
          `request ${i}: prompt (${prompt.length} tokens) + max_new_tokens (${req.max_new_tokens}) exceeds ` +
            `the model's context of ${bs} tokens (context_overflow is "error")`,
        );
      }
      return {
        req,
        prompt,
        history: [...prompt],
        generated: [],
        text: stream_text || req.stop.length > 0 ? new TextStream(this.tokenizer, req.stop) : null,
        done: req.max_new_tokens === 0 ? "length" : null,
        len: 0,
        active: false,
      };
    });
    const B = seqs.length;
    this.#last_results = [];
    const results = () =>
      seqs.map((s) => ({
        text: s.text
          ? s.text.text
          : this.#decode_all(s.done === "eot" ? s.generated.slice(0, -1) : s.generated),
        tokens: s.generated,
        finish_reason: s.done ?? "length",
        prompt_tokens: s.prompt.length,
      }));
    for (let b = 0; b < B; b++) if (seqs[b].done) yield { index: b, text: "", done: seqs[b].done! };
    if (seqs.every((s) => s.done)) {
      this.#last_results = results();
      return;
    }

    const needed = Math.max(...seqs.map((s) => Math.min(bs, s.prompt.length + s.req.max_new_tokens)));
    const batch = this.#ensure_batch(B, this.#cache_T(needed));
    const be = this.#be;
    // Per-sequence sampling parameters.
    be.write(batch.state.temperature, Float32Array.from(seqs.map((s) => s.req.temperature)));
    this.#write_i32(batch.state.top_k, seqs.map((s) => s.req.top_k));
    be.write(batch.state.top_p, Float32Array.from(seqs.map((s) => s.req.top_p)));
    be.write(batch.state.seed, Uint32Array.from(seqs.flatMap((s) => seed_words(s.req.seed))));

    // Prefill: every prompt at once, cropped to the context as nanoGPT does.
    const inputs = seqs.map((s) => s.done ? [] : s.prompt.slice(-Math.min(bs, batch.max_T)));
    this.#ragged_step(batch, inputs, seqs.map(() => 0));
    seqs.forEach((s, b) => {
      s.len = inputs[b].length;
      s.active = inputs[b].length > 0;
    });
    this.#write_i32(batch.state.n_new, seqs.map((s) => s.active ? 1 : 0));
    /** The tokens of the last launch (k steps), not yet handled. */
    let pending: { read: PendingRead; k: number } | null = { read: this.#read_tokens(batch, B), k: 1 };
    let first = true;
    let steps = 0;
    let waited_ms = 0;
    let launch_ms = 0;
    /** Host time per step of each steady-state launch (its own wait excluded), and its steps. */
    const host_per_step: [number, number][] = [];
    let t_first = t0;

    const K = this.steps_per_launch, stride = batch.batch;
    /** Whether the device runs a launch while the host handles the previous one's tokens. */
    const overlap = be.read_async !== undefined;
    /** Handles the tokens of k steps (the first call marks the first token's time). */
    const process = (bytes: Uint8Array, k: number): TextEvent[] => {
      const toks = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
      const events: TextEvent[] = [];
      for (let j = 0; j < k; j++) events.push(...process_row(toks.subarray(j * stride, j * stride + B)));
      if (first) {
        t_first = performance.now();
        first = false;
      }
      return events;
    };
    const process_row = (toks: Int32Array): TextEvent[] => {
      const events: TextEvent[] = [];
      for (let b = 0; b < B; b++) {
        const s = seqs[b];
        if (s.done) continue;
        const t = toks[b];
        s.generated.push(t);
        s.history.push(t);
        let piece = "";
        if (s.req.stop_at_eot && eot !== null && t === eot) s.done = "eot";
        else if (s.text) {
          piece = s.text.push(t);
          if (s.text.stopped) s.done = "stop";
        }
        if (!s.done && s.generated.length >= s.req.max_new_tokens) s.done = "length";
        if (s.done && s.done !== "stop" && s.text) piece += s.text.finish();
        if (piece || s.done) {
          events.push(s.done ? { index: b, text: piece, done: s.done } : { index: b, text: piece });
        }
      }
      return events;
    };
    const deactivate_finished = () => {
      if (!seqs.some((s) => s.done && s.active)) return;
      for (const s of seqs) if (s.done) s.active = false;
      this.#write_i32(batch.state.n_new, seqs.map((s) => s.active ? 1 : 0));
    };

    while (true) {
      if (seqs.every((s) => s.done)) break;
      const slide = seqs.some((s) => !s.done && s.active && s.len + 1 > batch.max_T);
      if (slide) {
        // Past the context: wait for the latest tokens, then recompute the sliding sequences
        // over their last max_T tokens (positions restart at 0) in one ragged step.
        if (pending) {
          const ev = process(pending.read.wait(), pending.k);
          pending = null;
          if (ev.length) yield* ev;
          if (seqs.every((s) => s.done)) break;
        }
        const sliding = seqs.map((s) => !s.done && s.len + 1 > batch.max_T);
        const ins = seqs.map((s, b) => {
          if (s.done) return [];
          return sliding[b] ? s.history.slice(-batch.max_T) : [s.history[s.history.length - 1]];
        });
        const lens = seqs.map((s, b) => sliding[b] ? 0 : s.len);
        this.#ragged_step(batch, ins, lens);
        seqs.forEach((s, b) => {
          s.active = ins[b].length > 0;
          s.len = lens[b] + ins[b].length;
        });
        this.#write_i32(batch.state.n_new, seqs.map((s) => s.active ? 1 : 0));
        pending = { read: this.#read_tokens(batch, B), k: 1 };
        steps++;
        continue;
      }
      // Steady state: launch the next k steps, then handle the last launch's tokens while the
      // device works. Nothing is launched once the launched steps give every sequence all the
      // tokens it may want; k = K while some sequence wants K more and every one has room for them
      // (a sequence that wants fewer drops the extra tokens).
      if (!overlap && pending) {
        // A backend that runs steps as they are enqueued (the CPU) cannot overlap: handle the
        // tokens before the next launch, or the first token would wait for a whole launch.
        const ev = process(pending.read.wait(), pending.k);
        pending = null;
        if (ev.length) yield* ev;
        deactivate_finished();
        continue;
      }
      const t_it = performance.now(), was_first = first;
      let w = 0;
      const unread: number = pending?.k ?? 0;
      const want = Math.max(
        0,
        ...seqs.map((s) => s.active ? s.req.max_new_tokens - s.generated.length - unread : 0),
      );
      let next: { read: PendingRead; k: number } | null = null;
      if (want > 0) {
        const room = seqs.every((s) => !s.active || s.len + K <= batch.max_T);
        const k = K > 1 && want >= K && room ? K : 1;
        const tl = performance.now();
        this.#decode(batch, B, k);
        for (const s of seqs) if (s.active) s.len += k;
        next = { read: this.#read_tokens(batch, B, k), k };
        if (!first) launch_ms += performance.now() - tl;
        steps += k;
      }
      if (pending) {
        const tw = performance.now();
        const bytes = pending.read.wait();
        w = performance.now() - tw;
        if (!first) waited_ms += w;
        const ev = process(bytes, pending.k);
        if (ev.length) yield* ev;
        deactivate_finished();
      }
      if (!was_first && next) host_per_step.push([(performance.now() - t_it - w) * 1000 / next.k, next.k]);
      if (!next && !pending) {
        throw new Error("internal: a sequence is unfinished but nothing is launched or pending");
      }
      pending = next;
    }
    if (first) t_first = performance.now();
    const ts = performance.now();
    be.synchronize(); // steps launched past the last sequence's end-of-text or stop string
    const t_end = performance.now();
    waited_ms += t_end - ts;
    this.stats = {
      ttft_ms: t_first - t0,
      decode_steps: steps,
      decode_ms: t_end - t_first,
      total_ms: t_end - t0,
      host_us_per_step: steps > 1 ? (t_end - t_first - waited_ms) * 1000 / (steps - 1) : 0,
      launch_us_per_step: steps > 1 ? launch_ms * 1000 / (steps - 1) : 0,
      host_us_median: weighted_median(host_per_step),
    };
    this.#last_results = results();
  }

  #last_results: GenerateResult[] = [];

  /** Generates for every request and returns the results in order. */
  async generate(requests: GenerateRequest[]): Promise<GenerateResult[]> {
    for await (const _ of this.#exclusive(requests, false)) { /* the results are collected at the end */ }
    return this.#last_results;
  }

  /** Text of a whole token sequence (the same bytes TextStream would have streamed). */
  #decode_all(ids: number[]): string {
    return new TextDecoder().decode(this.tokenizer.decode_bytes(ids));
  }

  /**
   * Logits (f32, vocab_size each) at the last position of each prompt, from one prefill step.
   * Starts from an empty cache; for tests and scoring.
   */
  prefill_logits(prompts: number[][]): Float32Array[] {
    const B = prompts.length, V = this.model.config.vocab_size;
    for (const p of prompts) this.#check_fits(p);
    const batch = this.#ensure_batch(B, this.#cache_T(Math.max(...prompts.map((p) => p.length))));
    this.#ragged_step(batch, prompts, prompts.map(() => 0), false);
    return this.#read_logits(batch, B, V);
  }

  /**
   * Logits at every position of `ids`, computed the way generation does: a prefill of the first
   * `prefill` tokens, then one decode step per following token (teacher forcing through the KV cache).
   */
  teacher_forced_logits(ids: number[], prefill = 1): Float32Array[] {
    this.#check_fits(ids);
    const V = this.model.config.vocab_size;
    const batch = this.#ensure_batch(1, this.#cache_T(ids.length));
    const out: Float32Array[] = [];
    this.#ragged_step(batch, [ids.slice(0, prefill)], [0], false);
    out.push(...this.#read_logits(batch, 1, V));
    for (let t = prefill; t < ids.length; t++) {
      this.#be.write(batch.token_log, Int32Array.of(ids[t]), (batch.log_steps - 1) * batch.batch * 4);
      this.#write_i32(batch.state.n_new, [1]);
      this.#decode(batch, 1, 1, false);
      out.push(...this.#read_logits(batch, 1, V));
    }
    return out;
  }

  #check_fits(ids: number[]): void {
    this.encode_prompt(ids);
    if (ids.length > this.model.config.block_size) {
      throw new RangeError(
        `${ids.length} tokens exceed the model's context of ${this.model.config.block_size}`,
      );
    }
  }

  /**
   * Cache length for `n` tokens: rounded up to a multiple of CACHE_T_ALIGN (so nearby lengths share
   * a batch and its recorded steps) but never past the context, and never much past what is needed.
   */
  #cache_T(n: number): number {
    return Math.min(this.model.config.block_size, Math.ceil(n / CACHE_T_ALIGN) * CACHE_T_ALIGN);
  }

  #read_logits(batch: DeviceBatch, B: number, V: number): Float32Array[] {
    const ld = this.model.vocab_padded;
    const all = new Float32Array((B - 1) * ld + V);
    this.#be.read(batch.ws.logits, all);
    return Array.from({ length: B }, (_, b) => all.slice(b * ld, b * ld + V));
  }

  /** Frees the device batch (KV cache, workspace) and forgets recorded steps. */
  [Symbol.dispose](): void {
    if (this.#batch) {
      this.#be.synchronize();
      this.#be.reset_steps?.();
      this.#batch[Symbol.dispose]();
      this.#batch = null;
    }
  }
}
