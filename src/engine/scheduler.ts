/**
 * The continuous-batching scheduler: host logic only, no device. Each iteration it admits waiting
 * requests while a decode slot and KV blocks are free (reusing cached prompt prefixes), picks the
 * chunks of prompts to prefill within a token budget, and the decoding sequences of the next launch
 * with the KV blocks they will grow into. When the pool cannot grow a running sequence, the most
 * recently admitted ones are preempted (their blocks freed, their history recomputed later); a
 * sequence past the model's context slides (recomputes its last block_size tokens).
 * @module
 */
import { type BlockPool, prefix_keys } from "./kv_cache.ts";
import type { Sequence } from "./request.ts";

/** Scheduler limits. */
export interface SchedulerOptions {
  /** Decode slots: the most sequences admitted at once. */
  slots: number;
  /** The model's context (block_size): the most positions a sequence holds. */
  context: number;
  /** Prompt tokens one prefill launch computes at most (the chunk budget). */
  prefill_tokens: number;
  /** Sequences one prefill launch takes at most. */
  prefill_seqs: number;
  /** Decode steps per launch in steady state. */
  steps_per_launch: number;
  /** Requests waiting at most (0: unbounded). */
  max_waiting: number;
}

/** A piece of one sequence's prompt to prefill: target tokens start .. start + n - 1. */
export interface PrefillChunk {
  seq: Sequence;
  start: number;
  n: number;
  /** The chunk that ends the target: its last row's logits give the sequence's next token. */
  final: boolean;
  /** Each target token's scored next token (Engine.score), instead of the target's own next one. */
  targets?: number[];
}

/** What the next launch does. */
export interface Plan {
  prefill: PrefillChunk[];
  /** The decoding sequences by slot (null: the slot sits out), or null for no decode launch. */
  decode: { by_slot: (Sequence | null)[]; k: number } | null;
}

/** Why plan() could not plan without the in-flight tokens. */
export type NeedsDrain = { needs_drain: "slide" | "preempt" };

/** The scheduler of one engine. */
export class Scheduler {
  /** Its limits. */
  readonly opts: SchedulerOptions;
  /** The KV blocks. */
  readonly pool: BlockPool;
  /** Requests not yet admitted, in arrival order (preempted ones go back to the front). */
  readonly waiting: Sequence[] = [];
  /** Admitted sequences (prefill or decode) by slot. */
  readonly slots: (Sequence | null)[];
  #admissions = 0;
  /** Sequences preempted so far. */
  preemptions = 0;

  constructor(pool: BlockPool, opts: SchedulerOptions) {
    this.pool = pool;
    this.opts = opts;
    this.slots = new Array(opts.slots).fill(null);
    const max_blocks = Math.ceil(opts.context / pool.block_size);
    if (pool.num_blocks < max_blocks) {
      throw new RangeError(
        `the KV cache holds ${pool.num_blocks} blocks of ${pool.block_size} positions: fewer than one sequence ` +
          `of the model's context (${opts.context} positions, ${max_blocks} blocks) needs`,
      );
    }
  }

  /** Admitted sequences. */
  get running(): Sequence[] {
    return this.slots.filter((s): s is Sequence => s !== null);
  }

  /** Whether anything is admitted or waiting. */
  get busy(): boolean {
    return this.waiting.length > 0 || this.slots.some((s) => s !== null);
  }

  /** Queues a request; false when the waiting queue is full. */
  add(seq: Sequence): boolean {
    if (this.opts.max_waiting > 0 && this.waiting.length >= this.opts.max_waiting) return false;
    seq.target = seq.prompt.length > this.opts.context
      ? seq.prompt.slice(-this.opts.context)
      : [...seq.prompt];
    seq.keys = prefix_keys(seq.target, this.pool.block_size);
    this.waiting.push(seq);
    return true;
  }

  /** Blocks of a target the prefix cache may serve: full ones, never the last token's. */
  #shareable(seq: Sequence): number {
    return Math.floor((seq.target.length - 1) / this.pool.block_size);
  }

  /** Blocks a target of n tokens holds. */
  #blocks_for(n: number): number {
    return Math.ceil(n / this.pool.block_size);
  }

  /**
   * Admits waiting requests in order while a slot is free and the pool has blocks for the whole
   * target (cached prefix blocks reused; the last target token always recomputed, so its block is
   * never a shared one). Returns the admitted ones. `skip` (sequences preempted this iteration)
   * stay waiting.
   */
  admit(skip: ReadonlySet<Sequence> = new Set()): Sequence[] {
    const out: Sequence[] = [];
    const headroom = Math.ceil(this.pool.num_blocks / 100);
    // Prompt blocks being computed now (not yet in the prefix cache): a request whose next
    // uncached block is one of them waits until it is cached, instead of computing the shared
    // prefix again (n samples of one prompt, a common system prompt). Only that block counts: with
    // the first block instead, every request sharing a cached system prompt waited for the one
    // before it to prefill its own last block (on an H200, 256 such gpt2 requests ran 4x slower
    // with the cache than without).
    if (this.waiting.length === 0) return out;
    const computing = new Set<string>();
    const computes = (s: Sequence) => {
      if (!this.pool.prefix_caching) return;
      for (let i = Math.floor(s.computed / this.pool.block_size); i < s.keys.length; i++) {
        computing.add(s.keys[i]);
      }
    };
    for (const s of this.running) if (s.status === "prefill") computes(s);
    while (this.waiting.length) {
      const seq = this.waiting[0];
      if (skip.has(seq)) break;
      const slot = this.slots.indexOf(null);
      if (slot < 0) break;
      const total = this.#blocks_for(seq.target.length);
      const shared = seq.keys.length > 0 && !seq.req.prompt_logprobs;
      const cached = shared ? this.pool.lookup(seq.target, seq.keys, this.#shareable(seq)) : [];
      if (
        shared && this.pool.prefix_caching && cached.length < this.#shareable(seq) &&
        computing.has(seq.keys[cached.length])
      ) {
        this.pool.release_all(cached);
        break;
      }
      const fresh = total - cached.length;
      // Keep a little room for the running sequences to grow; with none running, all of it.
      const idle = this.slots.every((s) => s === null);
      if (fresh + (idle ? 0 : headroom) > this.pool.available) {
        this.pool.release_all(cached);
        break;
      }
      this.pool.count_lookup(this.#shareable(seq), cached.length);
      this.waiting.shift();
      seq.blocks = [...cached, ...this.pool.allocate_n(fresh)!];
      seq.computed = cached.length * this.pool.block_size;
      if (seq.preemptions === 0 && seq.generated.length === 0) seq.cached_tokens = seq.computed;
      seq.slot = slot;
      seq.status = "prefill";
      seq.admitted = ++this.#admissions;
      this.slots[slot] = seq;
      out.push(seq);
      computes(seq);
    }
    return out;
  }

  /**
   * The next launch: prefill chunks within the budget, and the decoding sequences (those whose
   * final prompt chunk is in this launch included) with blocks for k more positions each. Returns
   * NeedsDrain when a sequence must slide, or the pool cannot grow the decoding sequences, and
   * `drained` is false: both need every in-flight token first.
   */
  plan(drained = false): Plan | NeedsDrain {
    const { context, steps_per_launch: K } = this.opts;
    const decoding = this.running.filter((s) => s.status === "decode" && !s.ended);
    if (decoding.some((s) => s.len + 1 > context)) {
      if (!drained) return { needs_drain: "slide" };
      for (const s of decoding) if (s.len + 1 > context) this.#slide(s);
    }
    const prefill = this.#prefill_chunks();
    const finals = new Set(prefill.filter((c) => c.final).map((c) => c.seq));
    // After this launch's prefill, a final chunk's sequence holds its whole target and one token in flight.
    const len = (s: Sequence) => finals.has(s) ? s.target.length : s.len;
    const produced = (s: Sequence) => finals.has(s) ? s.produced + 1 : s.produced;
    const active = this.running.filter((s) =>
      (s.status === "decode" || finals.has(s)) && !s.ended && produced(s) < s.req.max_new_tokens &&
      len(s) < context
    );
    const want = Math.max(0, ...active.map((s) => s.req.max_new_tokens - produced(s)));
    // While admitted prompts need more than one more prefill launch, one decode step per launch:
    // with K steps, prefill ran one chunk per K steps and the slots it was filling sat idle
    // (gpt2-xl on an H200: 2,048 prompt tokens per 8 decode steps of ~7 ms capped prefill near
    // 30k tokens/s). With one launch left K stays: a burst of arrivals at moderate load then costs
    // no one-step launches, whose one token waits for a whole chunk (inter-token latency's tail).
    const steps = this.#prefill_launches_left(prefill) > 1 ? 1 : K;
    // Fewer than K tokens wanted: the largest power of two that fits (a few step graphs, and a
    // tail of 7 tokens in 3 launches, not 7).
    const fits = (k: number) => k <= Math.max(1, want) && active.every((s) => len(s) + k <= context);
    let k = 1;
    if (fits(steps)) k = steps;
    else for (let p = 2; p < steps; p *= 2) if (fits(p)) k = p;
    if (!this.#grow(active, active.map((s) => len(s) + k))) {
      if (!drained) return { needs_drain: "preempt" };
      return this.#preempt_and_plan();
    }
    const on = new Set(active);
    const decode = active.length === 0
      ? null
      : { by_slot: this.slots.map((s) => (s && on.has(s) ? s : null)), k };
    return { prefill, decode };
  }

  /** Prefill launches still needed after `chunks` (the chunk budget and the sequence limit). */
  #prefill_launches_left(chunks: PrefillChunk[]): number {
    const { prefill_tokens, prefill_seqs } = this.opts;
    const in_launch = new Map(chunks.map((c) => [c.seq, c.n]));
    let tokens = 0, seqs = 0;
    for (const s of this.running) {
      if (s.status !== "prefill" || s.ended) continue;
      const left = s.target.length - s.computed - (in_launch.get(s) ?? 0);
      if (left > 0) tokens += left, seqs++;
    }
    return Math.max(Math.ceil(tokens / prefill_tokens), Math.ceil(seqs / prefill_seqs));
  }

  /** Allocates the blocks `seqs` need to hold `ends[i]` positions each; false (nothing taken) when the pool is short. */
  #grow(seqs: Sequence[], ends: number[]): boolean {
    const need = seqs.map((s, i) => Math.max(0, this.#blocks_for(ends[i]) - s.blocks.length));
    if (need.reduce((a, b) => a + b, 0) > this.pool.available) return false;
    seqs.forEach((s, i) => s.blocks.push(...this.pool.allocate_n(need[i])!));
    return true;
  }

  /** Preempts the latest admitted sequences until the rest can grow, then plans. */
  #preempt_and_plan(): Plan {
    while (true) {
      const victims = this.running.filter((s) => !s.ended).sort((a, b) => b.admitted - a.admitted);
      const decoding = victims.filter((s) => s.status === "decode");
      if (decoding.length <= 1 && victims.length <= 1) {
        throw new Error("internal: the KV pool cannot grow even one sequence (checked at construction)");
      }
      this.preempt(victims[0]);
      const plan = this.plan(true);
      if (!("needs_drain" in plan)) return plan;
    }
  }

  /** Frees a sequence's slot and blocks and queues it first, to recompute its whole history. */
  preempt(seq: Sequence): void {
    this.#release(seq);
    seq.status = "waiting";
    seq.preemptions++;
    this.preemptions++;
    seq.target = [...seq.prompt, ...seq.generated].slice(-this.opts.context);
    seq.keys = prefix_keys(seq.target, this.pool.block_size);
    seq.computed = 0;
    this.waiting.unshift(seq);
  }

  /** A sequence past the context recomputes its last `context` tokens (positions restart at 0). */
  #slide(seq: Sequence): void {
    this.pool.release_all(seq.blocks);
    seq.target = [...seq.prompt, ...seq.generated].slice(-this.opts.context);
    seq.keys = [];
    seq.blocks = this.pool.allocate_n(this.#blocks_for(seq.target.length)) ?? [];
    if (seq.blocks.length === 0) {
      throw new Error("internal: no blocks to slide a sequence (pool checked at construction)");
    }
    seq.computed = 0;
    seq.status = "prefill";
  }

  /** The prompt chunks of the next prefill launch, oldest admitted first. */
  #prefill_chunks(): PrefillChunk[] {
    const out: PrefillChunk[] = [];
    let budget = this.opts.prefill_tokens;
    const pending = this.running.filter((s) => s.status === "prefill" && !s.ended).sort((a, b) =>
      a.admitted - b.admitted
    );
    for (const seq of pending) {
      if (budget === 0 || out.length === this.opts.prefill_seqs) break;
      const n = Math.min(seq.target.length - seq.computed, budget);
      out.push({ seq, start: seq.computed, n, final: seq.computed + n === seq.target.length });
      budget -= n;
    }
    return out;
  }

  /** Marks a chunk computed (it is enqueued): registers its full prompt blocks in the prefix cache. */
  computed(c: PrefillChunk): void {
    const s = c.seq, bs = this.pool.block_size;
    s.computed += c.n;
    if (s.keys.length) {
      for (let i = Math.floor(c.start / bs); i < Math.floor(s.computed / bs); i++) {
        this.pool.register(s.blocks[i], s.target, s.keys, i);
      }
    }
    if (c.final) {
      s.status = "decode";
      s.len = s.target.length;
    }
  }

  /** Frees a finished or cancelled sequence's slot and blocks. */
  retire(seq: Sequence): void {
    if (seq.status === "waiting") {
      const i = this.waiting.indexOf(seq);
      if (i >= 0) this.waiting.splice(i, 1);
    } else this.#release(seq);
    seq.status = "finished";
  }

  #release(seq: Sequence): void {
    if (seq.slot >= 0 && this.slots[seq.slot] === seq) this.slots[seq.slot] = null;
    seq.slot = -1;
    this.pool.release_all(seq.blocks);
    seq.blocks = [];
  }
}
