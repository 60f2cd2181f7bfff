/**
 * The engine: a continuous-batching scheduler over one model. Requests arrive at any time
 * (`submit`) and join the running batch at the next launch; finished or cancelled ones leave at
 * once and free their KV blocks. Each iteration of the loop reads as its steps:
 *
 *   admit     waiting requests take a decode slot and KV blocks (cached prompt prefixes reused)
 *   schedule  the prompt chunks to prefill (a token budget) and the decoding slots, k steps each
 *   launch    the prefill step, then the decode loop; their outputs are copied back asynchronously
 *   collect   the previous launch's tokens become events (one launch behind, so the host never
 *             stalls the device); a synchronous backend collects its own launch instead
 *   retire    finished sequences free their slot and blocks
 *
 * `generate`, `run` and the Model façade all go through `submit`; there is no second loop.
 * @module
 */
import type { Buf, PendingRead } from "../backend/backend.ts";
import type { GPT } from "../model/gpt.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import { check_choice, check_int, check_keys } from "../util/check.ts";
import { batch_bucket, length_bucket, rows_bucket, seqs_bucket } from "./buckets.ts";
import { DeviceState, kv_block_bytes, type KvDtype, LOGPROB_WORDS } from "./device_state.ts";
import { BlockPool } from "./kv_cache.ts";
import { EngineMetrics } from "./metrics.ts";
import {
  type FinishReason,
  type GenerateRequest,
  type GenerateResult,
  MAX_LOGPROBS,
  REQUEST_KEYS,
  type RequestEvent,
  type RequestHandle,
  resolve_reporting,
  Sequence,
  type TokenLogprob,
} from "./request.ts";
import { check_request_keys, type ContextOverflow, resolve_sampling, seed_words } from "./sampling.ts";
import { type NeedsDrain, type Plan, type PrefillChunk, Scheduler } from "./scheduler.ts";
import { Steps } from "./step.ts";

export type {
  ContextOverflow,
  FinishReason,
  GenerateRequest,
  GenerateResult,
  RequestEvent,
  RequestHandle,
  TokenLogprob,
};

/** Engine options (all optional; defaults depend on the backend). */
export interface EngineOptions {
  /** Default of the requests' `context_overflow` ("slide", as nanoGPT's sample.py). */
  context_overflow?: ContextOverflow;
  /** Decode steps per launch in steady state (default 8; 1 turns the device-side loop off). */
  steps_per_launch?: number;
  /** Sequences decoding at once: the decode slots (default 256 on CUDA, 64 on the CPU). */
  max_running?: number;
  /** Requests queued at most before submit refuses more (default 0: unbounded). */
  max_waiting?: number;
  /** Prompt tokens one prefill launch computes at most: a long prompt is chunked (default 2048 on CUDA, 512 on the CPU). */
  prefill_tokens?: number;
  /**
   * Prompts one prefill launch takes at most (default 64: 256 gpt2 requests sharing a cached
   * prefix left 32-token suffixes, 1,024 rows a launch at 32 of them).
   */
  prefill_seqs?: number;
  /** Positions per KV block (default 16). */
  block_size?: number;
  /** Bytes of the KV pool (default: kv_memory_fraction of free device memory; on the CPU what the slots can use, at most 1 GiB). */
  kv_memory?: number;
  /** The share of free device memory the KV pool takes when kv_memory is not given (default 0.5). */
  kv_memory_fraction?: number;
  /** Reuse the KV of prompt prefixes other requests computed (default true). */
  prefix_caching?: boolean;
  /**
   * How the KV cache is stored: "dtype" (default, the backend's dtype) or "int8" (one f32 scale
   * per row of head_dim values: about half the bytes of a 16-bit cache).
   */
  kv_dtype?: KvDtype;
  /**
   * Milliseconds of work between yields to the event loop's I/O (default 0: only promise jobs run
   * between launches, for the least overhead). A server sets a few ms so sockets are served while
   * the engine works.
   */
  io_yield_ms?: number;
}

/** The keys of EngineOptions. */
export const ENGINE_OPTION_KEYS: readonly (keyof EngineOptions)[] = [
  "context_overflow",
  "steps_per_launch",
  "max_running",
  "max_waiting",
  "prefill_tokens",
  "prefill_seqs",
  "block_size",
  "kv_memory",
  "kv_memory_fraction",
  "prefix_caching",
  "kv_dtype",
  "io_yield_ms",
];

/** A piece of text from request `index` of a batch; `done` is set on its last piece. */
export interface TextEvent {
  /** The request's index in the array given to run. */
  index: number;
  /** Text that can be shown now (possibly ""). */
  text: string;
  /** Why the request ended, on its last event. */
  done?: FinishReason;
}

/** Timings of the last busy period (from idle to idle), in milliseconds from its start. */
export interface RunStats {
  /** Time to the first generated token. */
  ttft_ms: number;
  /** Decode steps launched. */
  decode_steps: number;
  /** Time from the first token to the end. */
  decode_ms: number;
  /** Time from the start of the busy period to its end. */
  total_ms: number;
  /**
   * Host time per decode step after the first token: launching, reading back and handling tokens,
   * excluding time blocked waiting for the device. Below the device's step time, the device never
   * waits for the host.
   */
  host_us_per_step: number;
  /** Of host_us_per_step: time in the launch calls and in read_async. */
  launch_us_per_step: number;
  /** The median over launches of their host time per step (without the occasional stall). */
  host_us_median: number;
}

/** The engine refuses a request: the waiting queue is full. */
export class QueueFullError extends Error {
  /** `limit`: the queue's size, EngineOptions.max_waiting. */
  constructor(limit: number) {
    super(`the engine's waiting queue is full (${limit} requests): try again later`);
    this.name = "QueueFullError";
  }
}

/** The outputs of one launch, read back asynchronously, and which sequence each belongs to. */
interface Launch {
  prefill: {
    chunks: PrefillChunk[];
    tokens: PendingRead;
    lp: PendingRead | null;
    prompt_lp: PendingRead | null;
  } | null;
  decode: { by_slot: (Sequence | null)[]; k: number; tokens: PendingRead; lp: PendingRead | null } | null;
  t_launch: number;
  host_ms: number;
}

/** What one launch did and cost on the host (Engine.on_launch), in milliseconds. */
export interface LaunchTrace {
  /** When it was enqueued (performance.now()). */
  t_launch: number;
  /** Prompt tokens it prefilled. */
  prefill_rows: number;
  /** Sequences those came from. */
  prefill_seqs: number;
  /** Decoding sequences. */
  decode_batch: number;
  /** Decode steps each ran. */
  k: number;
  /** Host time to enqueue it. */
  host_ms: number;
  /** Time blocked waiting for its outputs when it was collected. */
  wait_ms: number;
  /** Host time turning its outputs into events. */
  collect_ms: number;
}

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

/** Runs generation on one model. */
export class Engine implements Disposable {
  /** The model. */
  readonly model: GPT;
  /** Its tokenizer. */
  readonly tokenizer: Tokenizer;
  /** Resolved options. */
  readonly options: Readonly<Required<Omit<EngineOptions, "kv_memory">> & { kv_memory: number | null }>;
  /** Counters and latency histograms since the engine was made (the server's /metrics). */
  readonly metrics: EngineMetrics = new EngineMetrics();
  /**
   * The most KV blocks held at once during the last busy period, with the tokens the running
   * sequences had in the KV cache (or were computing) and how many sequences there were then.
   */
  kv_peak: { held: number; live_tokens: number; sequences: number } = {
    held: 0,
    live_tokens: 0,
    sequences: 0,
  };
  /** Timings of the last busy period. */
  stats: RunStats = {
    ttft_ms: 0,
    decode_steps: 0,
    decode_ms: 0,
    total_ms: 0,
    host_us_per_step: 0,
    launch_us_per_step: 0,
    host_us_median: 0,
  };
  /**
   * Milliseconds of work between yields to the event loop's I/O (EngineOptions.io_yield_ms; a
   * server raises it so its sockets are served while the engine works).
   */
  io_yield_ms: number;
  /** Called as each launch is collected (benchmarks and profiling; unset: nothing recorded). */
  on_launch: ((t: LaunchTrace) => void) | null = null;
  #state: DeviceState | null = null;
  #sched: Scheduler | null = null;
  #steps: Steps | null = null;
  #next_id = 0;
  #loop: Promise<void> | null = null;
  #inflight: Launch[] = [];
  #disposed = false;
  #period = { t0: 0, t_first: 0, steps: 0, waited_ms: 0, launch_ms: 0, per_step: [] as [number, number][] };

  /**
   * Checks `opts` (throwing on an unknown key or a value out of range); allocates nothing until
   * the first request or reserve().
   */
  constructor(model: GPT, tokenizer: Tokenizer, opts: EngineOptions = {}) {
    check_keys(opts, ENGINE_OPTION_KEYS, "engine options");
    this.model = model;
    this.tokenizer = tokenizer;
    const cuda = model.backend.kind === "cuda";
    const o = {
      context_overflow: check_choice("context_overflow", opts.context_overflow ?? "slide", [
        "slide",
        "error",
      ]),
      steps_per_launch: check_int("steps_per_launch", opts.steps_per_launch ?? 8, 1, 64),
      max_running: check_int("max_running", opts.max_running ?? (cuda ? 256 : 64), 1, 4096),
      max_waiting: check_int("max_waiting", opts.max_waiting ?? 0, 0),
      prefill_tokens: check_int("prefill_tokens", opts.prefill_tokens ?? (cuda ? 2048 : 512), 16, 65536),
      prefill_seqs: check_int("prefill_seqs", opts.prefill_seqs ?? 64, 1, 1024),
      block_size: check_int("block_size", opts.block_size ?? 16, 1, 1024),
      kv_memory: opts.kv_memory === undefined ? null : check_int("kv_memory", opts.kv_memory, 1),
      kv_memory_fraction: opts.kv_memory_fraction ?? 0.5,
      prefix_caching: opts.prefix_caching ?? true,
      kv_dtype: check_choice("kv_dtype", opts.kv_dtype ?? "dtype", ["dtype", "int8"]),
      io_yield_ms: check_int("io_yield_ms", opts.io_yield_ms ?? 0, 0, 1000),
    };
    if (!(o.kv_memory_fraction > 0 && o.kv_memory_fraction <= 1)) {
      throw new RangeError(`kv_memory_fraction must be in (0, 1], got ${o.kv_memory_fraction}`);
    }
    if (typeof o.prefix_caching !== "boolean") throw new TypeError("prefix_caching must be a boolean");
    this.options = Object.freeze(o);
    this.io_yield_ms = o.io_yield_ms;
  }

  /** Bytes of the KV pool (0 before the first request, or reserve()). */
  get kv_bytes(): number {
    return this.#state?.kv_bytes ?? 0;
  }

  /** The KV blocks and the prefix cache (null before the first request). */
  get pool(): BlockPool | null {
    return this.#sched?.pool ?? null;
  }

  /** Sequences preempted so far (their KV freed when the pool ran short, recomputed later). */
  get preemptions(): number {
    return this.#sched?.preemptions ?? 0;
  }

  /** Requests admitted (computing their prompt or decoding) and waiting. */
  get load(): { running: number; waiting: number } {
    return { running: this.#sched?.running.length ?? 0, waiting: this.#sched?.waiting.length ?? 0 };
  }

  /** Allocates the device state now (the KV pool, the slots, the workspace) instead of at the first request. */
  reserve(): void {
    this.#ensure_state();
  }

  #ensure_state(): { state: DeviceState; sched: Scheduler; steps: Steps } {
    if (this.#disposed) throw new Error("the engine has been disposed");
    if (this.#state && this.#sched && this.#steps) {
      return { state: this.#state, sched: this.#sched, steps: this.#steps };
    }
    const o = this.options, c = this.model.config, be = this.model.backend;
    const max_blocks = Math.ceil(c.block_size / o.block_size);
    const block_bytes = kv_block_bytes(c, o.block_size, be.dtype, o.kv_dtype);
    const enough = o.max_running * max_blocks + 1;
    const free = be.free_bytes();
    const budget = o.kv_memory ?? (free === null ? 1 << 30 : Math.floor(free * o.kv_memory_fraction));
    const num_blocks = Math.min(enough, Math.floor(budget / block_bytes));
    if (num_blocks < max_blocks) {
      throw new RangeError(
        `the KV cache gets ${budget} bytes (${num_blocks} blocks of ${block_bytes} bytes): fewer than one ` +
          `sequence of the model's context needs (${max_blocks} blocks); raise kv_memory or kv_memory_fraction`,
      );
    }
    const state = new DeviceState(this.model, {
      slots: o.max_running,
      num_blocks,
      block_size: o.block_size,
      prefill_tokens: o.prefill_tokens,
      prefill_seqs: o.prefill_seqs,
      log_steps: o.steps_per_launch,
      kv_dtype: o.kv_dtype,
    });
    this.#state = state;
    this.#steps = new Steps(this.model, state);
    this.#sched = new Scheduler(
      new BlockPool(num_blocks, o.block_size, { prefix_caching: o.prefix_caching }),
      {
        slots: o.max_running,
        context: c.block_size,
        prefill_tokens: o.prefill_tokens,
        prefill_seqs: o.prefill_seqs,
        steps_per_launch: o.steps_per_launch,
        max_waiting: o.max_waiting,
      },
    );
    return { state, sched: this.#sched, steps: this.#steps };
  }

  /** Tokenizes a prompt (or checks given ids); an empty prompt starts from end-of-text when there is one. */
  encode_prompt(prompt: string | number[]): number[] {
    const V = this.model.config.vocab_size;
    if (typeof prompt !== "string" && !Array.isArray(prompt)) {
      throw new TypeError(`prompt must be a string or an array of token ids, got ${typeof prompt}`);
    }
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

  /**
   * Queues a request: it joins the running batch at the next launch. Throws (naming the field) on a
   * bad request, and QueueFullError when max_waiting requests are queued. With `signal`, aborting
   * cancels it. `stream_text` false skips per-token text events unless stop strings need them.
   */
  submit(
    request: GenerateRequest,
    opts: { signal?: AbortSignal; stream_text?: boolean } = {},
  ): RequestHandle {
    check_request_keys(request, "request", REQUEST_KEYS);
    const req = {
      ...resolve_sampling(request, { context_overflow: this.options.context_overflow }),
      ...resolve_reporting(request),
    };
    const prompt = this.encode_prompt(request.prompt);
    const bs = this.model.config.block_size;
    if (req.context_overflow === "error" && prompt.length + req.max_new_tokens > bs) {
      throw new RangeError(
        `prompt (${prompt.length} tokens) + max_new_tokens (${req.max_new_tokens}) exceeds the model's context ` +
          `of ${bs} tokens (context_overflow is "error")`,
      );
    }
    const { sched } = this.#ensure_state();
    const seq = new Sequence(this.#next_id++, req, prompt, this.tokenizer, opts.stream_text ?? true);
    let resolve!: (r: GenerateResult) => void, reject!: (e: unknown) => void;
    const result = new Promise<GenerateResult>((res, rej) => [resolve, reject] = [res, rej]);
    result.catch(() => {}); // a caller that only reads events need not await the result
    seq.settle = () => seq.error ? reject(seq.error) : resolve(this.#result(seq));
    const handle: RequestHandle = {
      id: seq.id,
      events: () => seq.queue.iterate(),
      result,
      cancel: (reason?: unknown) => this.#cancel(seq, reason),
    };
    if (opts.signal?.aborted) {
      this.#cancel(seq, opts.signal.reason);
      return handle;
    }
    if (req.max_new_tokens === 0 && !req.prompt_logprobs) {
      this.#finish(seq, "length");
      return handle;
    }
    if (!sched.add(seq)) throw new QueueFullError(sched.opts.max_waiting);
    this.metrics.on_submit();
    opts.signal?.addEventListener("abort", () => this.#cancel(seq, opts.signal!.reason), { once: true });
    this.#kick();
    return handle;
  }

  /** Generates for every request and returns the results in order (all submitted at once). */
  async generate(requests: GenerateRequest[]): Promise<GenerateResult[]> {
    const handles: RequestHandle[] = [];
    try {
      for (const r of requests) handles.push(this.submit(r, { stream_text: false }));
    } catch (e) {
      for (const h of handles) h.cancel(e);
      throw e;
    }
    return await Promise.all(handles.map((h) => h.result));
  }

  /** Streams a batch of requests: events carry the index of their request. */
  async *run(requests: GenerateRequest[]): AsyncGenerator<TextEvent> {
    const handles: RequestHandle[] = [];
    try {
      for (const r of requests) handles.push(this.submit(r));
    } catch (e) {
      for (const h of handles) h.cancel(e);
      throw e;
    }
    const events: TextEvent[] = [];
    let wake: (() => void) | null = null, open = handles.length, failure: unknown = null;
    handles.forEach((h, index) => {
      (async () => {
        try {
          for await (const ev of h.events()) {
            events.push(ev.done ? { index, text: ev.text, done: ev.done } : { index, text: ev.text });
            wake?.();
          }
        } catch (e) {
          failure ??= e;
        }
        open--;
        wake?.();
      })();
    });
    try {
      while (open > 0 || events.length) {
        if (failure) throw failure;
        if (events.length) yield events.shift()!;
        else await new Promise<void>((r) => (wake = r));
      }
      if (failure) throw failure;
    } finally {
      for (const h of handles) h.cancel(new Error("the stream was closed"));
    }
  }

  #cancel(seq: Sequence, reason: unknown): void {
    if (seq.ended) return;
    seq.error = reason ?? new DOMException("the request was cancelled", "AbortError");
    seq.queue.close(seq.error);
    this.#sched?.retire(seq);
    this.metrics.on_end(seq, "cancelled");
    seq.settle();
  }

  #finish(seq: Sequence, why: FinishReason): void {
    if (seq.ended) return;
    seq.done = why;
    const piece = seq.text?.finish() ?? "";
    seq.queue.push({ text: piece, tokens: [], done: why });
    seq.queue.close();
    if (seq.status !== "finished") this.#sched?.retire(seq);
    this.metrics.on_end(seq, why);
    seq.settle();
  }

  #result(seq: Sequence): GenerateResult {
    const toks = seq.done === "eot" ? seq.generated.slice(0, -1) : seq.generated;
    const t_end = performance.now();
    const out: GenerateResult = {
      text: seq.text ? seq.text.text : new TextDecoder().decode(this.tokenizer.decode_bytes(toks)),
      tokens: seq.generated,
      finish_reason: seq.done ?? "length",
      prompt_tokens: seq.prompt.length,
      prompt_ids: seq.prompt,
      cached_tokens: seq.cached_tokens,
      ttft_ms: seq.t_first ? seq.t_first - seq.t_submit : 0,
      total_ms: t_end - seq.t_submit,
    };
    if (seq.req.logprobs >= 0) out.logprobs = seq.logprobs;
    if (seq.req.prompt_logprobs) out.prompt_logprobs = seq.prompt_logprobs;
    return out;
  }

  /** Starts the loop if it is not running. */
  #kick(): void {
    if (this.#loop) return;
    this.#period = { t0: performance.now(), t_first: 0, steps: 0, waited_ms: 0, launch_ms: 0, per_step: [] };
    this.kv_peak = { held: 0, live_tokens: 0, sequences: 0 };
    this.#loop = this.#run_loop().finally(() => (this.#loop = null));
  }

  async #run_loop(): Promise<void> {
    const sched = this.#sched!;
    // Requests submitted in the same task as the one that started the loop join its first launch
    // (without this, the first launch held the first request alone).
    await null;
    let last_io = performance.now();
    try {
      while (sched.busy || this.#inflight.length) {
        this.#iteration();
        if (this.io_yield_ms > 0 && performance.now() - last_io >= this.io_yield_ms) {
          await new Promise((r) => setTimeout(r, 0));
          last_io = performance.now();
        } else await null;
      }
      this.#end_period();
    } catch (e) {
      this.#fail_all(e);
    }
  }

  /** One iteration: admit, schedule, launch, collect (which retires what finished). */
  #iteration(): void {
    const sched = this.#sched!;
    sched.admit();
    let plan: Plan | NeedsDrain = sched.plan();
    if ("needs_drain" in plan) {
      // Sliding and preemption need every token in flight first.
      this.#collect_all();
      plan = sched.plan(true) as Plan;
    }
    const launched = plan.prefill.length > 0 || plan.decode !== null;
    if (launched) this.#inflight.push(this.#launch(plan));
    if (sched.pool.held > this.kv_peak.held) {
      const running = sched.running;
      const live_tokens = running.reduce((a, s) => a + (s.status === "decode" ? s.len : s.target.length), 0);
      this.kv_peak = { held: sched.pool.held, live_tokens, sequences: running.length };
    }
    // Overlap: collect the launch before this one while the device runs this one. A backend that
    // runs steps as they are enqueued (the CPU) has nothing to overlap, and with nothing launched
    // there is nothing to overlap with: collect everything now.
    const keep = launched && this.model.backend.read_async !== undefined ? 1 : 0;
    while (this.#inflight.length > keep) this.#collect(this.#inflight.shift()!);
  }

  /** Collects every launch in flight. */
  #collect_all(): void {
    while (this.#inflight.length) this.#collect(this.#inflight.shift()!);
  }

  /** Enqueues the plan's prefill and decode steps and the reads of their outputs. */
  #launch(plan: Plan): Launch {
    const t0 = performance.now();
    const launch: Launch = { prefill: null, decode: null, t_launch: t0, host_ms: 0 };
    if (plan.prefill.length) launch.prefill = this.#launch_prefill(plan.prefill);
    if (plan.decode) launch.decode = this.#launch_decode(plan.decode.by_slot, plan.decode.k);
    launch.host_ms = performance.now() - t0;
    if (this.#period.t_first) this.#period.launch_ms += launch.host_ms;
    return launch;
  }

  #read(buf: Buf, bytes: number, offset = 0): PendingRead {
    const be = this.model.backend;
    if (be.read_async) return be.read_async(buf, bytes, offset);
    const out = new Uint8Array(bytes);
    be.read(buf, out, offset);
    return { done: () => true, wait: () => out };
  }

  #launch_prefill(chunks: PrefillChunk[], score = false): NonNullable<Launch["prefill"]> {
    const st = this.#state!, sched = this.#sched!, h = st.pre_host;
    const n_rows = chunks.reduce((a, c) => a + c.n, 0);
    const P = seqs_bucket(chunks.length, st.opts.prefill_seqs),
      N = rows_bucket(n_rows, st.opts.prefill_tokens);
    // The attention grid covers max_seq_rows rows of every sequence: bounding it by the longest
    // chunk's bucket, not N, keeps a batch of short prompts from launching N/64 mostly idle blocks
    // per sequence and head (256 prompts of 64 tokens: 256x fewer). With the bound at N, the
    // closed-batch TTFT of gpt2 at batch 256 was 26 ms against the closed-batch engine's 9 (H200,
    // same call); this is the suspected cause, not yet measured with the tighter bound.
    const M = rows_bucket(Math.max(...chunks.map((c) => c.n)), N);
    const mb = st.layout.max_blocks;
    const i32 = h.i32, f32 = h.f32, u32 = h.u32;
    i32.tokens.fill(0, 0, N);
    i32.positions.fill(0, 0, N);
    i32.row_seq.fill(-1, 0, N);
    i32.targets.fill(-1, 0, N);
    let r = 0;
    const prompt_lp = score || chunks.some((c) => c.seq.req.prompt_logprobs);
    for (let b = 0; b < P; b++) {
      const c = chunks[b];
      i32.seq_start[b] = r;
      if (!c) {
        i32.last_row[b] = 0;
        i32.lengths[b] = 0;
        i32.n_new[b] = 0;
        i32.scatter[b] = -1;
        continue;
      }
      const s = c.seq;
      for (let t = 0; t < c.n; t++, r++) {
        i32.tokens[r] = s.target[c.start + t];
        i32.positions[r] = c.start + t;
        i32.row_seq[r] = b;
        if (c.targets) i32.targets[r] = c.targets[c.start + t];
        else if (s.req.prompt_logprobs && c.start + t + 1 < s.target.length) {
          i32.targets[r] = s.target[c.start + t + 1];
        }
      }
      i32.last_row[b] = r - 1;
      i32.lengths[b] = c.start;
      i32.n_new[b] = c.final ? c.n : 0;
      i32.scatter[b] = c.final ? s.slot : -1;
      f32.temperature[b] = s.req.temperature;
      i32.top_k[b] = s.req.top_k;
      f32.top_p[b] = s.req.top_p;
      [u32.seed[2 * b], u32.seed[2 * b + 1]] = seed_words(s.req.seed);
      i32.block_table.fill(0, b * mb, (b + 1) * mb);
      i32.block_table.set(s.blocks.slice(0, mb), b * mb);
    }
    i32.seq_start[P] = r;
    st.write_prefill();
    this.#steps!.prefill({
      P,
      N,
      max_seq_rows: M,
      prompt_logprobs: score ? 0 : prompt_lp ? MAX_LOGPROBS : -1,
    });
    for (const c of chunks) {
      sched.computed(c);
      if (c.final) c.seq.inflight++;
    }
    const want_lp = chunks.some((c) => c.final && c.seq.req.logprobs >= 0);
    return {
      chunks,
      tokens: this.#read(st.pre_next, P * 4),
      lp: want_lp ? this.#read(st.pre_lp, P * LOGPROB_WORDS * 4) : null,
      prompt_lp: prompt_lp ? this.#read(st.prompt_lp, N * (score ? 1 : LOGPROB_WORDS) * 4) : null,
    };
  }

  #launch_decode(by_slot: (Sequence | null)[], k: number): NonNullable<Launch["decode"]> {
    const st = this.#state!, h = st.slot_host, mb = st.layout.max_blocks, S = st.opts.slots;
    let top = 0, max_end = 0, lp = false;
    by_slot.forEach((s, i) => {
      if (!s) return;
      top = i + 1;
      max_end = Math.max(max_end, s.len + k);
      lp ||= s.req.logprobs >= 0;
    });
    const B = batch_bucket(top, S);
    for (let i = 0; i < B; i++) {
      const s = by_slot[i];
      h.i32.n_new[i] = s ? 1 : 0;
      h.i32.lengths[i] = s ? s.len : 0;
      if (!s) continue;
      h.f32.temperature[i] = s.req.temperature;
      h.i32.top_k[i] = s.req.top_k;
      h.f32.top_p[i] = s.req.top_p;
      [h.u32.seed[2 * i], h.u32.seed[2 * i + 1]] = seed_words(s.req.seed);
      h.i32.block_table.set(s.blocks.slice(0, mb), i * mb);
    }
    st.write_slots();
    const max_len = length_bucket(max_end, this.model.config.block_size);
    this.#steps!.decode({ B, max_len, k, logprobs: lp });
    for (const s of by_slot) {
      if (!s) continue;
      s.len += k;
      s.inflight += k;
    }
    this.#period.steps += k;
    const L = st.opts.log_steps, first = L - k;
    return {
      by_slot: by_slot.slice(0, B),
      k,
      tokens: this.#read(st.token_log, ((k - 1) * S + B) * 4, first * S * 4),
      lp: lp
        ? this.#read(st.lp_log, ((k - 1) * S + B) * LOGPROB_WORDS * 4, first * S * LOGPROB_WORDS * 4)
        : null,
    };
  }

  /** Waits for a launch's outputs and turns them into events. */
  #collect(l: Launch): void {
    const tw = performance.now();
    const wait = (r: PendingRead | null) => r ? r.wait() : null;
    const as_i32 = (b: Uint8Array) => new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    const as_f32 = (b: Uint8Array | null) =>
      b ? new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4) : null;
    const pre = l.prefill
      ? {
        t: as_i32(wait(l.prefill.tokens)!),
        lp: as_f32(wait(l.prefill.lp)),
        plp: as_f32(wait(l.prefill.prompt_lp)),
      }
      : null;
    const dec = l.decode ? { t: as_i32(wait(l.decode.tokens)!), lp: as_f32(wait(l.decode.lp)) } : null;
    const waited = performance.now() - tw;
    const th = performance.now();
    if (this.#period.t_first) this.#period.waited_ms += waited;
    const now = performance.now();
    if (l.prefill && pre) {
      l.prefill.chunks.forEach((c, b) => {
        if (pre.plp) {
          this.#prompt_logprobs(
            c,
            pre.plp,
            b === 0 ? 0 : l.prefill!.chunks.slice(0, b).reduce((a, x) => a + x.n, 0),
          );
        }
        if (!c.final) return;
        c.seq.inflight--;
        if (c.seq.req.max_new_tokens === 0) this.#finish(c.seq, "length");
        else {this.#accept(
            c.seq,
            [pre.t[b]],
            pre.lp ? [this.#lp_entry(pre.lp, b * LOGPROB_WORDS, c.seq)] : null,
            now,
          );}
      });
    }
    if (l.decode && dec) {
      const S = this.#state!.opts.slots, k = l.decode.k;
      l.decode.by_slot.forEach((s, i) => {
        if (!s) return;
        s.inflight -= k;
        const toks: number[] = [], lps: TokenLogprob[] = [];
        for (let j = 0; j < k; j++) {
          toks.push(dec.t[j * S + i]);
          if (dec.lp) lps.push(this.#lp_entry(dec.lp, (j * S + i) * LOGPROB_WORDS, s));
        }
        this.#accept(s, toks, dec.lp ? lps : null, now);
      });
    }
    if (this.on_launch) {
      this.on_launch({
        t_launch: l.t_launch,
        prefill_rows: l.prefill?.chunks.reduce((a, c) => a + c.n, 0) ?? 0,
        prefill_seqs: l.prefill?.chunks.length ?? 0,
        decode_batch: l.decode?.by_slot.filter((s) => s).length ?? 0,
        k: l.decode?.k ?? 0,
        host_ms: l.host_ms,
        wait_ms: waited,
        collect_ms: performance.now() - th,
      });
    }
    if (this.#period.t_first && l.decode) {
      const host = l.host_ms + (performance.now() - th);
      this.#period.per_step.push([host * 1000 / l.decode.k, l.decode.k]);
    }
  }

  /** A logprob entry from `words` at `at` (the chosen token, then MAX_LOGPROBS pairs) for `seq`. */
  #lp_entry(words: Float32Array, at: number, seq: Sequence): TokenLogprob {
    const n = Math.max(0, seq.req.logprobs);
    const top: { token: number; logprob: number }[] = [];
    for (let j = 0; j < Math.min(n, MAX_LOGPROBS); j++) {
      top.push({ token: words[at + 1 + 2 * j], logprob: words[at + 2 + 2 * j] });
    }
    return { token: -1, logprob: words[at], top };
  }

  /** Records prompt logprobs from a prefill chunk's rows (row_off: its first row in the launch). */
  #prompt_logprobs(c: PrefillChunk, words: Float32Array, row_off: number): void {
    const s = c.seq;
    if (!s.req.prompt_logprobs || s.preemptions > 0 || s.generated.length > 0) return;
    const shift = s.prompt.length - s.target.length; // a prompt cropped to the context
    if (s.prompt_logprobs.length === 0) s.prompt_logprobs = new Array(s.prompt.length).fill(null);
    for (let t = 0; t < c.n; t++) {
      const j = c.start + t + 1; // the target token this row predicts
      if (j >= s.target.length) break;
      const e = this.#lp_entry(words, (row_off + t) * LOGPROB_WORDS, s);
      s.prompt_logprobs[shift + j] = { ...e, token: s.target[j] };
    }
  }

  /** Appends a sequence's new tokens, checking its stop conditions; emits one event. */
  #accept(s: Sequence, toks: number[], lps: TokenLogprob[] | null, now: number): void {
    if (s.ended) return;
    const eot = this.tokenizer.eot_id;
    const taken: number[] = [], taken_lp: TokenLogprob[] = [];
    let piece = "";
    for (let j = 0; j < toks.length && !s.done; j++) {
      const t = toks[j];
      s.generated.push(t);
      taken.push(t);
      if (lps) {
        const e = { ...lps[j], token: t };
        s.logprobs.push(e);
        taken_lp.push(e);
      }
      if (s.req.stop_at_eot && eot !== null && t === eot) s.done = "eot";
      else if (s.text) {
        piece += s.text.push(t);
        if (s.text.stopped) s.done = "stop";
      }
      if (!s.done && s.generated.length >= s.req.max_new_tokens) s.done = "length";
    }
    if (!s.t_first && taken.length) {
      s.t_first = now;
      if (!this.#period.t_first) this.#period.t_first = now;
    }
    this.metrics.on_tokens(s, taken.length, now);
    const done = s.done;
    if (done) {
      s.done = null; // #finish sets it and emits the final event with the rest of the text
      if (piece || taken.length) {
        s.queue.push({ text: piece, tokens: taken, ...(lps ? { logprobs: taken_lp } : {}) });
      }
      this.#finish(s, done);
      return;
    }
    if (piece || taken.length) {
      s.queue.push({ text: piece, tokens: taken, ...(lps ? { logprobs: taken_lp } : {}) });
    }
  }

  #end_period(): void {
    const p = this.#period, t_end = performance.now();
    const t_first = p.t_first || t_end;
    this.stats = {
      ttft_ms: t_first - p.t0,
      decode_steps: p.steps,
      decode_ms: t_end - t_first,
      total_ms: t_end - p.t0,
      host_us_per_step: p.steps > 1 ? Math.max(0, t_end - t_first - p.waited_ms) * 1000 / (p.steps - 1) : 0,
      launch_us_per_step: p.steps > 1 ? p.launch_ms * 1000 / (p.steps - 1) : 0,
      host_us_median: weighted_median(p.per_step),
    };
  }

  /** A fatal error (the device failed): every request fails with it and the state is reset. */
  #fail_all(e: unknown): void {
    const err = e instanceof Error ? e : new Error(String(e));
    const sched = this.#sched;
    this.#inflight = [];
    if (sched) {
      for (const s of [...sched.waiting, ...sched.running]) {
        if (!s.ended) {
          s.error = err;
          s.queue.close(err);
          sched.retire(s);
          s.settle();
        }
      }
    }
    try {
      this.model.backend.synchronize();
    } catch { /* the error above is the one to report */ }
  }

  /**
   * Logits (f32, vocab_size each) at the last position of each prompt, from one prefill launch on
   * an idle engine; for tests and scoring. Every prompt must fit the context and, together, the
   * prefill budget.
   */
  prefill_logits(prompts: number[][]): Float32Array[] {
    const { state, sched } = this.#idle("prefill_logits");
    for (const p of prompts) this.#check_fits(p);
    const rows = prompts.reduce((a, p) => a + p.length, 0);
    if (rows > state.opts.prefill_tokens || prompts.length > state.opts.prefill_seqs) {
      throw new RangeError(
        `prefill_logits: ${prompts.length} prompts of ${rows} tokens exceed one prefill launch ` +
          `(${state.opts.prefill_seqs} prompts, ${state.opts.prefill_tokens} tokens)`,
      );
    }
    const seqs = prompts.map((p) => this.#probe_seq(p, sched));
    try {
      const chunks = seqs.map((s) => ({ seq: s, start: 0, n: s.target.length, final: false }));
      this.#launch_prefill(chunks);
      return this.#read_logits(prompts.length);
    } finally {
      for (const s of seqs) sched.pool.release_all(s.blocks);
    }
  }

  /**
   * Logits at every position of `ids`, computed the way generation does: a prefill of the first
   * `prefill` tokens, then one decode step per following token (teacher forcing through the KV cache).
   */
  teacher_forced_logits(ids: number[], prefill = 1): Float32Array[] {
    const { state, sched } = this.#idle("teacher_forced_logits");
    this.#check_fits(ids);
    const s = this.#probe_seq(ids, sched);
    try {
      s.target = ids.slice(0, prefill);
      this.#launch_prefill([{ seq: s, start: 0, n: prefill, final: false }]);
      const out = this.#read_logits(1);
      s.len = prefill;
      s.slot = 0;
      for (let t = prefill; t < ids.length; t++) {
        this.model.backend.write(state.next_token, Int32Array.of(ids[t]));
        const by_slot = [s];
        this.#launch_decode(by_slot, 1);
        out.push(...this.#read_logits(1));
      }
      return out;
    } finally {
      sched.pool.release_all(s.blocks);
      this.model.backend.write(state.next_token, new Int32Array(state.opts.slots));
    }
  }

  /**
   * Log-probabilities of `targets[i][t]` after `inputs[i][0..t]`, for every position of every
   * input (a window of at most the context), on an idle engine: the way validation loss is
   * measured. Windows go through the prefill step in launches of up to the prefill budget; the
   * logits of a launch's rows are computed and reduced in chunks, never all at once.
   * `progress` is called with the positions scored so far.
   */
  score(inputs: number[][], targets: number[][], progress?: (done: number) => void): Float32Array[] {
    const { state, sched } = this.#idle("score");
    inputs.forEach((x, i) => {
      this.#check_fits(x);
      if (
        targets[i]?.length !== x.length ||
        targets[i].some((t) => !(Number.isInteger(t) && t >= 0 && t < this.model.config.vocab_size))
      ) {
        throw new RangeError(
          `score: targets ${i} must be ${x.length} token ids in [0, ${this.model.config.vocab_size})`,
        );
      }
      if (x.length > state.opts.prefill_tokens) {
        throw new RangeError(
          `score: input ${i} (${x.length} tokens) exceeds the prefill budget (${state.opts.prefill_tokens})`,
        );
      }
    });
    const out: Float32Array[] = [];
    let done = 0;
    for (let i = 0; i < inputs.length;) {
      let rows = 0, j = i;
      while (
        j < inputs.length && j - i < state.opts.prefill_seqs &&
        rows + inputs[j].length <= state.opts.prefill_tokens
      ) {
        rows += inputs[j++].length;
      }
      const seqs = inputs.slice(i, j).map((x) => this.#probe_seq(x, sched));
      try {
        const chunks = seqs.map((s, k) => ({
          seq: s,
          start: 0,
          n: s.target.length,
          final: false,
          targets: targets[i + k],
        }));
        const l = this.#launch_prefill(chunks, true);
        const words = l.prompt_lp!.wait();
        const f = new Float32Array(words.buffer, words.byteOffset, words.byteLength / 4);
        let r = 0;
        for (const s of seqs) {
          out.push(f.slice(r, r + s.target.length));
          r += s.target.length;
        }
      } finally {
        for (const s of seqs) sched.pool.release_all(s.blocks);
      }
      done += rows;
      progress?.(done);
      i = j;
    }
    return out;
  }

  #idle(what: string) {
    const st = this.#ensure_state();
    // Idle: nothing queued, admitted or in flight. The loop itself may still be winding down (a
    // request's result resolves inside it, and with io_yield_ms it can be parked in a timer): it has
    // nothing left to launch, and a probe runs and cleans up synchronously before it resumes.
    if (st.sched.busy || this.#inflight.length) throw new Error(`${what} needs an idle engine`);
    return st;
  }

  /** A sequence outside the scheduler holding fresh blocks for `ids` (for the probes above). */
  #probe_seq(ids: number[], sched: Scheduler): Sequence {
    const s = new Sequence(
      -1,
      { ...resolve_sampling({ temperature: 0 }), logprobs: -1, prompt_logprobs: false },
      ids,
      this.tokenizer,
      false,
    );
    s.target = [...ids];
    const blocks = sched.pool.allocate_n(Math.ceil(ids.length / sched.pool.block_size));
    if (!blocks) throw new Error("the KV pool has no room for this probe: wait for the engine to be idle");
    s.blocks = blocks;
    return s;
  }

  #check_fits(ids: number[]): void {
    this.encode_prompt(ids);
    if (ids.length > this.model.config.block_size) {
      throw new RangeError(
        `${ids.length} tokens exceed the model's context of ${this.model.config.block_size}`,
      );
    }
  }

  #read_logits(B: number): Float32Array[] {
    const ld = this.model.vocab_padded, V = this.model.config.vocab_size;
    const all = new Float32Array((B - 1) * ld + V);
    this.model.backend.read(this.#state!.ws.logits, all);
    return Array.from({ length: B }, (_, b) => all.slice(b * ld, b * ld + V));
  }

  /** Cancels every request, waits for the device, and frees the device state. */
  [Symbol.dispose](): void {
    if (this.#disposed) return;
    const sched = this.#sched;
    if (sched) {
      for (const s of [...sched.waiting, ...sched.running]) {
        this.#cancel(s, new Error("the engine was disposed"));
      }
    }
    this.#disposed = true;
    this.#inflight = [];
    if (this.#state) {
      this.model.backend.synchronize();
      this.model.backend.reset_steps?.();
      this.#state[Symbol.dispose]();
      this.#state = null;
    }
  }
}
