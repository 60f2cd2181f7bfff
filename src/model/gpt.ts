/**
 * The GPT-2 / nanoGPT model, defined once over the Backend interface: weights on the backend and
 * the forward pass of one step (embed, n_layer blocks, final layernorm, LM head) as a sequence of
 * backend ops. The same code runs on the CPU and, captured into CUDA graphs, on the GPU. What a
 * step does with the logits (sampling, log-probabilities) and how it attends (which sequences,
 * which cache blocks) belong to the engine's step (src/engine/step.ts).
 * @module
 */
import type { Activation, Backend, Buf, KvLayout } from "../backend/backend.ts";
import { dtype_bytes, FUSED_LAYER_FIELDS, FUSED_MODEL_FIELDS } from "../backend/backend.ts";
import { address_table } from "../backend/buf.ts";
import type { ModelSource, TensorSource } from "./source.ts";
import { to_f32 } from "../backend/host_dtype.ts";
import { quantize_rows, transpose } from "./quantize.ts";
import { type GPTConfig, validate_config, weight_shapes } from "./config.ts";

/** Rows of the LM head and the logits are padded to a multiple of this. */
export const VOCAB_ALIGN = 64;

/** `vocab_size` rounded up to a multiple of VOCAB_ALIGN. */
export function padded_vocab(vocab_size: number): number {
  return Math.ceil(vocab_size / VOCAB_ALIGN) * VOCAB_ALIGN;
}

/** A linear layer: weight (out_features, in_features), optional bias, and its sizes. */
export interface Linear {
  /** Weight (out, in), in the backend's dtype, or int8 when `scale` is set. */
  w: Buf;
  /** (out) f32 per-row scales of an int8 weight, or null. */
  scale: Buf | null;
  /** Bias (out), or null when the layer has none. */
  b: Buf | null;
  /** out_features (N of the matmul). */
  out: number;
  /** in_features (K of the matmul). */
  in: number;
}

/** A layernorm's parameters. */
export interface Norm {
  /** (n_embd) scale. */
  weight: Buf;
  /** (n_embd) shift, or null when the model has no biases. */
  bias: Buf | null;
  /** Added to the variance (the config's layer_norm_eps). */
  eps: number;
}

/** One transformer block's weights, named as nanoGPT names them. */
export interface Block {
  /** Layernorm of attn's input (applied by its matmul). */
  ln_1: Norm;
  /** attn.c_attn: x -> q | k | v, (3C, C). */
  attn: Linear;
  /** attn.c_proj: attention output -> residual stream, (C, C). */
  proj: Linear;
  /** Layernorm of fc's input (applied by its matmul). */
  ln_2: Norm;
  /** mlp.c_fc: x -> hidden with GELU, (4C, C). */
  fc: Linear;
  /** mlp.c_proj: hidden -> residual stream, (C, 4C). */
  fc2: Linear;
}

/** Activation buffers a step writes, sized for `rows` token rows and `logit_rows` rows of logits. */
export interface Workspace {
  /** Token rows a step may compute at most. */
  rows: number;
  /** Rows of logits a step may compute at most. */
  logit_rows: number;
  /** Residual stream (rows, C). */
  x: Buf;
  /** q|k|v (rows, 3C). */
  qkv: Buf;
  /** Attention output (rows, C). */
  att: Buf;
  /** MLP hidden (rows, 4C). */
  fc: Buf;
  /** Gathered rows for the LM head (logit_rows, C). */
  last: Buf;
  /** f32 logits (logit_rows, vocab_padded): row r's first vocab_size values are its logits. */
  logits: Buf;
}

/** One step's input to the forward pass: which token rows, where, and how they attend. */
export interface StepInput {
  /** Token rows computed. */
  rows: number;
  /** (rows) int32 token ids. */
  tokens: Buf;
  /** (rows) int32 positions. */
  positions: Buf;
  /** Enqueues layer `layer`'s attention: `out` (rows, C) from `qkv` (rows, 3C), with its KV append. */
  attend(layer: number, out: Buf, qkv: Buf): void;
  /** The rows whose logits are wanted (int32 indices; null: the first logit_rows rows as they are). */
  logit_rows: { idx: Buf; n: number } | null;
  /**
   * A decode step (row b is slot b's next token, at position lengths[b]) that the backend may run
   * as one fused launch (Backend.decode_fused): the same attention as `attend` gets, in full.
   */
  decode?: FusedDecodeInput;
}

/** What a fused decode needs besides the model: the KV cache (as a table) and the slots. */
export interface FusedDecodeInput {
  /** The layers' KV pools as FUSED_KV_FIELDS rows (src/engine/device_state.ts). */
  kv_table: Buf;
  /** Whether the pools are int8 (with scales). */
  int8_kv: boolean;
  /** The pools' shape. */
  layout: KvLayout;
  /** (B, layout.max_blocks) int32 block tables of the slots. */
  block_table: Buf;
  /** (B) int32 new rows, 0 or 1. */
  n_new: Buf;
  /** A bound on any slot's length + 1. */
  max_len: number;
}

/**
 * How the transformer blocks' linear weights are stored: in the backend's dtype, or "int8"
 * (per-output-row scales, quantized at load time; the embeddings, layernorms, biases and the LM
 * head, tied to the token embedding, keep the backend's dtype).
 */
export type WeightFormat = "dtype" | "int8";

/** The weights `GPT.load` quantizes with `weights: "int8"`: the four linear layers of each block. */
const QUANTIZED = /^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$/;

/** How `linear` applies a layer. */
export interface LinearOptions {
  /** Layernorm the input rows first. */
  ln?: Norm;
  /** Activation after the bias (default "none"). */
  act?: Activation;
  /** out += result (the residual add) instead of out = result. */
  residual?: boolean;
  /** Write f32 whatever the backend's dtype (the logits). */
  out_f32?: boolean;
}

/** A GPT model whose weights live on a backend. */
export class GPT implements Disposable {
  /** Its hyperparameters. */
  readonly config: GPTConfig;
  /** Where its weights live. */
  readonly backend: Backend;
  /** Bytes of its weights on the backend. */
  readonly weight_bytes: number;
  /** How its blocks' linear weights are stored. */
  readonly weights: WeightFormat;
  /**
   * The vocabulary rounded up to a multiple of VOCAB_ALIGN: the rows of the LM head (wte or
   * lm_head, zero past vocab_size) and of the logits. GPT-2's 50257 rows leave every logits row
   * 4-byte aligned, which keeps cuBLASLt off its fast kernels: at batch 64..256 the LM head took
   * 3-4x longer on an H100 (docs/perf-notes.md).
   */
  readonly vocab_padded: number;
  #wte: Buf;
  #wpe: Buf;
  #blocks: Block[];
  #ln_f: Norm;
  #lm_head: Linear;
  #owned: Buf[];
  /** The blocks' weights as FUSED_LAYER_FIELDS rows, where the backend has a fused decode. */
  #layer_table: Buf | null = null;

  private constructor(backend: Backend, config: GPTConfig, bufs: Map<string, Buf>, weights: WeightFormat) {
    this.backend = backend;
    this.config = config;
    this.weights = weights;
    this.vocab_padded = padded_vocab(config.vocab_size);
    this.#owned = [...bufs.values()];
    this.weight_bytes = this.#owned.reduce((s, b) => s + b.bytes, 0);
    const get = (n: string) => {
      const b = bufs.get(n);
      if (!b) throw new Error(`internal: weight ${n} not loaded`);
      return b;
    };
    const C = config.n_embd, eps = config.layer_norm_eps;
    const norm = (p: string): Norm => ({
      weight: get(`${p}.weight`),
      bias: bufs.get(`${p}.bias`) ?? null,
      eps,
    });
    const linear = (p: string, out: number, inp: number): Linear => ({
      w: get(`${p}.weight`),
      scale: bufs.get(`${p}.weight.scale`) ?? null,
      b: bufs.get(`${p}.bias`) ?? null,
      out,
      in: inp,
    });
    this.#wte = get("wte");
    this.#wpe = get("wpe");
    this.#blocks = Array.from({ length: config.n_layer }, (_, i) => ({
      ln_1: norm(`h.${i}.ln_1`),
      attn: linear(`h.${i}.attn.c_attn`, 3 * C, C),
      proj: linear(`h.${i}.attn.c_proj`, C, C),
      ln_2: norm(`h.${i}.ln_2`),
      fc: linear(`h.${i}.mlp.c_fc`, 4 * C, C),
      fc2: linear(`h.${i}.mlp.c_proj`, C, 4 * C),
    }));
    this.#ln_f = norm("ln_f");
    this.#lm_head = {
      w: bufs.get("lm_head") ?? this.#wte,
      scale: null,
      b: null,
      out: this.vocab_padded,
      in: C,
    };
    if (backend.decode_fused) {
      const model: Record<(typeof FUSED_MODEL_FIELDS)[number], Buf | null> = {
        wte: this.#wte,
        wpe: this.#wpe,
        "ln_f.weight": this.#ln_f.weight,
        "ln_f.bias": this.#ln_f.bias,
        lm_head: this.#lm_head.w,
      };
      const last = FUSED_LAYER_FIELDS.map((_, i) =>
        i < FUSED_MODEL_FIELDS.length ? model[FUSED_MODEL_FIELDS[i]] : null
      );
      this.#layer_table = address_table(
        backend,
        [...this.#blocks.map(GPT.#fused_row), last],
        "fused decode layer table",
      );
    }
  }

  /** A block's weights in FUSED_LAYER_FIELDS order. */
  static #fused_row(b: Block): (Buf | null)[] {
    const by_field: Record<(typeof FUSED_LAYER_FIELDS)[number], Buf | null> = {
      "ln_1.weight": b.ln_1.weight,
      "ln_1.bias": b.ln_1.bias,
      "attn.w": b.attn.w,
      "attn.scale": b.attn.scale,
      "attn.b": b.attn.b,
      "proj.w": b.proj.w,
      "proj.scale": b.proj.scale,
      "proj.b": b.proj.b,
      "ln_2.weight": b.ln_2.weight,
      "ln_2.bias": b.ln_2.bias,
      "fc.w": b.fc.w,
      "fc.scale": b.fc.scale,
      "fc.b": b.fc.b,
      "fc2.w": b.fc2.w,
      "fc2.scale": b.fc2.scale,
      "fc2.b": b.fc2.b,
    };
    return FUSED_LAYER_FIELDS.map((f) => by_field[f]);
  }

  /**
   * Loads a model's weights onto `backend`, tensor by tensor (each is read, converted and written
   * before the next is read), the blocks' linear weights quantized to int8 with `weights: "int8"`.
   * On any failure everything allocated so far is freed.
   */
  static async load(
    backend: Backend,
    source: ModelSource,
    opts: { weights?: WeightFormat } = {},
  ): Promise<GPT> {
    const weights = opts.weights ?? "dtype";
    if (weights !== "dtype" && weights !== "int8") {
      throw new RangeError(`weights must be "dtype" or "int8", got ${JSON.stringify(weights)}`);
    }
    const config = source.config;
    validate_config(config, `config of ${source.origin}`);
    const shapes = weight_shapes(config);
    if (source.tensors.get("lm_head")) shapes.set("lm_head", [config.vocab_size, config.n_embd]);
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
        if (weights === "int8" && QUANTIZED.test(name)) {
          const { q, scale } = GPT.#quantize(t, bytes, shape[0], shape[1]);
          const qb = backend.alloc(q.byteLength, `weight ${name} (int8)`);
          bufs.set(name, qb);
          backend.write(qb, q);
          const sb = backend.alloc(scale.byteLength, `weight ${name} (int8 scales)`);
          bufs.set(`${name}.scale`, sb);
          backend.write(sb, scale);
          continue;
        }
        const es = dtype_bytes(backend.dtype);
        const pad = name === "wte" || name === "lm_head"
          ? (padded_vocab(config.vocab_size) - shape[0]) * shape[1]
          : 0;
        const buf = backend.alloc((n + pad) * es, `weight ${name}`);
        bufs.set(name, buf);
        backend.write_weight(buf, bytes, t.dtype, n, t.stored_transposed);
        if (pad > 0) backend.write(buf, new Uint8Array(pad * es), n * es);
      }
      return new GPT(backend, config, bufs, weights);
    } catch (e) {
      for (const b of bufs.values()) backend.free(b);
      throw e;
    }
  }

  /** A (rows, cols) linear weight's int8 values and row scales, from its stored bytes. */
  static #quantize(t: TensorSource, bytes: Uint8Array, rows: number, cols: number) {
    const f = to_f32(bytes, t.dtype, rows * cols);
    return quantize_rows(t.stored_transposed ? transpose(f, rows, cols) : f, rows, cols);
  }

  /** Bytes of activations a workspace for `rows` token rows and `logit_rows` logit rows needs. */
  workspace_bytes(rows: number, logit_rows: number): number {
    const C = this.config.n_embd, e = dtype_bytes(this.backend.dtype);
    return rows * 9 * C * e + logit_rows * (C * e + this.vocab_padded * 4);
  }

  /** Allocates (zeroed) activation buffers for steps of up to `rows` token rows and `logit_rows` logit rows. */
  alloc_workspace(rows: number, logit_rows: number): Workspace {
    const be = this.backend, C = this.config.n_embd, e = dtype_bytes(be.dtype);
    const made: Buf[] = [];
    const a = (bytes: number, label: string) => {
      const b = be.alloc(bytes, label);
      made.push(b);
      be.write(b, new Uint8Array(bytes));
      return b;
    };
    try {
      return {
        rows,
        logit_rows,
        x: a(rows * C * e, "activations x"),
        qkv: a(rows * 3 * C * e, "activations qkv"),
        att: a(rows * C * e, "activations att"),
        fc: a(rows * 4 * C * e, "activations fc"),
        last: a(logit_rows * C * e, "activations last"),
        logits: a(logit_rows * this.vocab_padded * 4, "logits"),
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

  /** out = layer(x) over `rows` rows: N and K come from the layer's weights. */
  linear(out: Buf, x: Buf, layer: Linear, rows: number, o: LinearOptions = {}): void {
    this.backend.matmul({
      out,
      x,
      w: layer.w,
      w_scale: layer.scale,
      bias: layer.b,
      M: rows,
      N: layer.out,
      K: layer.in,
      act: o.act ?? "none",
      accumulate: o.residual ?? false,
      out_f32: o.out_f32,
      ln: o.ln,
    });
  }

  /** Enqueues the transformer over the step's rows: ws.x holds the final hidden states after it. */
  hidden(ws: Workspace, s: StepInput): void {
    const be = this.backend, c = this.config, x = ws.x, rows = s.rows;
    if (rows > ws.rows) {
      throw new RangeError(`a step of ${rows} rows does not fit the workspace (${ws.rows} rows)`);
    }
    be.embed({
      out: x,
      tokens: s.tokens,
      positions: s.positions,
      wte: this.#wte,
      wpe: this.#wpe,
      rows,
      C: c.n_embd,
      max_pos: c.block_size,
    });
    this.#blocks.forEach((b, l) => {
      this.linear(ws.qkv, x, b.attn, rows, { ln: b.ln_1 }); // qkv = c_attn(ln_1(x))
      s.attend(l, ws.att, ws.qkv);
      this.linear(x, ws.att, b.proj, rows, { residual: true }); // x = x + c_proj(attn)
      this.linear(ws.fc, x, b.fc, rows, { ln: b.ln_2, act: c.activation }); // gelu(c_fc(ln_2(x)))
      this.linear(x, ws.fc, b.fc2, rows, { residual: true }); // x = x + c_proj(...)
    });
  }

  /** Enqueues logits (f32, rows of vocab_padded) = lm_head(ln_f(x)) for `rows` rows of `x`. */
  logits(out: Buf, x: Buf, rows: number): void {
    this.linear(out, x, this.#lm_head, rows, { ln: this.#ln_f, out_f32: true });
  }

  /**
   * A decode step in one launch where the backend can (Backend.decode_fused): logits of every row
   * into ws.logits. Returns false, having enqueued nothing, where it cannot.
   */
  #decode_fused(ws: Workspace, s: StepInput): boolean {
    const d = s.decode, be = this.backend, c = this.config;
    if (!d || !be.decode_fused || !this.#layer_table || s.logit_rows || s.rows > ws.rows) return false;
    return be.decode_fused({
      layers: this.#layer_table,
      kv: d.kv_table,
      n_layer: c.n_layer,
      int8_weights: this.weights === "int8",
      int8_kv: d.int8_kv,
      layout: d.layout,
      x: ws.x,
      qkv: ws.qkv,
      att: ws.att,
      hidden: ws.fc,
      logits: ws.logits,
      tokens: s.tokens,
      lengths: s.positions,
      n_new: d.n_new,
      block_table: d.block_table,
      B: s.rows,
      C: c.n_embd,
      vocab_padded: this.vocab_padded,
      max_pos: c.block_size,
      act: c.activation,
      eps: c.layer_norm_eps,
      max_len: d.max_len,
    });
  }

  /** One step: the transformer, then the logits of the wanted rows into ws.logits. */
  forward(ws: Workspace, s: StepInput): void {
    if (this.#decode_fused(ws, s)) return;
    this.hidden(ws, s);
    const n = s.logit_rows?.n ?? Math.min(s.rows, ws.logit_rows);
    if (n > ws.logit_rows) {
      throw new RangeError(`${n} logit rows do not fit the workspace (${ws.logit_rows})`);
    }
    if (s.logit_rows) {
      this.backend.gather_rows({ out: ws.last, x: ws.x, idx: s.logit_rows.idx, n, C: this.config.n_embd });
    }
    this.logits(ws.logits, s.logit_rows ? ws.last : ws.x, n);
  }

  /** Frees the weights. */
  [Symbol.dispose](): void {
    for (const b of this.#owned) this.backend.free(b);
    this.#owned = [];
    if (this.#layer_table) this.backend.free(this.#layer_table);
    this.#layer_table = null;
  }
}
