/**
 * The kernel launches of the CUDA backend's ops (semantics: src/backend/backend.ts). Each op
 * first makes sure its resources exist (module loaded, decode scratch big enough), which is all
 * it does in "prepare" mode (run_step's dry run); in "capture" mode those must already exist.
 * @module
 */
import {
  type AdvanceArgs,
  type AttentionArgs,
  type Buf,
  type DType,
  dtype_bytes,
  type EmbedArgs,
  type GatherLastArgs,
  type LayerNormArgs,
  type SampleArgs,
} from "../backend.ts";
import type { CudaContext, Dim3 } from "./driver.ts";
import { ArgPack } from "./launch_args.ts";
import { DECODE_SPLIT, type KernelName, MAX_HEAD_DIM } from "./kernels.ts";
import type { KernelModules } from "./modules.ts";

/** How ops behave: launch (direct), only get ready (prepare), or launch into a capture. */
export type OpMode = "direct" | "prepare" | "capture";

const PREFILL_ROWS = 16;

function round_up(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

function threads_for(C: number): number {
  return Math.max(32, Math.min(256, round_up(C, 32)));
}

/** Throws unless `buf` holds at least `bytes`. */
function need(op: string, name: string, buf: Buf, bytes: number): void {
  if (buf.bytes < bytes) {
    throw new Error(`${op}: ${name} "${buf.label}" holds ${buf.bytes} bytes, needs ${bytes}`);
  }
}

function positive(op: string, dims: Record<string, number>): void {
  for (const [k, v] of Object.entries(dims)) {
    if (!Number.isInteger(v) || v <= 0) throw new Error(`${op}: ${k} must be a positive integer, got ${v}`);
  }
}

/** Kernel launches of one backend. */
export class KernelOps {
  /** Set by the backend around run_step. */
  mode: OpMode = "direct";
  #ctx: CudaContext;
  #modules: KernelModules;
  #stream: bigint;
  #es: number;
  #args = new ArgPack();
  #scratch: { ptr: bigint; bytes: number }[] = [];

  constructor(ctx: CudaContext, modules: KernelModules, stream: bigint, dtype: DType) {
    this.#ctx = ctx;
    this.#modules = modules;
    this.#stream = stream;
    this.#es = dtype_bytes(dtype);
  }

  /** The function of a kernel, or null in prepare mode (after loading it). */
  #fn(kernel: KernelName, head_dim?: number): bigint | null {
    const f = this.#modules.get(kernel, head_dim, this.mode !== "capture");
    return this.mode === "prepare" ? null : f;
  }

  #launch(func: bigint, grid: Dim3, block: Dim3): void {
    this.#ctx.launch(func, grid, block, 0, this.#stream, this.#args);
  }

  /** embed: token + position embeddings for every slot. */
  embed(a: EmbedArgs): void {
    const op = "embed";
    positive(op, { B: a.B, T: a.T, C: a.C, max_pos: a.max_pos });
    const rows = a.B * a.T, es = this.#es;
    need(op, "out", a.out, rows * a.C * es);
    need(op, "tokens", a.tokens, rows * 4);
    need(op, "lengths", a.lengths, a.B * 4);
    need(op, "wpe", a.wpe, a.max_pos * a.C * es);
    const vocab = Math.floor(a.wte.bytes / (a.C * es));
    if (vocab < 1) throw new Error(`${op}: wte "${a.wte.label}" holds less than one row of ${a.C}`);
    const f = this.#fn("embed");
    if (f === null) return;
    this.#args.reset("ng_embed").ptr(a.out).ptr(a.tokens).ptr(a.lengths).ptr(a.wte).ptr(a.wpe)
      .i32(a.T).i32(a.C).i32(a.max_pos).i32(vocab);
    this.#launch(f, [rows, 1, 1], [threads_for(a.C), 1, 1]);
  }

  /** layernorm over rows. */
  layernorm(a: LayerNormArgs): void {
    const op = "layernorm";
    positive(op, { rows: a.rows, C: a.C });
    const es = this.#es;
    need(op, "out", a.out, a.rows * a.C * es);
    need(op, "x", a.x, a.rows * a.C * es);
    need(op, "weight", a.weight, a.C * es);
    if (a.bias) need(op, "bias", a.bias, a.C * es);
    const f = this.#fn("layernorm");
    if (f === null) return;
    this.#args.reset("ng_layernorm").ptr(a.out).ptr(a.x).ptr(a.weight).ptr(a.bias).i32(a.C).f32(a.eps);
    this.#launch(f, [a.rows, 1, 1], [256, 1, 1]);
  }

  /** In place: x = gelu(x + bias) over `n` elements in rows of N (mode 0 erf, 1 tanh). */
  bias_gelu(x: Buf, bias: Buf | null, n: number, N: number, mode: 0 | 1): void {
    const f = this.#fn("bias_gelu");
    if (f === null) return;
    this.#args.reset("ng_bias_gelu").ptr(x).ptr(bias).i64(n).i32(N).i32(mode);
    const blocks = Math.max(1, Math.min(Math.ceil(n / 256), this.#ctx.sm_count * 16));
    this.#launch(f, [blocks, 1, 1], [256, 1, 1]);
  }

  /** Decode scratch of at least `bytes` (grown outside capture; older ones stay for old graphs). */
  #decode_scratch(bytes: number): bigint {
    const last = this.#scratch[this.#scratch.length - 1];
    if (last && last.bytes >= bytes) return last.ptr;
    if (this.mode === "capture") {
      throw new Error("internal: attention decode scratch grew during graph capture (dry run skipped?)");
    }
    const size = Math.max(bytes, 2 * (last?.bytes ?? 0), 1 << 20);
    const ptr = this.#ctx.mem_alloc(size);
    this.#scratch.push({ ptr, bytes: size });
    return ptr;
  }

  /** Frees every decode scratch buffer but the newest (call when no graph uses them). */
  trim_scratch(): void {
    while (this.#scratch.length > 1) this.#ctx.mem_free(this.#scratch.shift()!.ptr);
  }

  /** attention: kv append, then prefill (T > 1) or split decode + combine (T == 1). */
  attention(a: AttentionArgs): void {
    const op = "attention";
    positive(op, { B: a.B, T: a.T, n_head: a.n_head, head_dim: a.head_dim, max_T: a.max_T });
    const D = a.head_dim, H = a.n_head, C = H * D, rows = a.B * a.T, es = this.#es;
    if (D > MAX_HEAD_DIM) {
      throw new Error(`${op}: head_dim ${D} is above the ${MAX_HEAD_DIM} the kernels support`);
    }
    need(op, "qkv", a.qkv, rows * 3 * C * es);
    need(op, "out", a.out, rows * C * es);
    need(op, "k_cache", a.k_cache, a.B * H * a.max_T * D * es);
    need(op, "v_cache", a.v_cache, a.B * H * a.max_T * D * es);
    need(op, "lengths", a.lengths, a.B * 4);
    need(op, "n_new", a.n_new, a.B * 4);
    if ((D * es) % 16 === 0 && (a.k_cache.ptr % 16n !== 0n || a.v_cache.ptr % 16n !== 0n)) {
      throw new Error(
        `${op}: k_cache "${a.k_cache.label}" and v_cache "${a.v_cache.label}" must be 16-byte aligned`,
      );
    }
    const scale = 1 / Math.sqrt(D);
    const append = this.#fn("kv_append");
    if (a.T === 1) {
      const n_split = Math.ceil(a.max_T / DECODE_SPLIT);
      const parts = a.B * H * n_split;
      const scratch = this.#decode_scratch(parts * (D + 2) * 4);
      const decode = this.#fn("attention_decode", D);
      const combine = this.#fn("attention_combine", D);
      if (append === null || decode === null || combine === null) return;
      this.#append(append, a);
      const part_acc = scratch, part_ml = scratch + BigInt(parts * D * 4);
      this.#args.reset("ng_attention_decode").ptr(part_acc).ptr(part_ml).ptr(a.qkv).ptr(a.k_cache).ptr(
        a.v_cache,
      )
        .ptr(a.lengths).ptr(a.n_new).i32(H).i32(a.max_T).i32(n_split).f32(scale);
      this.#launch(decode, [n_split, H, a.B], [DECODE_SPLIT, 1, 1]);
      this.#args.reset("ng_attention_combine").ptr(a.out).ptr(part_acc).ptr(part_ml).ptr(a.lengths).ptr(
        a.n_new,
      )
        .i32(H).i32(a.max_T).i32(n_split);
      this.#launch(combine, [H, a.B, 1], [round_up(D, 32), 1, 1]);
      return;
    }
    const prefill = this.#fn("attention_prefill", D);
    if (append === null || prefill === null) return;
    this.#append(append, a);
    this.#args.reset("ng_attention_prefill").ptr(a.out).ptr(a.qkv).ptr(a.k_cache).ptr(a.v_cache).ptr(
      a.lengths,
    )
      .ptr(a.n_new).i32(a.T).i32(H).i32(a.max_T).f32(scale);
    this.#launch(prefill, [Math.ceil(a.T / PREFILL_ROWS), H, a.B], [128, 1, 1]);
  }

  #append(f: bigint, a: AttentionArgs): void {
    this.#args.reset("ng_kv_append").ptr(a.k_cache).ptr(a.v_cache).ptr(a.qkv).ptr(a.lengths).ptr(a.n_new)
      .i32(a.T).i32(a.n_head).i32(a.head_dim).i32(a.max_T);
    this.#launch(f, [a.B * a.T, 1, 1], [threads_for(a.n_head * a.head_dim), 1, 1]);
  }

  /** gather_last: the last valid row of each sequence. */
  gather_last(a: GatherLastArgs): void {
    const op = "gather_last";
    positive(op, { B: a.B, T: a.T, C: a.C });
    need(op, "out", a.out, a.B * a.C * this.#es);
    need(op, "x", a.x, a.B * a.T * a.C * this.#es);
    need(op, "n_new", a.n_new, a.B * 4);
    const f = this.#fn("gather_last");
    if (f === null) return;
    this.#args.reset("ng_gather_last").ptr(a.out).ptr(a.x).ptr(a.n_new).i32(a.T).i32(a.C);
    this.#launch(f, [a.B, 1, 1], [threads_for(a.C), 1, 1]);
  }

  /** sample: one block of 1024 threads per sequence. */
  sample(a: SampleArgs): void {
    const op = "sample";
    positive(op, { B: a.B, V: a.V });
    need(op, "tokens_out", a.tokens_out, a.B * 4);
    need(op, "logits", a.logits, a.B * a.V * 4);
    for (const k of ["lengths", "n_new", "temperature", "top_k", "top_p"] as const) {
      need(op, k, a[k], a.B * 4);
    }
    need(op, "seed", a.seed, a.B * 8);
    const f = this.#fn("sample");
    if (f === null) return;
    this.#args.reset("ng_sample").ptr(a.tokens_out).ptr(a.logits).ptr(a.lengths).ptr(a.n_new).ptr(
      a.temperature,
    )
      .ptr(a.top_k).ptr(a.top_p).ptr(a.seed).i32(a.V);
    this.#launch(f, [a.B, 1, 1], [1024, 1, 1]);
  }

  /** advance: lengths += n_new. */
  advance(a: AdvanceArgs): void {
    const op = "advance";
    positive(op, { B: a.B });
    need(op, "lengths", a.lengths, a.B * 4);
    need(op, "n_new", a.n_new, a.B * 4);
    const f = this.#fn("advance");
    if (f === null) return;
    this.#args.reset("ng_advance").ptr(a.lengths).ptr(a.n_new).i32(a.B);
    this.#launch(f, [Math.ceil(a.B / 256), 1, 1], [256, 1, 1]);
  }

  /** Frees the decode scratch. */
  dispose(): void {
    for (const s of this.#scratch) this.#ctx.mem_free(s.ptr);
    this.#scratch = [];
  }
}
