/**
 * The kernel launches of the CUDA backend's ops (semantics: src/backend/backend.ts). Each op
 * first makes sure its resources exist (module loaded, decode scratch big enough), which is all
 * it does in "prepare" mode (run_step's dry run); in "capture" mode those must already exist.
 * @module
 */
import { GrowingScratch } from "./scratch.ts";
import {
  type Activation,
  ACTIVATION_CODE,
  type AdvanceArgs,
  type AttentionArgs,
  type Buf,
  type DType,
  dtype_bytes,
  type EmbedArgs,
  FUSED_KV_FIELDS,
  FUSED_LAYER_FIELDS,
  type FusedDecodeArgs,
  type GatherRowsArgs,
  type LayerNormArgs,
  type LogprobsArgs,
  type LoopLog,
  type MatmulArgs,
  type SampleArgs,
  type ScatterArgs,
} from "../backend.ts";
import { check_attention, check_dims, check_logprobs, need } from "../checks.ts";
import type { CudaContext, Dim3 } from "./driver.ts";
import { ArgPack } from "./launch_args.ts";
import { KERNEL_CONSTANTS, type KernelName, MAX_HEAD_DIM } from "./kernels.ts";
import type { KernelModules } from "./modules.ts";
import {
  gemm_smem_bytes,
  gemm_split,
  gemv_flags,
  gemv_launch,
  GEMV_SPLIT_MAX_TILES,
  GEMV_STATIC_SMEM,
  type GemvShape,
} from "./matmul.ts";
import { env, env_int } from "../../util/env.ts";

/** How ops behave: launch (direct), only get ready (prepare), or launch into a capture. */
export type OpMode = "direct" | "prepare" | "capture";

const K = KERNEL_CONSTANTS;

function round_up(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

function threads_for(C: number): number {
  return Math.max(32, Math.min(256, round_up(C, 32)));
}

/** log2 of a KV block size (the kernels shift by it); throws unless it is a power of two. */
function block_log2(op: string, block_size: number): number {
  const l = Math.log2(block_size);
  if (!Number.isInteger(l)) {
    throw new RangeError(`${op}: the CUDA kernels need a power-of-two block_size, got ${block_size}`);
  }
  return l;
}

/** Largest batch the fused decode takes (decode_fused.cu's variants: M <= 1, 2, 4, 8). */
export const FUSED_MAX_B = 8;
/** Threads of a fused decode block (decode_fused.cu: 8 warps, one (b, head) at a time in attention). */
const FUSED_THREADS = 256;
/** Shared memory decode_fused.cu declares statically, at most (attention's merge, gemv's reduction). */
const FUSED_STATIC_SMEM = 8192;

/**
 * Warps splitting K (1, 2, 4 or 8) for one gemv phase of the fused decode. A phase lasts as long as
 * its busiest block, whose lanes wait on one chunk of loads after another: the tiles it loops over
 * (tiles of 8 / ks row groups over `blocks` blocks) times the chunks of `per_lane` vectors a lane
 * takes per row. The fewest of those; on a tie, the larger ks (more blocks reading).
 */
export function fused_ks(N: number, row_bytes: number, per_lane: number, blocks: number): number {
  const nvec = row_bytes / 16, groups = Math.ceil(N / K.GEMV_ROWS);
  let best = 1, best_cost = Infinity;
  for (const ks of [1, 2, 4, 8]) {
    const rounds = Math.ceil(Math.ceil(groups / (8 / ks)) / blocks);
    const cost = rounds * Math.ceil(nvec / (32 * ks * per_lane));
    if (cost <= best_cost) [best, best_cost] = [ks, cost];
  }
  return best;
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
 * share. Measured on an H100 (docs/perf-notes.md): at max_T 320, capping 8 warps per head to 4 (64
 * here) took gpt2-xl b64 from 4.18 to 4.03 ms a step and gpt2 b64 from 636 to 619 us. On an H200
 * (perf-notes.md, eighth round) 128 against 64, alternating twice: gpt2 b64 537 -> 523 us, b256 956
 * -> 938, gpt2-xl b64 3151 -> 3119, b256 6452 -> 6470 (noise: 6495 / 6445).
 */
export const DECODE_MIN_KEYS_PER_WARP = 128;
/**
 * DECODE_MIN_KEYS_PER_WARP where the pairs fill the SMs fewer than DECODE_MANY_PAIRS_PER_SM times over:
 * there, more warps a head keep more loads in flight. H200 (perf-notes.md, tenth round), 64 against
 * 128, alternating twice: gpt2-xl b8 (200 pairs) 2332 -> 2203 us a step, b16 (400) 2309 -> 2261, gpt2
 * b16 (192) 436 -> 418, b32 (384) 463 -> 457; gpt2-xl b32 (800) 2568 -> 2594 and the eighth round's
 * b64 and b256 cases went the other way.
 */
export const DECODE_FEW_PAIRS_MIN_KEYS_PER_WARP = 64;
/** (b, head) pairs per SM from which a decode counts as many pairs (DECODE_MIN_KEYS_PER_WARP applies). */
export const DECODE_MANY_PAIRS_PER_SM = 4;
/**
 * DECODE_MIN_KEYS_PER_WARP for the int8 cache, whose warps cost more to start and merge than their
 * keys take (its kernel's registers capped, KERNEL_CONSTANTS.DECODE_KV8_*). Measured alone
 * (tests/gpu/attention_bench.ts, gpt2 b256, H200, the engine's bound of a launch): at 192 keys (bound
 * 256) one warp per head instead of 4 took a launch from 38.3 to 31.2 us, at 448 (bound 512) 2
 * instead of 4 from 68.3 to 63.9.
 */
export const DECODE_KV8_MIN_KEYS_PER_WARP = 256;
/** The decode plan's least keys a warp for `pairs` (b, head) pairs on `sm_count` SMs and the cache's type. */
export function decode_min_keys_per_warp(pairs: number, sm_count: number, kv8: boolean): number {
  if (kv8) return DECODE_KV8_MIN_KEYS_PER_WARP;
  return pairs >= DECODE_MANY_PAIRS_PER_SM * sm_count
    ? DECODE_MIN_KEYS_PER_WARP
    : DECODE_FEW_PAIRS_MIN_KEYS_PER_WARP;
}

/** Below this max_T a decode step never splits the keys in chunks (one launch does everything). */
export const DECODE_SPLIT_MIN_T = 512;
/** The fewest keys of a chunk when the keys are split. */
export const DECODE_MIN_CHUNK = 256;

/**
 * The decode split for B sequences of H heads over caches of max_T positions on `sm_count` SMs.
 * Each (b, head) gets the fewest warps (up to 8, fewer for short caches: at least `min_keys_per_warp`
 * of max_T's keys each, decode_min_keys_per_warp's)
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
  min_keys_per_warp = decode_min_keys_per_warp(B * H, sm_count, false),
): DecodePlan {
  const pairs = B * H;
  let cap = max_warps_per_head;
  if (pairs >= sm_count) { while (cap > 1 && cap * min_keys_per_warp > max_T) cap /= 2; }
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

/** $NGPT_DECODE_MIN_KEYS (a positive integer): an experiment's least keys a warp, for every decode (either cache). */
function decode_min_keys(): number | undefined {
  return env_int("NGPT_DECODE_MIN_KEYS", 1);
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

/**
 * Dynamic shared memory any of these kernels may use without raising its function's limit: 48 KiB in
 * all, less the most static shared memory one declares (gemv.cu's 4 KiB).
 */
const SMEM_WITHOUT_OPT_IN = (48 << 10) - GEMV_STATIC_SMEM;

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
  /** The decode plan's experiment knobs, read once ($NGPT_DECODE_MAX_WPH, $NGPT_DECODE_MIN_KEYS). */
  #decode_max_wph = decode_max_wph();
  #decode_min_keys = decode_min_keys();
  /** Dynamic shared memory each function may use, where raised above SMEM_WITHOUT_OPT_IN. */
  #func_smem = new Map<bigint, number>();
  /** The decode attention's partials when keys are split (attention_combine merges them). */
  #scratch: GrowingScratch;
  /** Decode steps that took the fused path, launched or recorded into a graph (for tests). */
  fused_steps = 0;
  /**
   * With NGPT_FUSED_TRACE=1, where the fused decode logs its phases (decode_fused.cu; read with
   * fused_trace()). Grow-only: graphs recorded with an older buffer keep it until trim_scratch().
   */
  #fused_trace: GrowingScratch;
  /**
   * The fused decode's barrier words, made on first use: each block's count of barriers passed (equal
   * between launches), then the arrival counter (decode_fused.cu fused_barrier).
   */
  #fused_bar = 0n;
  /**
   * Split tensor-core gemv launches' partial sums (grow-only, as #scratch) and arrival counters, shared
   * by every such launch: they run one after another on this stream, each leaving its counters at 0.
   */
  #gemv_part: GrowingScratch;
  #gemv_count = 0n;

  constructor(ctx: CudaContext, modules: KernelModules, stream: bigint, dtype: DType) {
    this.#ctx = ctx;
    this.#scratch = new GrowingScratch(ctx, "attention decode scratch", true);
    this.#fused_trace = new GrowingScratch(ctx, "fused decode trace", false);
    this.#gemv_part = new GrowingScratch(ctx, "gemv split partials", true);
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

  /** Lets `func` launch with `bytes` of dynamic shared memory (raised once, before any capture). */
  #allow_smem(func: bigint, bytes: number): void {
    if (bytes <= (this.#func_smem.get(func) ?? SMEM_WITHOUT_OPT_IN)) return;
    if (this.mode === "capture") {
      throw new Error("internal: a kernel's shared memory grew during graph capture (dry run skipped?)");
    }
    this.#ctx.func_set_smem(func, bytes);
    this.#func_smem.set(func, bytes);
  }

  #launch(func: bigint, grid: Dim3, block: Dim3): void {
    this.#ctx.launch(func, grid, block, 0, this.#stream, this.#args);
  }

  /** embed: token + position embeddings for every row. */
  embed(a: EmbedArgs): void {
    const op = "embed";
    check_dims(op, { rows: a.rows, C: a.C, max_pos: a.max_pos });
    const es = this.#es;
    need(op, "out", a.out, a.rows * a.C * es, `${a.rows} x ${a.C}`);
    need(op, "tokens", a.tokens, a.rows * 4, `${a.rows} int32`);
    need(op, "positions", a.positions, a.rows * 4, `${a.rows} int32`);
    need(op, "wpe", a.wpe, a.max_pos * a.C * es, `${a.max_pos} x ${a.C}`);
    const vocab = Math.floor(a.wte.bytes / (a.C * es));
    if (vocab < 1) throw new RangeError(`${op}: wte "${a.wte.label}" holds less than one row of ${a.C}`);
    const f = this.#fn("embed");
    if (f === null) return;
    this.#args.reset("ng_embed").ptr(a.out).ptr(a.tokens).ptr(a.positions).ptr(a.wte).ptr(a.wpe)
      .i32(a.C).i32(a.max_pos).i32(vocab);
    this.#launch(f, [a.rows, 1, 1], [threads_for(a.C), 1, 1]);
  }

  /** layernorm over rows. */
  layernorm(a: LayerNormArgs): void {
    const op = "layernorm";
    check_dims(op, { rows: a.rows, C: a.C });
    const es = this.#es;
    need(op, "out", a.out, a.rows * a.C * es, `${a.rows} x ${a.C}`);
    need(op, "x", a.x, a.rows * a.C * es, `${a.rows} x ${a.C}`);
    need(op, "weight", a.weight, a.C * es, `${a.C}`);
    if (a.bias) need(op, "bias", a.bias, a.C * es, `${a.C}`);
    // Rows of whole 16-byte vectors: layernorm_vec, each thread holding up to LAYERNORM_VPT of them.
    const nvec = (a.C * es) / 16;
    const vec = Number.isInteger(nvec) && nvec <= 256 * K.LAYERNORM_VPT &&
      [a.out, a.x, a.weight, a.bias].every((b) => !b || b.ptr % 16n === 0n);
    const f = this.#fn(vec ? "layernorm_vec" : "layernorm");
    if (f === null) return;
    this.#args.reset(vec ? "ng_layernorm_vec" : "ng_layernorm").ptr(a.out).ptr(a.x).ptr(a.weight).ptr(a.bias)
      .i32(a.C).f32(a.eps);
    const threads = vec ? Math.min(256, round_up(Math.ceil(nvec / K.LAYERNORM_VPT), 32)) : 256;
    this.#launch(f, [a.rows, 1, 1], [threads, 1, 1]);
  }

  /** out (N, K) in the storage dtype = q (int8) times each row's f32 scale. */
  dequant_rows(out: Buf, q: Buf, scale: Buf, N: number, K: number): void {
    const f = this.#fn("dequant_rows");
    if (f === null) return;
    const blocks = Math.max(1, Math.min(Math.ceil(N * K / 4 / 256), this.#ctx.sm_count * 8));
    this.#args.reset("ng_dequant_rows").ptr(out).ptr(q).ptr(scale).i32(N).i32(K);
    this.#launch(f, [blocks, 1, 1], [256, 1, 1]);
  }

  /** In place: x = act(x + bias) over `n` elements in rows of N. */
  bias_gelu(x: Buf, bias: Buf | null, n: number, N: number, act: Activation): void {
    const f = this.#fn("bias_gelu");
    if (f === null) return;
    this.#args.reset("ng_bias_gelu").ptr(x).ptr(bias).i64(n).i32(N).i32(ACTIVATION_CODE[act]);
    const blocks = Math.max(1, Math.min(Math.ceil(n / 256), this.#ctx.sm_count * 16));
    this.#launch(f, [blocks, 1, 1], [256, 1, 1]);
  }

  /**
   * The whole matmul `a` (validated; gemv_fits) in the gemv kernel (on tensor cores where they suit,
   * K split across at most `max_split` blocks), on the grid `shape` when given.
   */
  gemv(a: MatmulArgs, tensor_cores: boolean, max_split: number, shape: GemvShape | null = null): void {
    const l = gemv_launch(
      a,
      this.#dtype,
      this.#ctx.sm_count,
      this.#ctx.smem_optin_bytes,
      tensor_cores,
      max_split,
      shape,
    );
    const f = this.#modules.get(l.kernel, undefined, this.mode !== "capture");
    this.#allow_smem(f, l.smem_bytes);
    // A split launch's partial sums (kslices x 16 rows x N f32) and arrival counters.
    const split = l.kslices > 1;
    const part = split ? this.#gemv_part.get(l.kslices * 16 * a.N * 4, this.mode !== "capture").ptr : 0n;
    if (split && this.#gemv_count === 0n) this.#gemv_count = this.#zeroed(GEMV_SPLIT_MAX_TILES * 4);
    if (this.mode === "prepare") return;
    this.#args.reset("ng_gemv").ptr(a.out).ptr(a.x).ptr(a.w).ptr(a.w_scale ?? null).ptr(a.bias)
      .ptr(a.ln?.weight ?? null)
      .ptr(a.ln?.bias ?? null).i32(a.M).i32(a.N).i32(a.K).f32(a.ln?.eps ?? 0).i32(l.flags).i32(l.ks);
    if (l.kernel.startsWith("gemv_mma_")) {
      this.#args.ptr(part).ptr(split ? this.#gemv_count : 0n).i32(l.kslices);
    }
    this.#ctx.launch(f, [l.blocks, 1, 1], [l.threads, 1, 1], l.smem_bytes, this.#stream, this.#args);
  }

  /**
   * The whole matmul `a` (validated; gemm_fits) in gemm_mma.cu: a block per 64 x 64 tile of out and K
   * slice (gemm_split's, or `forced_split`), the M tiles as the grid's x (the blocks that share a
   * weight tile run together).
   */
  gemm(a: MatmulArgs, forced_split?: number): void {
    const f = this.#modules.get("gemm_mma", undefined, this.mode !== "capture");
    const smem = gemm_smem_bytes(this.#dtype);
    this.#allow_smem(f, smem);
    const tile = K.GEMM_TILE, m_tiles = Math.ceil(a.M / tile);
    const S = gemm_split(a, this.#ctx.sm_count, forced_split);
    // Split K: the slices' partial sums (S x the padded M x N f32) and the arrival counters the split
    // gemv uses (one launch at a time on this stream, each leaving them at 0).
    const part = S > 1 ? this.#gemv_part.get(S * m_tiles * tile * a.N * 4, this.mode !== "capture").ptr : 0n;
    if (S > 1 && this.#gemv_count === 0n) this.#gemv_count = this.#zeroed(GEMV_SPLIT_MAX_TILES * 4);
    if (this.mode === "prepare") return;
    this.#args.reset("ng_gemm_mma").ptr(a.out).ptr(a.x).ptr(a.w).ptr(a.bias).ptr(a.ln?.weight ?? null)
      .ptr(a.ln?.bias ?? null).i32(a.M).i32(a.N).i32(a.K).f32(a.ln?.eps ?? 0).i32(gemv_flags(a))
      .ptr(part).ptr(S > 1 ? this.#gemv_count : 0n).i32(S);
    this.#ctx.launch(
      f,
      [m_tiles, a.N / tile, S],
      [K.GEMM_THREADS, 1, 1],
      smem,
      this.#stream,
      this.#args,
    );
  }

  /**
   * The whole decode forward as one decode_fused launch: one 256-thread block per SM (the grid
   * must be co-resident for its barriers). False, having done nothing, where it does not apply: more than
   * FUSED_MAX_B slots, rows the gemv cannot vectorize, staging above the shared memory, or unless
   * NGPT_FUSED_DECODE=1: it is off by default, slower than the op-by-op step on an H200
   * (docs/perf-notes.md).
   */
  decode_fused(a: FusedDecodeArgs): boolean {
    const op = "decode_fused", L = a.layout, D = L.head_dim, H = L.n_head, C = a.C, es = this.#es;
    check_dims(op, { B: a.B, C, n_layer: a.n_layer, vocab_padded: a.vocab_padded, max_len: a.max_len });
    const smem = a.B * 4 * C * es;
    if (
      env("NGPT_FUSED_DECODE") !== "1" || a.B > FUSED_MAX_B || (C * es) % 16 !== 0 ||
      (a.int8_weights && C % 16 !== 0) || D > MAX_HEAD_DIM || H * D !== C ||
      smem + FUSED_STATIC_SMEM > this.#ctx.smem_optin_bytes
    ) return false;
    need(op, "x", a.x, a.B * C * es, `${a.B} x ${C}`);
    need(op, "qkv", a.qkv, a.B * 3 * C * es, `${a.B} x ${3 * C}`);
    need(op, "att", a.att, a.B * C * es, `${a.B} x ${C}`);
    need(op, "hidden", a.hidden, a.B * 4 * C * es, `${a.B} x ${4 * C}`);
    need(op, "logits", a.logits, a.B * a.vocab_padded * 4, `${a.B} x ${a.vocab_padded} f32`);
    const lw = FUSED_LAYER_FIELDS.length, kw = FUSED_KV_FIELDS.length;
    need(op, "layers", a.layers, (a.n_layer + 1) * lw * 8, `${a.n_layer + 1} rows of ${lw} addresses`);
    need(op, "kv", a.kv, a.n_layer * kw * 8, `${a.n_layer} rows of ${kw} addresses`);
    need(op, "block_table", a.block_table, a.B * L.max_blocks * 4, `${a.B} x ${L.max_blocks} int32`);
    const mt = [1, 2, 4, 8].find((m) => a.B <= m)!;
    const variant = (a.int8_weights ? "_w8" : "") + (a.int8_kv ? "_kv8" : "");
    const kernel = `decode_fused${variant}_m${mt}` as KernelName;
    const f = this.#modules.get(kernel, D, this.mode !== "capture");
    this.#allow_smem(f, smem);
    if (this.mode !== "capture") {
      if (this.#fused_bar === 0n) this.#fused_bar = this.#zeroed(4 * (this.#ctx.sm_count + 1));
    }
    // Clocks at the start, after each of the 5 * n_layer + 1 barriers and at the end; two timer reads.
    const trace = env("NGPT_FUSED_TRACE") === "1"
      ? this.#fused_trace.get((5 * a.n_layer + 5) * 8, this.mode !== "capture").ptr
      : 0n;
    if (this.mode === "prepare") return true;
    const blocks = this.#ctx.sm_count, per_lane = mt >= 4 ? 2 : 4;
    const wb = a.int8_weights && mt <= 2 ? 1 : es; // bytes per weight as gemv.cu counts its vectors
    const ks = (N: number, K: number, b = wb) => fused_ks(N, K * b, per_lane, blocks);
    // Four bits a phase: c_attn, attn.c_proj, c_fc, mlp.c_proj, the LM head (the launch takes at most
    // 32 arguments).
    const ks_all = ks(3 * C, C) | ks(C, C) << 4 | ks(4 * C, C) << 8 | ks(C, 4 * C) << 12 |
      ks(a.vocab_padded, C, es) << 16;
    const args = this.#args.reset("ng_decode_fused");
    args.ptr(a.layers).ptr(a.kv).i32(a.n_layer).ptr(a.x).ptr(a.qkv).ptr(a.att).ptr(a.hidden).ptr(a.logits);
    args.ptr(a.tokens).ptr(a.lengths).ptr(a.n_new).ptr(a.block_table);
    args.i32(a.B).i32(C).i32(H).i32(a.vocab_padded).i32(a.max_pos).f32(a.eps).i32(ACTIVATION_CODE[a.act]);
    args.i32(a.max_len).f32(Math.LOG2E / Math.sqrt(D)).i32(block_log2(op, L.block_size)).i32(L.max_blocks);
    args.i32(ks_all).ptr(this.#fused_bar).ptr(trace);
    this.#ctx.launch(f, [blocks, 1, 1], [FUSED_THREADS, 1, 1], smem, this.#stream, this.#args);
    this.fused_steps++;
    return true;
  }

  /** `bytes` of device memory set to zero (outside capture; the caller owns it). */
  #zeroed(bytes: number): bigint {
    if (this.mode === "capture") throw new Error("internal: device words allocated during graph capture");
    const ptr = this.#ctx.mem_alloc(bytes);
    try {
      this.#ctx.memset8(ptr, 0, bytes, this.#stream);
    } catch (e) {
      this.#ctx.mem_free(ptr);
      throw e;
    }
    return ptr;
  }

  /** Frees every decode scratch buffer but the newest (call when no graph uses them). */
  trim_scratch(): void {
    this.#scratch.trim();
    this.#fused_trace.trim();
    this.#gemv_part.trim();
  }

  /**
   * attention: a decode step (no seq_start) is one attention_decode launch (the append fused in),
   * plus attention_combine when the plan splits the keys in chunks; a packed prefill is
   * kv_append, then attention_prefill(_mma).
   */
  attention(a: AttentionArgs): void {
    const op = "attention";
    const { rows, C } = check_attention(op, a, this.#es);
    const L = a.layout, D = L.head_dim, H = L.n_head, es = this.#es, kv8 = a.cache.k_scale !== undefined;
    if (D > MAX_HEAD_DIM) {
      throw new RangeError(`${op}: head_dim ${D} is above the ${MAX_HEAD_DIM} the kernels support`);
    }
    const bs_log2 = block_log2(op, L.block_size);
    const prefill = a.seq_start !== undefined;
    const vb = !prefill ? decode_vector_bytes(D * es) : (D * es) % 16 === 0 ? 16 : es;
    // An int8 pool's vectors hold as many elements as qkv's, so 1 / es of the bytes.
    const pool_vb = kv8 ? Math.max(1, vb / es) : vb;
    for (
      const [name, buf, need_b] of [["qkv", a.qkv, vb], ["cache.k", a.cache.k, pool_vb], [
        "cache.v",
        a.cache.v,
        pool_vb,
      ]] as const
    ) {
      if (buf.ptr % BigInt(need_b) !== 0n) {
        throw new RangeError(
          `${op}: ${name} "${buf.label}" must be ${need_b}-byte aligned for head_dim ${D}`,
        );
      }
    }
    if (!prefill) {
      this.#decode(a, bs_log2);
      return;
    }
    // Tensor cores for f16/bf16 and head sizes a multiple of 16; CUDA cores otherwise, and for an
    // int8 cache (whose tiles the MMA kernel does not dequantize).
    const mma = this.#dtype !== "f32" && D % 16 === 0 && !kv8;
    const append = this.#fn(kv8 ? "kv_append_kv8" : "kv_append");
    const kernel = this.#fn(
      mma ? "attention_prefill_mma" : kv8 ? "attention_prefill_kv8" : "attention_prefill",
      D,
    );
    if (append === null || kernel === null) return;
    this.#args.reset("ng_kv_append").ptr(a.cache.k).ptr(a.cache.v).ptr(a.qkv).ptr(a.block_table).ptr(
      a.row_seq!,
    )
      .ptr(a.positions!).i32(H).i32(D).i32(bs_log2).i32(L.max_blocks);
    if (kv8) this.#args.ptr(a.cache.k_scale!).ptr(a.cache.v_scale!);
    // Int8: a warp per head row (K and V); else a thread per 16-byte vector.
    const append_threads = kv8 ? Math.min(1024, 32 * 2 * H) : threads_for(Math.ceil((C * es) / 16));
    this.#launch(append, [rows, 1, 1], [append_threads, 1, 1]);
    this.#args.reset(mma ? "ng_attention_prefill_mma" : "ng_attention_prefill").ptr(a.out).ptr(a.qkv)
      .ptr(a.cache.k).ptr(a.cache.v).ptr(a.block_table).ptr(a.lengths).ptr(a.seq_start!).i32(H)
      .f32(1 / Math.sqrt(D)).i32(bs_log2).i32(L.max_blocks);
    if (kv8) this.#args.ptr(a.cache.k_scale!).ptr(a.cache.v_scale!);
    const bq = mma ? K.PREFILL_MMA_BQ : K.PREFILL_BQ;
    const threads = mma ? K.PREFILL_MMA_THREADS : K.PREFILL_THREADS;
    this.#launch(kernel, [Math.ceil(a.max_seq_rows! / bq), H, a.B], [threads, 1, 1]);
  }

  /** The decode step: attention_decode, then attention_combine when keys are split. */
  #decode(a: AttentionArgs, bs_log2: number): void {
    const L = a.layout, D = L.head_dim, H = L.n_head, max_T = a.max_len!;
    const kv8 = a.cache.k_scale !== undefined;
    const min_keys = this.#decode_min_keys ?? decode_min_keys_per_warp(a.B * H, this.#ctx.sm_count, kv8);
    const plan = decode_plan(a.B, H, max_T, this.#ctx.sm_count, this.#decode_max_wph, min_keys);
    const parts = a.B * H * plan.n_chunks;
    const scratch = plan.n_chunks > 1
      ? this.#scratch.get(parts * (D + 2) * 4, this.mode !== "capture").ptr
      : 0n;
    const part_acc = scratch, part_ml = scratch === 0n ? 0n : scratch + BigInt(parts * D * 4);
    const decode = this.#fn(kv8 ? "attention_decode_kv8" : "attention_decode", D);
    const combine = plan.n_chunks > 1 ? this.#fn("attention_combine", D) : null;
    if (decode === null) return;
    this.#args.reset("ng_attention_decode").ptr(a.out).ptr(part_acc).ptr(part_ml).ptr(a.qkv).ptr(a.cache.k)
      .ptr(a.cache.v).ptr(a.block_table).ptr(a.lengths).ptr(a.n_new!).i32(H).i32(max_T).i32(plan.chunk)
      .i32(plan.warps_per_head).f32(Math.LOG2E / Math.sqrt(D)).i32(bs_log2).i32(L.max_blocks);
    if (kv8) this.#args.ptr(a.cache.k_scale!).ptr(a.cache.v_scale!);
    const warps = plan.warps_per_head * plan.heads_per_block;
    this.#launch(decode, [plan.n_chunks, H / plan.heads_per_block, a.B], [32 * warps, 1, 1]);
    if (combine === null) return;
    this.#args.reset("ng_attention_combine").ptr(a.out).ptr(part_acc).ptr(part_ml).ptr(a.lengths)
      .ptr(a.n_new!).i32(H).i32(max_T).i32(plan.chunk).i32(plan.n_chunks);
    this.#launch(combine, [H, a.B, 1], [round_up(D, 32), 1, 1]);
  }

  /** gather_rows: out[i] = x[idx[i]]. */
  gather_rows(a: GatherRowsArgs): void {
    const op = "gather_rows";
    check_dims(op, { n: a.n, C: a.C });
    need(op, "out", a.out, a.n * a.C * this.#es, `${a.n} x ${a.C}`);
    need(op, "idx", a.idx, a.n * 4, `${a.n} int32`);
    const f = this.#fn("gather_rows");
    if (f === null) return;
    this.#args.reset("ng_gather_rows").ptr(a.out).ptr(a.x).ptr(a.idx).i32(a.C);
    this.#launch(f, [a.n, 1, 1], [threads_for(a.C), 1, 1]);
  }

  /** scatter: dst[idx[i]] = src[i] where idx[i] >= 0. */
  scatter(a: ScatterArgs): void {
    const op = "scatter";
    check_dims(op, { n: a.n });
    need(op, "src", a.src, a.n * 4, `${a.n} int32`);
    need(op, "idx", a.idx, a.n * 4, `${a.n} int32`);
    const f = this.#fn("scatter");
    if (f === null) return;
    this.#args.reset("ng_scatter").ptr(a.dst).ptr(a.src).ptr(a.idx).i32(a.n);
    this.#launch(f, [Math.ceil(a.n / 256), 1, 1], [256, 1, 1]);
  }

  /** sample: one block of SAMPLE_THREADS threads per sequence. */
  sample(a: SampleArgs): void {
    const op = "sample";
    check_dims(op, { B: a.B, V: a.V });
    need(op, "tokens_out", a.tokens_out, a.B * 4, `${a.B} int32`);
    const ld = a.ld ?? a.V;
    if (!Number.isInteger(ld) || ld < a.V) {
      throw new RangeError(`${op}: ld must be an integer >= V (${a.V}), got ${ld}`);
    }
    need(op, "logits", a.logits, ((a.B - 1) * ld + a.V) * 4, `${a.B} rows of ${a.V} f32`);
    for (const k of ["lengths", "n_new", "temperature", "top_k", "top_p"] as const) {
      need(op, k, a[k], a.B * 4, `${a.B} x 4 bytes`);
    }
    need(op, "seed", a.seed, a.B * 8, `${a.B} x 2 u32`);
    const f = this.#fn("sample");
    if (f === null) return;
    this.#args.reset("ng_sample").ptr(a.tokens_out).ptr(a.logits).ptr(a.lengths).ptr(a.n_new)
      .ptr(a.temperature).ptr(a.top_k).ptr(a.top_p).ptr(a.seed).i32(a.V).i32(ld);
    this.#launch(f, [a.B, 1, 1], [K.SAMPLE_THREADS, 1, 1]);
  }

  /** logprobs: one block of LOGPROBS_THREADS threads per row. */
  logprobs(a: LogprobsArgs): void {
    const op = "logprobs";
    check_logprobs(op, a);
    const f = this.#fn("logprobs");
    if (f === null) return;
    this.#args.reset("ng_logprobs").ptr(a.out).ptr(a.logits).ptr(a.targets).i32(a.V).i32(a.ld).i32(a.top_n);
    this.#launch(f, [a.rows, 1, 1], [K.LOGPROBS_THREADS, 1, 1]);
  }

  /** advance: lengths += n_new. */
  advance(a: AdvanceArgs): void {
    const op = "advance";
    check_dims(op, { B: a.B });
    need(op, "lengths", a.lengths, a.B * 4, `${a.B} int32`);
    need(op, "n_new", a.n_new, a.B * 4, `${a.B} int32`);
    const f = this.#fn("advance");
    if (f === null) return;
    this.#args.reset("ng_advance").ptr(a.lengths).ptr(a.n_new).i32(a.B);
    this.#launch(f, [Math.ceil(a.B / 256), 1, 1], [256, 1, 1]);
  }

  /**
   * loop_step: makes the log's copies (at most two) for iteration *counter and counts it
   * (stopping `handle`'s loop after n).
   */
  loop_step(log: LoopLog, counter: bigint, handle: bigint, n: number): void {
    if (log.copies.length > 2) throw new RangeError("loop_step: at most two copies per iteration");
    const f = this.#fn("loop_step");
    if (f === null) return;
    const [a, b] = log.copies;
    this.#args.reset("ng_loop_step").ptr(a.dst).ptr(a.src).i32(a.words).i32(a.stride).ptr(b?.dst ?? null)
      .ptr(b?.src ?? null).i32(b?.words ?? 0).i32(b?.stride ?? 0).ptr(counter).ptr(handle).i32(log.first_row)
      .i32(n);
    this.#launch(f, [1, 1, 1], [Math.min(1024, round_up(Math.max(a.words, b?.words ?? 0), 32)), 1, 1]);
  }

  /** The fused decode's newest trace buffer (NGPT_FUSED_TRACE=1), or null before one is made. */
  fused_trace(): Buf | null {
    return this.#fused_trace.newest();
  }

  /** Frees the decode scratch, the fused decode's trace and barrier flags, the split gemv's buffers. */
  dispose(): void {
    this.#scratch.dispose();
    this.#fused_trace.dispose();
    this.#gemv_part.dispose();
    if (this.#fused_bar !== 0n) this.#ctx.mem_free(this.#fused_bar);
    this.#fused_bar = 0n;
    if (this.#gemv_count !== 0n) this.#ctx.mem_free(this.#gemv_count);
    this.#gemv_count = 0n;
  }
}
