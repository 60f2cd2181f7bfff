/**
 * The CUDA kernels: which file holds each op, its entry point, the -D options that specialise
 * it, and compiling a variant to CUBIN (through the on-disk cache).
 *
 * Sources live in native/kernels/*.cu (one op per file); native/kernels/common.cuh is prepended
 * to each, so NVRTC needs no include path. A variant is a kernel plus its specialisation:
 * the storage dtype (-DNG_DTYPE=0 f32, 1 f16, 2 bf16) and, for attention, the head size
 * (-DNG_HEAD_DIM). An entry's fixed `defines` make further kernels of one file (gemv_m1 ..
 * gemv_m16: gemv.cu for M up to 1 .. 16; gemv_w8_m*: the same over int8 weights; gemv_mma_*: the
 * tensor-core kernel of gemv_mma.cu, which includes gemv.cu; gemv_mma_split_*: it with K split across
 * blocks).
 * @module
 */
import { type DType, DTYPE_CODE } from "../backend.ts";
import { cached_compile } from "./kernel_cache.ts";
import type { Nvrtc } from "./nvrtc.ts";
import { native_source_dir } from "../../native/lib.ts";
import { env_int } from "../../util/env.ts";

/** One kernel file and what it is specialised on. */
export interface KernelInfo {
  /** File under native/kernels/. */
  readonly file: string;
  /** Files under native/kernels/ compiled before `file` (whose device functions it calls). */
  readonly includes?: readonly string[];
  /** The head sizes compiled ahead (kernel_variants) when not every one of the list is. */
  readonly ahead_head_dims?: readonly number[];
  /** The `extern "C" __global__` function's name. */
  readonly entry: string;
  /** Whether it reads or writes tensors of the storage dtype (-DNG_DTYPE). */
  readonly dtype: boolean;
  /** Whether it is specialised on the attention head size (-DNG_HEAD_DIM). */
  readonly head_dim: boolean;
  /** Further -D options of this variant (NAME=VALUE). */
  readonly defines?: readonly string[];
  /** The storage dtypes it compiles for (default: all). */
  readonly dtypes?: readonly DType[];
  /** The head sizes it compiles for must be multiples of this (default 1). */
  readonly head_dim_multiple?: number;
}

/**
 * Block and tile sizes of the kernels, defined once: each reaches its kernel as a -D option (the
 * kernels refuse to compile without it) and the launches in ops.ts / matmul.ts read the same value.
 */
export const KERNEL_CONSTANTS = {
  /** Threads of a sample block (one block per sequence). */
  SAMPLE_THREADS: 1024,
  /** Threads of a logprobs block (one block per row). */
  LOGPROBS_THREADS: 256,
  /** Query rows per block of attention_prefill (CUDA cores), and its threads. */
  PREFILL_BQ: 16,
  PREFILL_THREADS: 128,
  /** Query rows per block of attention_prefill_mma: 4 warps x 16 rows. */
  PREFILL_MMA_BQ: 64,
  PREFILL_MMA_THREADS: 128,
  /** Weight rows per row group of gemv, and its most warps per block. */
  GEMV_ROWS: 4,
  GEMV_MAX_WARPS: 8,
  /** gemv_mma: weight rows of a row group (the mma's N), k of a block, bytes a lane keeps in flight. */
  GEMV_MMA_ROWS: 8,
  GEMV_MMA_KB: 64,
  GEMV_MMA_CHUNK_BYTES: 256,
  /**
   * gemm_mma: the block's tile of out (BM = BN), threads, k-tile and cp.async stages (gemm_mma.cu's).
   * The last two may be set for an experiment ($NGPT_GEMM_KB, a multiple of 64; $NGPT_GEMM_STAGES): 3
   * to 6 stages and 64- or 128-wide k-tiles timed alike at M = 256 (H200, docs/perf-notes.md ninth round).
   */
  GEMM_TILE: 64,
  GEMM_THREADS: 256,
  GEMM_KB: env_int("NGPT_GEMM_KB", 64, 512) ?? 64,
  GEMM_STAGES: env_int("NGPT_GEMM_STAGES", 2, 8) ?? 3,
  /** 16-byte vectors a thread of layernorm_vec holds (rows of up to 256 times this many). */
  LAYERNORM_VPT: 2,
  /**
   * The int8 cache's decode attention: vectors of K (and of V) a lane loads a pass (the 16-bit
   * cache's: 8), and blocks of 8 warps an SM its registers are capped for (85 a thread, so 6 blocks of
   * 4 warps an SM where 126 allowed 4). Measured alone (tests/gpu/attention_bench.ts, gpt2 b256, H200):
   * 35.2 -> 32.9 us a launch at 192 keys, 71.6 -> 68.0 at 448; the 16-bit cache's kernel got slower
   * so (42.2 -> 45.7), and keeps its own.
   */
  DECODE_KV8_KG: 4,
  DECODE_KV8_MIN_BLOCKS: 3,
} as const;

const K = KERNEL_CONSTANTS;
const gemv = (mt: number, w8 = false) => ({
  file: "gemv.cu",
  entry: "ng_gemv",
  dtype: true,
  head_dim: false,
  defines: [
    `NG_GEMV_MT=${mt}`,
    `NG_GEMV_ROWS=${K.GEMV_ROWS}`,
    `NG_GEMV_MAX_WARPS=${K.GEMV_MAX_WARPS}`,
    ...(w8 ? ["NG_GEMV_W8=1"] : []),
  ],
});

const gemv_mma = (mt: number, w8: boolean, split = false) => ({
  file: "gemv_mma.cu",
  includes: ["gemv.cu"],
  entry: "ng_gemv_mma",
  dtype: true,
  head_dim: false,
  dtypes: ["f16", "bf16"] as const,
  defines: [
    "NG_GEMV_MMA=1",
    `NG_GEMV_MT=${mt}`,
    `NG_GEMV_ROWS=${K.GEMV_ROWS}`,
    `NG_GEMV_MAX_WARPS=${K.GEMV_MAX_WARPS}`,
    `NG_GEMV_MMA_ROWS=${K.GEMV_MMA_ROWS}`,
    `NG_GEMV_MMA_KB=${K.GEMV_MMA_KB}`,
    `NG_GEMV_MMA_CHUNK=${K.GEMV_MMA_CHUNK_BYTES}`,
    `NG_GEMV_W8=${w8 ? 1 : 0}`,
    `NG_GEMV_SPLIT=${split ? 1 : 0}`,
  ],
});

const decode_fused = (mt: number, w8: boolean, kv8: boolean) => ({
  file: "decode_fused.cu",
  includes: ["gemv.cu", "attention_decode.cu"],
  entry: "ng_decode_fused",
  dtype: true,
  head_dim: true,
  // 16 variants a dtype: CI compiles them for GPT-2's head size (every size compiles at run time).
  ahead_head_dims: [64],
  defines: [
    "NG_FUSED=1",
    `NG_GEMV_MT=${mt}`,
    `NG_GEMV_ROWS=${K.GEMV_ROWS}`,
    `NG_GEMV_MAX_WARPS=${K.GEMV_MAX_WARPS}`,
    `NG_GEMV_W8=${w8 ? 1 : 0}`,
    `NG_KV8=${kv8 ? 1 : 0}`,
  ],
});

/** Every kernel, by op name. */
export const KERNELS = {
  embed: { file: "embed.cu", entry: "ng_embed", dtype: true, head_dim: false },
  layernorm: {
    file: "layernorm.cu",
    entry: "ng_layernorm",
    dtype: true,
    head_dim: false,
    defines: [`NG_LAYERNORM_VPT=${K.LAYERNORM_VPT}`],
  },
  layernorm_vec: {
    file: "layernorm.cu",
    entry: "ng_layernorm_vec",
    dtype: true,
    head_dim: false,
    defines: [`NG_LAYERNORM_VPT=${K.LAYERNORM_VPT}`],
  },
  bias_gelu: { file: "bias_gelu.cu", entry: "ng_bias_gelu", dtype: true, head_dim: false },
  // The small-M matmul, one variant per bound on M (-DNG_GEMV_MT): each gets its own registers.
  gemv_m1: gemv(1),
  gemv_m2: gemv(2),
  gemv_m4: gemv(4),
  gemv_m8: gemv(8),
  gemv_m16: gemv(16),
  // The same over int8 weights with per-row scales (weight-only quantization).
  gemv_w8_m1: gemv(1, true),
  gemv_w8_m2: gemv(2, true),
  gemv_w8_m4: gemv(4, true),
  gemv_w8_m8: gemv(8, true),
  gemv_w8_m16: gemv(16, true),
  // The same for M = 3 .. 16 on tensor cores (16-bit storage types), 16-bit and int8 weights.
  gemv_mma_m8: gemv_mma(8, false),
  gemv_mma_m16: gemv_mma(16, false),
  gemv_mma_w8_m8: gemv_mma(8, true),
  gemv_mma_w8_m16: gemv_mma(16, true),
  // The tensor-core GEMM of large batches with the layernorm in its prologue (gemm_mma.cu; gemv.cu's
  // epilogue, hence its defines). Off by default: slower than cuBLASLt (gemv_bench.ts --gemm).
  gemm_mma: {
    file: "gemm_mma.cu",
    includes: ["gemv.cu"],
    entry: "ng_gemm_mma",
    dtype: true,
    head_dim: false,
    dtypes: ["f16", "bf16"] as const,
    defines: [
      "NG_GEMM=1",
      `NG_GEMM_TILE=${K.GEMM_TILE}`,
      `NG_GEMM_THREADS=${K.GEMM_THREADS}`,
      `NG_GEMM_KB=${K.GEMM_KB}`,
      `NG_GEMM_STAGES=${K.GEMM_STAGES}`,
      "NG_GEMV_MT=1",
      `NG_GEMV_ROWS=${K.GEMV_ROWS}`,
      `NG_GEMV_MAX_WARPS=${K.GEMV_MAX_WARPS}`,
    ],
  },
  gemv_mma_split_m8: gemv_mma(8, false, true),
  gemv_mma_split_m16: gemv_mma(16, false, true),
  gemv_mma_split_w8_m8: gemv_mma(8, true, true),
  gemv_mma_split_w8_m16: gemv_mma(16, true, true),
  // Int8 weight rows times their scales into the storage dtype (large-batch matmuls of int8 weights).
  dequant_rows: { file: "dequant_rows.cu", entry: "ng_dequant_rows", dtype: true, head_dim: false },
  kv_append: { file: "kv_append.cu", entry: "ng_kv_append", dtype: true, head_dim: false },
  // The int8 KV cache's variants (-DNG_KV8: int8 pools, one f32 scale per row).
  kv_append_kv8: {
    file: "kv_append.cu",
    entry: "ng_kv_append",
    dtype: true,
    head_dim: false,
    defines: ["NG_KV8=1"],
  },
  attention_prefill_kv8: {
    file: "attention_prefill.cu",
    entry: "ng_attention_prefill",
    dtype: true,
    head_dim: true,
    defines: [`NG_PREFILL_BQ=${K.PREFILL_BQ}`, `NG_PREFILL_THREADS=${K.PREFILL_THREADS}`, "NG_KV8=1"],
  },
  attention_decode_kv8: {
    file: "attention_decode.cu",
    entry: "ng_attention_decode",
    dtype: true,
    head_dim: true,
    defines: [
      "NG_KV8=1",
      `NG_DECODE_KG=${K.DECODE_KV8_KG}`,
      `NG_DECODE_MIN_BLOCKS=${K.DECODE_KV8_MIN_BLOCKS}`,
    ],
  },
  attention_prefill: {
    file: "attention_prefill.cu",
    entry: "ng_attention_prefill",
    dtype: true,
    head_dim: true,
    defines: [`NG_PREFILL_BQ=${K.PREFILL_BQ}`, `NG_PREFILL_THREADS=${K.PREFILL_THREADS}`],
  },
  // Tensor-core prefill (mma.sync m16n8k16): f16/bf16, head sizes a multiple of 16.
  attention_prefill_mma: {
    file: "attention_prefill_mma.cu",
    entry: "ng_attention_prefill_mma",
    dtype: true,
    head_dim: true,
    dtypes: ["f16", "bf16"],
    head_dim_multiple: 16,
    defines: [`NG_PREFILL_MMA_BQ=${K.PREFILL_MMA_BQ}`],
  },
  attention_decode: {
    file: "attention_decode.cu",
    entry: "ng_attention_decode",
    dtype: true,
    head_dim: true,
  },
  attention_combine: {
    file: "attention_combine.cu",
    entry: "ng_attention_combine",
    dtype: true,
    head_dim: true,
  },
  gather_rows: { file: "gather_rows.cu", entry: "ng_gather_rows", dtype: true, head_dim: false },
  scatter: { file: "scatter.cu", entry: "ng_scatter", dtype: false, head_dim: false },
  advance: { file: "advance.cu", entry: "ng_advance", dtype: false, head_dim: false },
  sample: {
    file: "sample.cu",
    entry: "ng_sample",
    dtype: false,
    head_dim: false,
    defines: [`NG_SAMPLE_THREADS=${K.SAMPLE_THREADS}`],
  },
  logprobs: {
    file: "logprobs.cu",
    entry: "ng_logprobs",
    dtype: false,
    head_dim: false,
    defines: [`NG_LOGPROBS_THREADS=${K.LOGPROBS_THREADS}`],
  },
  loop_step: { file: "loop_step.cu", entry: "ng_loop_step", dtype: false, head_dim: false },
  // A whole decode forward in one persistent kernel, per bound on the batch (M), with int8 weights
  // (w8) and with an int8 KV cache (kv8).
  decode_fused_m1: decode_fused(1, false, false),
  decode_fused_m2: decode_fused(2, false, false),
  decode_fused_m4: decode_fused(4, false, false),
  decode_fused_m8: decode_fused(8, false, false),
  decode_fused_w8_m1: decode_fused(1, true, false),
  decode_fused_w8_m2: decode_fused(2, true, false),
  decode_fused_w8_m4: decode_fused(4, true, false),
  decode_fused_w8_m8: decode_fused(8, true, false),
  decode_fused_kv8_m1: decode_fused(1, false, true),
  decode_fused_kv8_m2: decode_fused(2, false, true),
  decode_fused_kv8_m4: decode_fused(4, false, true),
  decode_fused_kv8_m8: decode_fused(8, false, true),
  decode_fused_w8_kv8_m1: decode_fused(1, true, true),
  decode_fused_w8_kv8_m2: decode_fused(2, true, true),
  decode_fused_w8_kv8_m4: decode_fused(4, true, true),
  decode_fused_w8_kv8_m8: decode_fused(8, true, true),
} as const satisfies Record<string, KernelInfo>;

/** An op name of KERNELS. */
export type KernelName = keyof typeof KERNELS;

/** Largest head size the attention kernels take. */
export const MAX_HEAD_DIM = 128;

/** A kernel with its specialisation. */
export interface KernelVariant {
  kernel: KernelName;
  /** Storage dtype (ignored by kernels that do not use it). */
  dtype: DType;
  /** Head size, for the attention kernels. */
  head_dim?: number;
}

const source_cache = new Map<string, string>();

/** The text of a file under native/kernels/ (read once). */
export function kernel_file_text(file: string): string {
  const hit = source_cache.get(file);
  if (hit !== undefined) return hit;
  const path = `${native_source_dir()}native/kernels/${file}`;
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new Error(`cannot read CUDA kernel source ${path}: ${(e as Error).message}`, { cause: e });
  }
  source_cache.set(file, text);
  return text;
}

/** The full source NVRTC compiles for a kernel: common.cuh, its includes, then the kernel's file. */
export function kernel_source(kernel: KernelName): string {
  const info: KernelInfo = KERNELS[kernel];
  return ["common.cuh", ...info.includes ?? [], info.file]
    .map((f) => `#line 1 "${f}"\n${kernel_file_text(f)}`)
    .join("\n");
}

/** The full source of every kernel, by op name (what the compile test and the cache hash). */
export function kernel_sources(): Record<KernelName, string> {
  const out = {} as Record<KernelName, string>;
  for (const k of Object.keys(KERNELS) as KernelName[]) out[k] = kernel_source(k);
  return out;
}

/** NVRTC options for a variant on SM architecture `arch` (e.g. 90 for sm_90). */
export function kernel_options(v: KernelVariant, arch: number): string[] {
  const info: KernelInfo = KERNELS[v.kernel];
  if (!kernel_supports(v.kernel, v.dtype, v.head_dim)) {
    throw new Error(`${v.kernel}: no variant for dtype ${v.dtype} and head_dim ${v.head_dim}`);
  }
  const opts = [`--gpu-architecture=sm_${arch}`, "--std=c++17"];
  if (info.dtype) opts.push(`-DNG_DTYPE=${DTYPE_CODE[v.dtype]}`);
  for (const d of info.defines ?? []) opts.push(`-D${d}`);
  if (info.head_dim) {
    const d = v.head_dim;
    if (d === undefined || !Number.isInteger(d) || d < 1 || d > MAX_HEAD_DIM) {
      throw new Error(`${v.kernel}: head_dim must be an integer in 1..${MAX_HEAD_DIM}, got ${d}`);
    }
    opts.push(`-DNG_HEAD_DIM=${d}`);
  }
  return opts;
}

/** Whether `kernel` has a variant for `dtype` (and, for attention kernels, `head_dim`). */
export function kernel_supports(kernel: KernelName, dtype: DType, head_dim?: number): boolean {
  const info: KernelInfo = KERNELS[kernel];
  if (info.dtype && info.dtypes !== undefined && !info.dtypes.includes(dtype)) return false;
  const mult = info.head_dim_multiple ?? 1;
  return !info.head_dim || head_dim === undefined || head_dim % mult === 0;
}

/** A short name for a variant ("attention_decode.bf16.d64"), for caches and messages. */
export function variant_name(v: KernelVariant): string {
  const info: KernelInfo = KERNELS[v.kernel];
  return v.kernel + (info.dtype ? `.${v.dtype}` : "") + (info.head_dim ? `.d${v.head_dim}` : "");
}

/**
 * Every variant worth compiling ahead: each kernel in each dtype it depends on, and the attention
 * kernels for each of `head_dims`.
 */
export function kernel_variants(
  dtypes: DType[] = ["f32", "f16", "bf16"],
  head_dims: number[] = [16, 24, 64, 80, 128],
): KernelVariant[] {
  const out: KernelVariant[] = [];
  for (const kernel of Object.keys(KERNELS) as KernelName[]) {
    const info: KernelInfo = KERNELS[kernel];
    for (const dtype of info.dtype ? dtypes : (["f32"] as DType[])) {
      if (info.dtypes !== undefined && !info.dtypes.includes(dtype)) continue;
      if (info.head_dim) {
        for (const head_dim of info.ahead_head_dims ?? head_dims) {
          if (kernel_supports(kernel, dtype, head_dim)) out.push({ kernel, dtype, head_dim });
        }
      } else out.push({ kernel, dtype });
    }
  }
  return out;
}

/**
 * Compiles a variant for `arch` to CUBIN, through the cache under `cache_dir` (null: no cache),
 * with `extra_defines` (NAME=VALUE) after the variant's own (the step trace's). Throws
 * NvrtcCompileError (with the log) when it does not compile.
 */
export function compile_variant(
  nvrtc: Nvrtc,
  v: KernelVariant,
  arch: number,
  cache_dir: string | null,
  extra_defines: readonly string[] = [],
): Uint8Array {
  return cached_compile(
    nvrtc,
    kernel_source(v.kernel),
    variant_name(v),
    [...kernel_options(v, arch), ...extra_defines.map((d) => `-D${d}`)],
    arch,
    cache_dir,
  );
}
