/**
 * Everything the engine keeps on the device, allocated once: the paged KV pools, the decode slots'
 * state (lengths, n_new, sampling parameters, block tables) with its host mirror, the token log
 * the decode loop writes, the prefill inputs, and the activation workspace. Recorded steps (CUDA
 * graphs) point into these buffers, so they stay valid until the state is disposed.
 * @module
 */
import type { Backend, Buf, DType, KvLayer, KvLayout } from "../backend/backend.ts";
import { dtype_bytes, FUSED_KV_FIELDS } from "../backend/backend.ts";
import { address_table, split_buf, split_bytes, sub_buf } from "../backend/buf.ts";
import type { GPT, Workspace } from "../model/gpt.ts";
import type { GPTConfig } from "../model/config.ts";
import { MAX_LOGPROBS } from "./request.ts";

/** A layer's pools in FUSED_KV_FIELDS order. */
function kv_row(kv: KvLayer): (Buf | undefined)[] {
  return FUSED_KV_FIELDS.map((f) => kv[f]);
}

/** Floats per row of logprob output: the chosen token's, then MAX_LOGPROBS (id, logprob) pairs. */
export const LOGPROB_WORDS = 1 + 2 * MAX_LOGPROBS;

/** Sizes of the device state. */
export interface DeviceStateOptions {
  /** Decode slots. */
  slots: number;
  /** KV blocks in the pool and positions per block. */
  num_blocks: number;
  block_size: number;
  /** Token rows of one prefill launch, and sequences in it. */
  prefill_tokens: number;
  prefill_seqs: number;
  /** Rows of the token log: the most decode steps one launch runs. */
  log_steps: number;
  /** KV storage: the backend's dtype, or int8 with one f32 scale per row of head_dim values. */
  kv_dtype: KvDtype;
}

/** How the KV cache is stored (EngineOptions.kv_dtype). */
export type KvDtype = "dtype" | "int8";

/** Bytes one KV block takes over all layers (K and V, and the int8 cache's scales). */
export function kv_block_bytes(c: GPTConfig, block_size: number, dtype: DType, kv_dtype: KvDtype): number {
  const values = 2 * c.n_layer * block_size * c.n_embd * (kv_dtype === "int8" ? 1 : dtype_bytes(dtype));
  return values + (kv_dtype === "int8" ? 2 * c.n_layer * block_size * c.n_head * 4 : 0);
}

/** The decode slots' per-sequence arrays (device views) and their host mirror, written in one copy. */
export interface SlotArrays {
  lengths: Buf;
  n_new: Buf;
  temperature: Buf;
  top_k: Buf;
  top_p: Buf;
  /** (slots, 2) u32. */
  seed: Buf;
  /** (slots, max_blocks) int32. */
  block_table: Buf;
}

/** A prefill launch's inputs (device views of one buffer, written in one copy) and outputs. */
export interface PrefillArrays {
  tokens: Buf;
  positions: Buf;
  row_seq: Buf;
  /** (rows) the next prompt token of each row, for prompt log-probabilities (-1: none). */
  targets: Buf;
  seq_start: Buf;
  last_row: Buf;
  lengths: Buf;
  n_new: Buf;
  /** (seqs) the decode slot that takes each sequence's sampled token (-1: not its final chunk). */
  scatter: Buf;
  temperature: Buf;
  top_k: Buf;
  top_p: Buf;
  seed: Buf;
  block_table: Buf;
}

/** Word sizes of the slot arrays for `slots` slots and `mb` blocks per table row. */
function slot_words(slots: number, mb: number) {
  return {
    lengths: slots,
    n_new: slots,
    temperature: slots,
    top_k: slots,
    top_p: slots,
    seed: 2 * slots,
    block_table: slots * mb,
  };
}

function prefill_words(rows: number, seqs: number, mb: number) {
  return {
    tokens: rows,
    positions: rows,
    row_seq: rows,
    targets: rows,
    seq_start: seqs + 1,
    last_row: seqs,
    lengths: seqs,
    n_new: seqs,
    scatter: seqs,
    temperature: seqs,
    top_k: seqs,
    top_p: seqs,
    seed: 2 * seqs,
    block_table: seqs * mb,
  };
}

/** Host views over one ArrayBuffer laid out as split_buf lays out the device buffer (4-byte words). */
export class HostArrays<K extends string> {
  /** The whole buffer. */
  readonly bytes: Uint8Array;
  /** int32 views by name. */
  readonly i32: Record<K, Int32Array>;
  /** f32 views by name (same memory). */
  readonly f32: Record<K, Float32Array>;
  /** u32 views by name (same memory). */
  readonly u32: Record<K, Uint32Array>;

  constructor(words: Record<K, number>) {
    this.bytes = new Uint8Array(split_bytes(scale(words, 4), 16));
    this.i32 = {} as Record<K, Int32Array>;
    this.f32 = {} as Record<K, Float32Array>;
    this.u32 = {} as Record<K, Uint32Array>;
    let off = 0;
    for (const k of Object.keys(words) as K[]) {
      off = Math.ceil(off / 16) * 16;
      this.i32[k] = new Int32Array(this.bytes.buffer, off, words[k]);
      this.f32[k] = new Float32Array(this.bytes.buffer, off, words[k]);
      this.u32[k] = new Uint32Array(this.bytes.buffer, off, words[k]);
      off += words[k] * 4;
    }
  }
}

function scale<K extends string>(words: Record<K, number>, by: number): Record<K, number> {
  return Object.fromEntries(Object.entries(words).map(([k, v]) => [k, (v as number) * by])) as Record<
    K,
    number
  >;
}

/** The engine's device buffers. */
export class DeviceState implements Disposable {
  /** Its sizes. */
  readonly opts: DeviceStateOptions;
  /** The KV pools' shape. */
  readonly layout: KvLayout;
  /** Per layer K and V pools. */
  readonly kv: KvLayer[];
  /** The layers' pools as FUSED_KV_FIELDS rows, for a backend with a fused decode (else null). */
  readonly kv_table: Buf | null = null;
  /** Bytes of the KV pools. */
  readonly kv_bytes: number;
  /** Decode slot arrays (device views of `slot_buf`). */
  readonly slot: SlotArrays;
  /** Their host mirror: written whole before each decode launch that changed it. */
  readonly slot_host: HostArrays<keyof SlotArrays>;
  /**
   * Sampled tokens of the last `log_steps` decode steps, (log_steps, slots) int32, oldest first. The
   * last row is `next_token` (every decode step's input and output); a launch of k steps logs step
   * i's tokens into row log_steps - k + i.
   */
  readonly token_log: Buf;
  /** The last row of token_log. */
  readonly next_token: Buf;
  /** Log-probabilities of the last `log_steps` decode steps, (log_steps, slots, LOGPROB_WORDS) f32. */
  readonly lp_log: Buf;
  /** The last row of lp_log: the decode step's logprobs output. */
  readonly lp: Buf;
  /** Prefill inputs (views of one buffer) and their host staging. */
  readonly pre: PrefillArrays;
  readonly pre_host: HostArrays<keyof PrefillArrays>;
  /** The prefill's sampled tokens (prefill_seqs int32) and their logprobs. */
  readonly pre_next: Buf;
  readonly pre_lp: Buf;
  /** Prompt logprobs of every prefill row, (prefill_tokens, LOGPROB_WORDS) f32. */
  readonly prompt_lp: Buf;
  /** Activations. */
  readonly ws: Workspace;
  #be: Backend;
  #model: GPT;
  #owned: Buf[] = [];
  #slot_dev: Buf;
  #pre_dev: Buf;

  /** Allocates everything; on failure frees what it took and rethrows. */
  constructor(model: GPT, opts: DeviceStateOptions) {
    const c = model.config, be = model.backend;
    this.#be = be;
    this.#model = model;
    this.opts = opts;
    const max_blocks = Math.ceil(c.block_size / opts.block_size);
    this.layout = {
      num_blocks: opts.num_blocks,
      block_size: opts.block_size,
      n_head: c.n_head,
      head_dim: c.n_embd / c.n_head,
      max_blocks,
    };
    const int8 = opts.kv_dtype === "int8";
    const pool_bytes = opts.num_blocks * opts.block_size * c.n_embd * (int8 ? 1 : dtype_bytes(be.dtype));
    const scale_bytes = int8 ? opts.num_blocks * opts.block_size * c.n_head * 4 : 0;
    this.kv_bytes = opts.num_blocks * kv_block_bytes(c, opts.block_size, be.dtype, opts.kv_dtype);
    const a = (bytes: number, label: string) => {
      const b = be.alloc(bytes, label);
      this.#owned.push(b);
      return b;
    };
    try {
      this.kv = [];
      for (let l = 0; l < c.n_layer; l++) {
        const layer: KvLayer = {
          k: a(pool_bytes, `kv pool layer ${l} k`),
          v: a(pool_bytes, `kv pool layer ${l} v`),
        };
        if (int8) {
          layer.k_scale = a(scale_bytes, `kv scales layer ${l} k`);
          layer.v_scale = a(scale_bytes, `kv scales layer ${l} v`);
        }
        this.kv.push(layer);
      }
      if (be.decode_fused) {
        this.kv_table = address_table(be, this.kv.map(kv_row), "fused decode kv table");
        this.#owned.push(this.kv_table);
      }
      const sw = slot_words(opts.slots, max_blocks);
      this.slot_host = new HostArrays(sw);
      this.#slot_dev = a(this.slot_host.bytes.length, "decode slots");
      this.slot = split_buf(this.#slot_dev, scale(sw, 4));
      be.write(this.#slot_dev, this.slot_host.bytes);
      const S = opts.slots, L = opts.log_steps;
      this.token_log = a(L * S * 4, "token log");
      // Rows an inactive slot's sampler skips are still read by the next step's embed.
      be.write(this.token_log, new Int32Array(L * S));
      this.next_token = sub_buf(this.token_log, (L - 1) * S * 4, S * 4, "next token");
      this.lp_log = a(L * S * LOGPROB_WORDS * 4, "logprob log");
      this.lp = sub_buf(
        this.lp_log,
        (L - 1) * S * LOGPROB_WORDS * 4,
        S * LOGPROB_WORDS * 4,
        "decode logprobs",
      );
      const pw = prefill_words(opts.prefill_tokens, opts.prefill_seqs, max_blocks);
      this.pre_host = new HostArrays(pw);
      this.#pre_dev = a(this.pre_host.bytes.length, "prefill inputs");
      this.pre = split_buf(this.#pre_dev, scale(pw, 4));
      be.write(this.#pre_dev, this.pre_host.bytes);
      this.pre_next = a(opts.prefill_seqs * 4, "prefill tokens");
      be.write(this.pre_next, new Int32Array(opts.prefill_seqs));
      this.pre_lp = a(opts.prefill_seqs * LOGPROB_WORDS * 4, "prefill logprobs");
      this.prompt_lp = a(opts.prefill_tokens * LOGPROB_WORDS * 4, "prompt logprobs");
      // Logit rows: the decode slots, the prefill's final rows, and the chunk in which prompt
      // logprobs (scoring, eval) run the LM head and log-softmax over a launch's rows. At 16 rows
      // (eval's batch) that was a 16-row GEMM over the whole LM head per 16 rows: gpt2 scored 184k
      // tokens/s on an H200. 1,024 rows of gpt2 logits are 206 MB; the CPU keeps small chunks.
      const score_rows = Math.min(opts.prefill_tokens, be.kind === "cuda" ? 1024 : 64);
      this.ws = model.alloc_workspace(
        Math.max(opts.slots, opts.prefill_tokens),
        Math.max(opts.slots, opts.prefill_seqs, score_rows),
      );
    } catch (e) {
      this.#free_owned();
      throw e;
    }
  }

  /** Writes the slot arrays' host mirror to the device (stream-ordered after enqueued work). */
  write_slots(): void {
    this.#be.write(this.#slot_dev, this.slot_host.bytes);
  }

  /** Writes the prefill inputs' host staging to the device. */
  write_prefill(): void {
    this.#be.write(this.#pre_dev, this.pre_host.bytes);
  }

  #free_owned(): void {
    for (const b of this.#owned) this.#be.free(b);
    this.#owned = [];
  }

  /** Frees every buffer. */
  [Symbol.dispose](): void {
    if (this.#owned.length === 0) return;
    this.#model.free_workspace(this.ws);
    this.#free_owned();
  }
}
