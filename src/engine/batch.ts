/**
 * The device-side state of a batch, allocated once for (batch, max_T): the KV cache, the
 * per-sequence lengths / new-token counts / sampling parameters, the prompt token slots and the
 * activation workspace. Everything a recorded step points at lives here, so steps (CUDA graphs)
 * stay valid until the batch is disposed.
 * @module
 */
import type { Buf } from "../backend/backend.ts";
import { dtype_bytes } from "../backend/backend.ts";
import { sub_buf } from "../backend/buf.ts";
import type { GPT, LayerCache, StepState, Workspace } from "../model/gpt.ts";

/** Device state for up to `batch` sequences of up to `max_T` tokens. */
export class DeviceBatch implements Disposable {
  readonly batch: number;
  readonly max_T: number;
  /** Token slots per sequence in `tokens` (the largest prefill T). */
  readonly slots: number;
  readonly state: StepState;
  readonly cache: LayerCache[];
  readonly ws: Workspace;
  /** Prompt tokens (batch, slots) int32. */
  readonly tokens: Buf;
  /**
   * Sampled tokens of the last `log_steps` decode steps, (log_steps, batch) int32, oldest first. The
   * last row is state.next_token (every step's input and output); a launch of k decode steps logs
   * step i's tokens into row log_steps - k + i.
   */
  readonly token_log: Buf;
  /** Rows of token_log: the most decode steps one launch can run. */
  readonly log_steps: number;
  /** Bytes of the KV cache. */
  readonly kv_bytes: number;
  #model: GPT;
  #owned: Buf[] = [];
  /** Bytes of one sequence's K (or V) cache in one layer. */
  #seq_cache_bytes: number;

  /** Allocates everything up front; on failure frees what it took and rethrows. */
  constructor(model: GPT, batch: number, max_T: number, max_rows: number, log_steps = 1) {
    const c = model.config, be = model.backend;
    if (!(batch >= 1 && max_T >= 1 && max_T <= c.block_size)) {
      throw new RangeError(
        `batch ${batch} x max_T ${max_T}: need batch >= 1 and 1 <= max_T <= ${c.block_size}`,
      );
    }
    if (!(Number.isInteger(log_steps) && log_steps >= 1)) {
      throw new RangeError(`log_steps must be a positive integer, got ${log_steps}`);
    }
    this.log_steps = log_steps;
    this.#model = model;
    this.batch = batch;
    this.max_T = max_T;
    this.slots = max_T;
    const a = (bytes: number, label: string) => {
      const b = be.alloc(bytes, label);
      this.#owned.push(b);
      return b;
    };
    const D = c.n_embd / c.n_head;
    this.#seq_cache_bytes = c.n_head * max_T * D * dtype_bytes(be.dtype);
    const layer_bytes = batch * this.#seq_cache_bytes;
    this.kv_bytes = 2 * c.n_layer * layer_bytes;
    try {
      this.token_log = a(log_steps * batch * 4, "token log");
      // Rows an inactive sequence's sampler skips are still read by the next step's embed.
      be.write(this.token_log, new Int32Array(log_steps * batch));
      this.state = {
        lengths: a(batch * 4, "lengths"),
        n_new: a(batch * 4, "n_new"),
        temperature: a(batch * 4, "temperature"),
        top_k: a(batch * 4, "top_k"),
        top_p: a(batch * 4, "top_p"),
        seed: a(batch * 8, "seed"),
        next_token: sub_buf(this.token_log, (log_steps - 1) * batch * 4, batch * 4),
      };
      this.tokens = a(batch * this.slots * 4, "prompt tokens");
      this.cache = [];
      for (let l = 0; l < c.n_layer; l++) {
        this.cache.push({
          k: a(layer_bytes, `kv cache layer ${l} k`),
          v: a(layer_bytes, `kv cache layer ${l} v`),
        });
      }
      const rows = Math.max(batch, Math.min(max_rows, batch * max_T));
      this.ws = model.alloc_workspace(rows, batch);
    } catch (e) {
      this.#free_owned();
      throw e;
    }
  }

  /**
   * Views of sequences b0 .. b0+nb-1: their state, KV cache and prompt slots (T per sequence), for a
   * step over that group alone. Views are not owned: never free them.
   */
  group(b0: number, nb: number, T: number): { state: StepState; cache: LayerCache[]; tokens: Buf } {
    const s = this.state;
    const v4 = (buf: Buf) => sub_buf(buf, b0 * 4, nb * 4);
    const kv = this.#seq_cache_bytes;
    return {
      state: {
        lengths: v4(s.lengths),
        n_new: v4(s.n_new),
        temperature: v4(s.temperature),
        top_k: v4(s.top_k),
        top_p: v4(s.top_p),
        seed: sub_buf(s.seed, b0 * 8, nb * 8),
        next_token: v4(s.next_token),
      },
      cache: this.cache.map((l) => ({
        k: sub_buf(l.k, b0 * kv, nb * kv),
        v: sub_buf(l.v, b0 * kv, nb * kv),
      })),
      tokens: sub_buf(this.tokens, b0 * T * 4, nb * T * 4),
    };
  }

  #free_owned(): void {
    for (const b of this.#owned) this.#model.backend.free(b);
    this.#owned = [];
  }

  /** Frees every buffer of the batch. */
  [Symbol.dispose](): void {
    if (this.#owned.length === 0) return;
    this.#model.free_workspace(this.ws);
    this.#free_owned();
  }
}
