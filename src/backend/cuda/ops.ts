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
  type LoopLog,
  type MatmulArgs,
  type SampleArgs,
} from "../backend.ts";
import type { CudaContext, Dim3 } from "./driver.ts";
import { ArgPack } from "./launch_args.ts";
import { type KernelName, MAX_HEAD_DIM } from "./kernels.ts";
import type { KernelModules } from "./modules.ts";
import { GEMV_DEFAULT_SMEM, gemv_launch } from "./matmul.ts";
import { env } from "../../util/env.ts";

/** How ops behave: launch (direct), only get ready (prepare), or launch into a capture. */
export type OpMode = "direct" | "prepare" | "capture";

const PREFILL_ROWS = 16;
/** Query rows per block of attention_prefill_mma (4 warps x 16). */
const PREFILL_MMA_ROWS = 64;

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

/** How attention_decode splits a decode step over blocks and warps. */
export interface DecodePlan {
  /** Warps on one (b, head): 1, 2, 4 or 8, splitting its keys. */
  warps_per_head: number;
  /** Heads of one sequence per block (a divisor of H); the block has warps_per_head * this warps. */
  heads_per_block: number;
  /** Keys per chunk: block c reads positions c*chunk .. c*chunk+chunk-1 (of the live ones). */
  chunk: number;
  /** Chunks per (b, head), the grid's x; above 1, attention_combine merges them. */
  n_chunks: number;
}

/**
 * Warps per SM the decode plan aims for (each keeps up to 8 KB of K and V loads in flight). Measured
 * on an H100 (docs/perf-notes.md): 64 reads gpt2 b256's cache fastest (4 warps per head).
 */
export const DECODE_WARPS_PER_SM = 64;
/**
 * Once the (b, head) pairs alone fill the SMs, a head gets no more warps than leave each at least
 * this many of max_T's keys: below it a warp's fixed costs (loading q, merging) outweigh its
 * share. Measured on an H100 (docs/perf-notes.md): at max_T 320, capping 8 warps per head to 4
 * took gpt2-xl b64 from 4.18 to 4.03 ms a step and gpt2 b64 from 636 to 619 us.
 */
export const DECODE_MIN_KEYS_PER_WARP = 64;
/** Below this max_T a decode step never splits the keys in chunks (one launch does everything). */
export const DECODE_SPLIT_MIN_T = 512;
/** The fewest keys of a chunk when the keys are split. */
export const DECODE_MIN_CHUNK = 256;

/**
 * The decode split for B sequences of H heads over caches of max_T positions on `sm_count` SMs.
 * Each (b, head) gets the fewest warps (up to 8, fewer for short caches: DECODE_MIN_KEYS_PER_WARP)
 * that make DECODE_WARPS_PER_SM warps per SM in all;
 * when that is under 4, a block holds several heads of one sequence (a divisor of H, about 4 warps
 * in all). When even 8 warps per head leave SMs idle and the cache is long, the keys are cut in
 * chunks (of at least DECODE_MIN_CHUNK) for about two blocks per SM, merged by a second launch.
 */
export function decode_plan(
  B: number,
  H: number,
  max_T: number,
  sm_count: number,
  max_warps_per_head = 8,
): DecodePlan {
  const pairs = B * H;
  let cap = max_warps_per_head;
  if (pairs >= sm_count) { while (cap > 1 && cap * DECODE_MIN_KEYS_PER_WARP > max_T) cap /= 2; }
  let warps_per_head = 1;
  while (warps_per_head < cap && pairs * warps_per_head < DECODE_WARPS_PER_SM * sm_count) {
    warps_per_head *= 2;
  }
  const want = Math.max(1, 4 / warps_per_head);
  let heads_per_block = 1;
  for (let d = 2; d <= 8 / warps_per_head; d++) {
    if (H % d === 0 && Math.abs(d - want) <= Math.abs(heads_per_block - want)) heads_per_block = d;
  }
  let n_chunks = 1;
  if (pairs < sm_count && max_T > DECODE_SPLIT_MIN_T) {
    n_chunks = Math.min(Math.ceil(max_T / DECODE_MIN_CHUNK), Math.ceil((2 * sm_count) / pairs));
  }
  const chunk = Math.ceil(max_T / n_chunks);
  return { warps_per_head, heads_per_block, chunk, n_chunks: Math.ceil(max_T / chunk) };
}

/** $NGPT_DECODE_MAX_WPH (1, 2, 4 or 8): an experiment's cap on decode warps per head (default 8). */
function decode_max_wph(): number {
  const v = env("NGPT_DECODE_MAX_WPH");
  if (!v) return 8;
  if (!["1", "2", "4", "8"].includes(v)) {
    throw new Error(`NGPT_DECODE_MAX_WPH must be 1, 2, 4 or 8, got "${v}"`);
  }
  return Number(v);
}

/** Bytes of the vectors attention_decode loads: the largest of 16, 8, 4, 2 dividing a head's row. */
function decode_vector_bytes(row_bytes: number): number {
  for (const v of [16, 8, 4]) if (row_bytes % v === 0) return v;
  return 2;
}

/** Kernel launches of one backend. */
export class KernelOps {
  /** Set by the backend around run_step. */
  mode: OpMode = "direct";
  #ctx: CudaContext;
  #modules: KernelModules;
  #stream: bigint;
  #es: number;
  #dtype: DType;
  #args = new ArgPack();
  /** Dynamic shared memory each gemv function may use, where raised above GEMV_DEFAULT_SMEM. */
  #gemv_smem = new Map<bigint, number>();
  #scratch: { ptr: bigint; bytes: number }[] = [];

  constructor(ctx: CudaContext, modules: KernelModules, stream: bigint, dtype: DType) {
    this.#ctx = ctx;
    this.#modules = modules;
    this.#stream = stream;
    this.#es = dtype_bytes(dtype);
    this.#dtype = dtype;
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

  /** The whole matmul `a` (validated; gemv_fits) in the gemv kernel. */
  gemv(a: MatmulArgs): void {
    const l = gemv_launch(a, this.#dtype, this.#ctx.sm_count, this.#ctx.smem_optin_bytes);
    const f = this.#modules.get(l.kernel, undefined, this.mode !== "capture");
    if (l.smem_bytes > (this.#gemv_smem.get(f) ?? GEMV_DEFAULT_SMEM)) {
      if (this.mode === "capture") {
        throw new Error("internal: gemv shared memory grew during graph capture (dry run skipped?)");
      }
      this.#ctx.func_set_smem(f, l.smem_bytes);
      this.#gemv_smem.set(f, l.smem_bytes);
    }
    if (this.mode === "prepare") return;
    this.#args.reset("ng_gemv").ptr(a.out).ptr(a.x).ptr(a.w).ptr(a.bias).ptr(a.ln?.weight ?? null)
      .ptr(a.ln?.bias ?? null).i32(a.M).i32(a.N).i32(a.K).f32(a.ln?.eps ?? 0).i32(l.flags).i32(l.ks);
    this.#ctx.launch(f, [l.blocks, 1, 1], [l.threads, 1, 1], l.smem_bytes, this.#stream, this.#args);
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

  /**
   * attention: T == 1 is one attention_decode launch (the append fused in), plus attention_combine
   * when the plan splits the keys in chunks; T > 1 is kv_append, then attention_prefill.
   */
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
    const vb = a.T === 1 ? decode_vector_bytes(D * es) : (D * es) % 16 === 0 ? 16 : es;
    for (const [name, buf] of [["qkv", a.qkv], ["k_cache", a.k_cache], ["v_cache", a.v_cache]] as const) {
      if (buf.ptr % BigInt(vb) !== 0n) {
        throw new Error(`${op}: ${name} "${buf.label}" must be ${vb}-byte aligned for head_dim ${D}`);
      }
    }
    if (a.T === 1) {
      this.#decode(a);
      return;
    }
    // Tensor cores for f16/bf16 and head sizes a multiple of 16; CUDA cores otherwise.
    const mma = this.#dtype !== "f32" && D % 16 === 0;
    const append = this.#fn("kv_append");
    const prefill = this.#fn(mma ? "attention_prefill_mma" : "attention_prefill", D);
    if (append === null || prefill === null) return;
    this.#args.reset("ng_kv_append").ptr(a.k_cache).ptr(a.v_cache).ptr(a.qkv).ptr(a.lengths).ptr(a.n_new)
      .i32(a.T).i32(H).i32(D).i32(a.max_T);
    this.#launch(append, [rows, 1, 1], [threads_for(Math.ceil((C * es) / 16)), 1, 1]);
    this.#args.reset(mma ? "ng_attention_prefill_mma" : "ng_attention_prefill").ptr(a.out).ptr(a.qkv)
      .ptr(a.k_cache).ptr(a.v_cache).ptr(a.lengths).ptr(a.n_new).i32(a.T).i32(H).i32(a.max_T)
      .f32(1 / Math.sqrt(D));
    this.#launch(prefill, [Math.ceil(a.T / (mma ? PREFILL_MMA_ROWS : PREFILL_ROWS)), H, a.B], [128, 1, 1]);
  }

  /** The decode step (T == 1): attention_decode, then attention_combine when keys are split. */
  #decode(a: AttentionArgs): void {
    const D = a.head_dim, H = a.n_head;
    const plan = decode_plan(a.B, H, a.max_T, this.#ctx.sm_count, decode_max_wph());
    const parts = a.B * H * plan.n_chunks;
    const scratch = plan.n_chunks > 1 ? this.#decode_scratch(parts * (D + 2) * 4) : 0n;
    const part_acc = scratch, part_ml = scratch === 0n ? 0n : scratch + BigInt(parts * D * 4);
    const decode = this.#fn("attention_decode", D);
    const combine = plan.n_chunks > 1 ? this.#fn("attention_combine", D) : null;
    if (decode === null) return;
    this.#args.reset("ng_attention_decode").ptr(a.out).ptr(part_acc).ptr(part_ml).ptr(a.qkv).ptr(a.k_cache)
      .ptr(a.v_cache).ptr(a.lengths).ptr(a.n_new).i32(H).i32(a.max_T).i32(plan.chunk)
      .i32(plan.warps_per_head).f32(Math.LOG2E / Math.sqrt(D));
    const warps = plan.warps_per_head * plan.heads_per_block;
    this.#launch(decode, [plan.n_chunks, H / plan.heads_per_block, a.B], [32 * warps, 1, 1]);
    if (combine === null) return;
    this.#args.reset("ng_attention_combine").ptr(a.out).ptr(part_acc).ptr(part_ml).ptr(a.lengths)
      .ptr(a.n_new).i32(H).i32(a.max_T).i32(plan.chunk).i32(plan.n_chunks);
    this.#launch(combine, [H, a.B, 1], [round_up(D, 32), 1, 1]);
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
    const ld = a.ld ?? a.V;
    if (!Number.isInteger(ld) || ld < a.V) {
      throw new RangeError(`${op}: ld must be an integer >= V (${a.V}), got ${ld}`);
    }
    need(op, "logits", a.logits, ((a.B - 1) * ld + a.V) * 4);
    for (const k of ["lengths", "n_new", "temperature", "top_k", "top_p"] as const) {
      need(op, k, a[k], a.B * 4);
    }
    need(op, "seed", a.seed, a.B * 8);
    const f = this.#fn("sample");
    if (f === null) return;
    this.#args.reset("ng_sample").ptr(a.tokens_out).ptr(a.logits).ptr(a.lengths).ptr(a.n_new).ptr(
      a.temperature,
    )
      .ptr(a.top_k).ptr(a.top_p).ptr(a.seed).i32(a.V).i32(ld);
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

  /** loop_step: logs iteration *counter's tokens and counts it (stopping `handle`'s loop after n). */
  loop_step(log: LoopLog, counter: bigint, handle: bigint, n: number): void {
    const f = this.#fn("loop_step");
    if (f === null) return;
    this.#args.reset("ng_loop_step").ptr(log.dst).ptr(log.src).ptr(counter).ptr(handle).i32(log.B).i32(
      log.stride,
    )
      .i32(log.first_row).i32(n);
    this.#launch(f, [1, 1, 1], [Math.min(1024, round_up(log.B, 32)), 1, 1]);
  }

  /** Frees the decode scratch. */
  dispose(): void {
    for (const s of this.#scratch) this.#ctx.mem_free(s.ptr);
    this.#scratch = [];
  }
}
