/**
 * The GPT-2 / nanoGPT model, defined once over the Backend interface: weights on the backend and
 * the forward pass of one step (embed, n_layer blocks, final layernorm, LM head, sampling) as a
 * sequence of backend ops. The same code runs on the CPU and, captured into CUDA graphs, on the GPU.
 * @module
 */
import type { Backend, Buf } from "../backend/backend.ts";
import { dtype_bytes } from "../backend/backend.ts";
import type { ModelSource } from "./source.ts";
import { type GPTConfig, validate_config, weight_shapes } from "./config.ts";

/** Rows of the LM head and the logits are padded to a multiple of this. */
export const VOCAB_ALIGN = 64;

/** `vocab_size` rounded up to a multiple of VOCAB_ALIGN. */
export function padded_vocab(vocab_size: number): number {
  return Math.ceil(vocab_size / VOCAB_ALIGN) * VOCAB_ALIGN;
}

/** The device buffers of one transformer block. */
interface BlockWeights {
  ln_1_w: Buf;
  ln_1_b: Buf | null;
  attn_w: Buf;
  attn_b: Buf | null;
  proj_w: Buf;
  proj_b: Buf | null;
  ln_2_w: Buf;
  ln_2_b: Buf | null;
  fc_w: Buf;
  fc_b: Buf | null;
  fc2_w: Buf;
  fc2_b: Buf | null;
}

/** Activation buffers a step writes, sized for `rows` = B*T token slots and `batch` sequences. */
export interface Workspace {
  rows: number;
  batch: number;
  /** Residual stream (rows, C). */
  x: Buf;
  /** q|k|v (rows, 3C). */
  qkv: Buf;
  /** Attention output (rows, C). */
  att: Buf;
  /** MLP hidden (rows, 4C). */
  fc: Buf;
  /** Last valid row of each sequence (batch, C). */
  last: Buf;
  /** f32 logits (batch, vocab_padded): row b's first vocab_size values are its logits. */
  logits: Buf;
}

/** Per-sequence device state of a batch (all int32 unless said). */
export interface StepState {
  /** Tokens already in the KV cache, per sequence (B). */
  lengths: Buf;
  /** New tokens this step, per sequence (B). */
  n_new: Buf;
  /** Sampling parameters per sequence: temperature f32, top_k i32, top_p f32, seed u32 pairs. */
  temperature: Buf;
  top_k: Buf;
  top_p: Buf;
  seed: Buf;
  /** The sampled token of each sequence (B): the decode step's input. */
  next_token: Buf;
}

/** The KV cache of one layer: (B, n_head, max_T, head_dim) each. */
export interface LayerCache {
  k: Buf;
  v: Buf;
}

/** A GPT model whose weights live on a backend. */
export class GPT implements Disposable {
  readonly config: GPTConfig;
  readonly backend: Backend;
  readonly weight_bytes: number;
  /**
   * The vocabulary rounded up to a multiple of VOCAB_ALIGN: the rows of the LM head (wte or
   * lm_head, zero past vocab_size) and of the logits. GPT-2's 50257 rows leave every logits row
   * 4-byte aligned, which keeps cuBLASLt off its fast kernels: at batch 64..256 the LM head took
   * 3-4x longer on an H100 (docs/perf-notes.md).
   */
  readonly vocab_padded: number;
  #wte: Buf;
  #wpe: Buf;
  #blocks: BlockWeights[];
  #ln_f_w: Buf;
  #ln_f_b: Buf | null;
  #lm_head: Buf | null;
  #owned: Buf[];

  private constructor(backend: Backend, config: GPTConfig, bufs: Map<string, Buf>) {
    this.backend = backend;
    this.config = config;
    this.vocab_padded = padded_vocab(config.vocab_size);
    this.#owned = [...bufs.values()];
    this.weight_bytes = this.#owned.reduce((s, b) => s + b.bytes, 0);
    const get = (n: string) => {
      const b = bufs.get(n);
      if (!b) throw new Error(`internal: weight ${n} not loaded`);
      return b;
    };
    const opt = (n: string) => bufs.get(n) ?? null;
    this.#wte = get("wte");
    this.#wpe = get("wpe");
    this.#blocks = [];
    for (let i = 0; i < config.n_layer; i++) {
      const p = `h.${i}.`;
      this.#blocks.push({
        ln_1_w: get(p + "ln_1.weight"),
        ln_1_b: opt(p + "ln_1.bias"),
        attn_w: get(p + "attn.c_attn.weight"),
        attn_b: opt(p + "attn.c_attn.bias"),
        proj_w: get(p + "attn.c_proj.weight"),
        proj_b: opt(p + "attn.c_proj.bias"),
        ln_2_w: get(p + "ln_2.weight"),
        ln_2_b: opt(p + "ln_2.bias"),
        fc_w: get(p + "mlp.c_fc.weight"),
        fc_b: opt(p + "mlp.c_fc.bias"),
        fc2_w: get(p + "mlp.c_proj.weight"),
        fc2_b: opt(p + "mlp.c_proj.bias"),
      });
    }
    this.#ln_f_w = get("ln_f.weight");
    this.#ln_f_b = opt("ln_f.bias");
    this.#lm_head = opt("lm_head");
  }

  /**
   * Loads a model's weights onto `backend`, tensor by tensor (each is read, converted and written
   * before the next is read). On any failure everything allocated so far is freed.
   */
  static async load(backend: Backend, source: ModelSource): Promise<GPT> {
    const config = source.config;
    validate_config(config, `config of ${source.origin}`);
    const shapes = weight_shapes(config);
    const lm = source.tensors.get("lm_head");
    if (lm) shapes.set("lm_head", [config.vocab_size, config.n_embd]);
    const bufs = new Map<string, Buf>();
    try {
      for (const [name, shape] of shapes) {
        const t = source.tensors.get(name);
        if (!t) throw new Error(`${source.origin}: missing tensor ${name} (expected shape [${shape}])`);
        if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
          throw new Error(`${source.origin}: tensor ${name} has shape [${t.shape}], expected [${shape}]`);
        }
        const n = shape.reduce((a, b) => a * b, 1);
        const bytes = await t.read();
        if (bytes.byteLength !== n * dtype_bytes(t.dtype)) {
          throw new Error(
            `${source.origin}: tensor ${name} holds ${bytes.byteLength} bytes, expected ${
              n * dtype_bytes(t.dtype)
            } for [${shape}] ${t.dtype}`,
          );
        }
        // The LM head's rows (wte when tied) are padded with zeros to the padded vocabulary.
        const es = dtype_bytes(backend.dtype);
        const pad = name === "wte" || name === "lm_head"
          ? (padded_vocab(config.vocab_size) - shape[0]) * shape[1]
          : 0;
        const buf = backend.alloc((n + pad) * es, `weight ${name}`);
        bufs.set(name, buf);
        backend.write_weight(buf, bytes, t.dtype, n, t.stored_transposed);
        if (pad > 0) backend.write(buf, new Uint8Array(pad * es), n * es);
      }
      return new GPT(backend, config, bufs);
    } catch (e) {
      for (const b of bufs.values()) backend.free(b);
      throw e;
    }
  }

  /** Bytes of activations a workspace for `rows` token slots and `batch` sequences needs. */
  workspace_bytes(rows: number, batch: number): number {
    const c = this.config, e = dtype_bytes(this.backend.dtype);
    return rows * c.n_embd * e * 2 + rows * 3 * c.n_embd * e + rows * 4 * c.n_embd * e +
      batch * c.n_embd * e + batch * this.vocab_padded * 4;
  }

  /** Allocates the activation buffers for steps of up to `rows` token slots and `batch` sequences. */
  alloc_workspace(rows: number, batch: number): Workspace {
    const be = this.backend, c = this.config, e = dtype_bytes(be.dtype);
    const made: Buf[] = [];
    const a = (bytes: number, label: string) => {
      const b = be.alloc(bytes, label);
      made.push(b);
      return b;
    };
    try {
      return {
        rows,
        batch,
        x: a(rows * c.n_embd * e, "activations x"),
        qkv: a(rows * 3 * c.n_embd * e, "activations qkv"),
        att: a(rows * c.n_embd * e, "activations att"),
        fc: a(rows * 4 * c.n_embd * e, "activations fc"),
        last: a(batch * c.n_embd * e, "activations last"),
        logits: a(batch * this.vocab_padded * 4, "logits"),
      };
    } catch (err) {
      for (const b of made) be.free(b);
      throw err;
    }
  }

  /** Frees a workspace from alloc_workspace. */
  free_workspace(ws: Workspace): void {
    for (const b of [ws.x, ws.qkv, ws.att, ws.fc, ws.last, ws.logits]) this.backend.free(b);
  }

  /**
   * Enqueues one step for B sequences of T token slots: the transformer over `tokens` (B*T int32)
   * at positions lengths[b] + t, the KV cache append, logits of each sequence's last valid slot
   * into ws.logits, sampling into state.next_token (unless `sample` is false), and
   * lengths += n_new.
   */
  forward(
    ws: Workspace,
    st: StepState,
    cache: LayerCache[],
    tokens: Buf,
    B: number,
    T: number,
    max_T: number,
    sample = true,
  ): void {
    const be = this.backend, c = this.config;
    const C = c.n_embd, rows = B * T, eps = c.layer_norm_eps;
    if (rows > ws.rows || B > ws.batch) {
      throw new Error(
        `step of ${B}x${T} does not fit the workspace (${ws.batch} sequences, ${ws.rows} rows)`,
      );
    }
    if (cache.length !== c.n_layer) {
      throw new Error(`KV cache has ${cache.length} layers, model ${c.n_layer}`);
    }
    be.embed({
      out: ws.x,
      tokens,
      lengths: st.lengths,
      wte: this.#wte,
      wpe: this.#wpe,
      B,
      T,
      C,
      max_pos: c.block_size,
    });
    for (let l = 0; l < c.n_layer; l++) {
      const w = this.#blocks[l];
      const ln_1 = { weight: w.ln_1_w, bias: w.ln_1_b, eps };
      const ln_2 = { weight: w.ln_2_w, bias: w.ln_2_b, eps };
      // qkv = ln_1(x) @ W_attn^T + b
      be.matmul({
        out: ws.qkv,
        x: ws.x,
        ln: ln_1,
        w: w.attn_w,
        bias: w.attn_b,
        M: rows,
        N: 3 * C,
        K: C,
        act: "none",
        accumulate: false,
      });
      be.attention({
        out: ws.att,
        qkv: ws.qkv,
        k_cache: cache[l].k,
        v_cache: cache[l].v,
        lengths: st.lengths,
        n_new: st.n_new,
        B,
        T,
        n_head: c.n_head,
        head_dim: C / c.n_head,
        max_T,
      });
      // x += att @ W_proj^T + b
      be.matmul({
        out: ws.x,
        x: ws.att,
        w: w.proj_w,
        bias: w.proj_b,
        M: rows,
        N: C,
        K: C,
        act: "none",
        accumulate: true,
      });
      // x += gelu(ln_2(x) @ W_fc^T + b) @ W_fc2^T + b
      be.matmul({
        out: ws.fc,
        x: ws.x,
        ln: ln_2,
        w: w.fc_w,
        bias: w.fc_b,
        M: rows,
        N: 4 * C,
        K: C,
        act: c.activation,
        accumulate: false,
      });
      be.matmul({
        out: ws.x,
        x: ws.fc,
        w: w.fc2_w,
        bias: w.fc2_b,
        M: rows,
        N: C,
        K: 4 * C,
        act: "none",
        accumulate: true,
      });
    }
    let last = ws.x;
    if (T > 1) {
      be.gather_last({ out: ws.last, x: ws.x, n_new: st.n_new, B, T, C });
      last = ws.last;
    }
    // logits = ln_f(last) @ W_lm^T, in f32
    be.matmul({
      out: ws.logits,
      x: last,
      ln: { weight: this.#ln_f_w, bias: this.#ln_f_b, eps },
      w: this.#lm_head ?? this.#wte,
      bias: null,
      M: B,
      N: this.vocab_padded,
      K: C,
      act: "none",
      accumulate: false,
      out_f32: true,
    });
    if (sample) {
      be.sample({
        tokens_out: st.next_token,
        logits: ws.logits,
        lengths: st.lengths,
        n_new: st.n_new,
        temperature: st.temperature,
        top_k: st.top_k,
        top_p: st.top_p,
        seed: st.seed,
        B,
        V: c.vocab_size,
        ld: this.vocab_padded,
      });
    }
    be.advance({ lengths: st.lengths, n_new: st.n_new, B });
  }

  /** Frees the weights. */
  [Symbol.dispose](): void {
    for (const b of this.#owned) this.backend.free(b);
    this.#owned = [];
  }
}
