/**
 * Matmuls through cuBLASLt: one plan (descriptors + the heuristic's algorithm) per shape, dtype,
 * epilogue, accumulate and pointer alignments, created outside any graph capture (run_step's dry
 * run creates them; a plan missing during capture is a bug and throws). A single workspace
 * (32 MiB) is allocated up front and set in every plan.
 *
 * Activations: "gelu_tanh" uses cuBLASLt's GELU(_BIAS) epilogue (tanh form = HF gelu_new) when the
 * heuristic has an algorithm for it, else BIAS + the bias_gelu kernel; "gelu_erf" (nanoGPT) is
 * always the BIAS epilogue + the bias_gelu kernel (the caller launches it when `post_gelu` says).
 * A matmul with `ln` runs the layernorm kernel into a scratch buffer kept here, then the gemm.
 *
 * Small M (decode) goes to the gemv kernel instead (native/kernels/gemv.cu, launched by ops.ts),
 * which reads each weight row once for all M rows and fuses the layernorm, bias, GELU and residual;
 * `gemv_fits` and `gemv_launch` below decide and shape it.
 * @module
 */
import { GrowingScratch } from "./scratch.ts";
import {
  type Activation,
  ACTIVATION_CODE,
  type Buf,
  type DType,
  dtype_bytes,
  DTYPE_CODE,
  type MatmulArgs,
} from "../backend.ts";
import type { CudaContext } from "./driver.ts";
import { KERNEL_CONSTANTS, type KernelName } from "./kernels.ts";
import { env, env_int } from "../../util/env.ts";
import { cublaslt_candidates, nul_list, python_site_dirs } from "./paths.ts";
import { NativeError } from "../../native/lib.ts";

/** Workspace given to every cuBLASLt plan. */
export const WORKSPACE_BYTES = 32 << 20;

const EPILOGUE_DEFAULT = 1;
const EPILOGUE_BIAS = 4;
const EPILOGUE_GELU = 32;
const EPILOGUE_GELU_BIAS = 36;
const CUBLAS_STATUS_NOT_SUPPORTED = 15;

/** The gemm part of a matmul and what the caller must still apply. */
export interface MatmulPlan {
  plan: bigint;
  /** After the gemm, apply this activation in place (bias already added): "none" when the epilogue did it all. */
  post_gelu: Activation;
  /** The autotuner's choice, when it ran and had candidates. */
  tuned?: TunedChoice;
}

/** What the autotuner picked: candidate `index` of `candidates`, `us` against `first_us` for the heuristic's first. */
export interface TunedChoice {
  index: number;
  us: number;
  first_us: number;
  candidates: number;
}

/** The gain over the heuristic's first candidate that another must show to be picked. */
const AUTOTUNE_MIN_GAIN = 0.1;
/** Timed runs per autotuned candidate (the first is a warm-up). */
const AUTOTUNE_RUNS = 4;
/** Bytes written between timed runs to push the weights out of the L2 (50 MB on an H100). */
const FLUSH_BYTES = 128 << 20;

/** Largest M the gemv kernel takes. */
export const GEMV_MAX_M = 16;
const { GEMV_ROWS, GEMV_MAX_WARPS, GEMV_MMA_ROWS, GEMV_MMA_KB, GEMV_MMA_CHUNK_BYTES } = KERNEL_CONSTANTS;
/** Most warps splitting one row group's K in the persistent shape (M > 2). */
const GEMV_MAX_KS = 4;
/** Registers per thread the M > 2 variants use at most (their __launch_bounds__). */
const GEMV_MAX_REGS = 128;
/** Most blocks per SM of the grouped shape's grid (M <= 2; blocks loop over further tiles). */
const GEMV_GROUPED_BLOCKS_PER_SM = 8;
/**
 * Shared memory gemv.cu and gemv_mma.cu declare statically, at most (the reduction buffer, 3.5 KB
 * in gemv_mma.cu, and the row statistics).
 */
export const GEMV_STATIC_SMEM = 4096;
/** The gemv variants: the bound on M, and the 16-byte vectors per row a lane loads at once (U in gemv.cu). */
const GEMV_VARIANTS: readonly [number, KernelName, number, KernelName][] = [
  [1, "gemv_m1", 4, "gemv_w8_m1"],
  [2, "gemv_m2", 4, "gemv_w8_m2"],
  [4, "gemv_m4", 2, "gemv_w8_m4"],
  [8, "gemv_m8", 2, "gemv_w8_m8"],
  [16, "gemv_m16", 1, "gemv_w8_m16"],
];
/** Smallest M of the tensor-core gemv (gemv_mma.cu): below it gemv.cu's M FMAs a weight are not the limit. */
export const GEMV_MMA_MIN_M = 3;

/**
 * Which gemv matmuls run on tensor cores where the shape suits (gemv_mma_suits): all (the default:
 * with x staged by cp.async and gpt2-xl's mlp.c_proj split across blocks, faster than cuBLASLt on an
 * H200 at batch 4 and 8, gpt2 324 against 442 us a step at 8, gpt2-xl 2385 against 2457; the "auto"
 * gemv policy keeps 16-bit weights above M = 8 on cuBLASLt, see gemv_preferred), those of int8
 * weights only, or none.
 */
export type GemvTensorCores = "int8" | "all" | "off";

/** $NGPT_GEMV_MMA ("int8", "all" or "off") when set, else "all". */
export function default_gemv_tensor_cores(): GemvTensorCores {
  const v = env("NGPT_GEMV_MMA");
  if (v === undefined || v === "") return "all";
  if (v !== "int8" && v !== "all" && v !== "off") {
    throw new Error(`NGPT_GEMV_MMA must be "int8", "all" or "off", got "${v}"`);
  }
  return v;
}

/** Whether `policy` lets the gemv of `a` run on tensor cores (where gemv_mma_suits also holds). */
export function gemv_tensor_cores_for(policy: GemvTensorCores, a: MatmulArgs): boolean {
  return policy === "all" || (policy === "int8" && !!a.w_scale);
}

/**
 * Whether the gemv of `a` can run on tensor cores (gemv_mma.cu): 16-bit storage, M in
 * GEMV_MMA_MIN_M..GEMV_MAX_M, K a multiple of 64.
 */
export function gemv_mma_suits(a: MatmulArgs, dtype: DType): boolean {
  return dtype !== "f32" && a.M >= GEMV_MMA_MIN_M && a.M <= GEMV_MAX_M && a.K % GEMV_MMA_KB === 0;
}

/** Output width from which a matmul counts as wide (the LM head): gemv up to GEMV_WIDE_MAX_M. */
const GEMV_WIDE_N = 16384;
/** Largest M of a wide matmul that the default policy sends to gemv. */
const GEMV_WIDE_MAX_M = 8;

/** Which matmuls go to the gemv kernel: "auto" (gemv_preferred), or those with M up to a number (0: none). */
export type GemvPolicy = "auto" | number;

/**
 * The gemv policy from $NGPT_GEMV_MAX_M ("auto", or 0..16: M up to that, 0 = always cuBLASLt) when
 * set and readable, else "auto".
 */
export function default_gemv_policy(): GemvPolicy {
  const v = env("NGPT_GEMV_MAX_M");
  if (v === undefined || v === "" || v === "auto") return "auto";
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > GEMV_MAX_M) {
    throw new Error(`NGPT_GEMV_MAX_M must be "auto" or an integer in 0..${GEMV_MAX_M}, got "${v}"`);
  }
  return n;
}

/**
 * Largest M at which the "auto" policy sends 16-bit weights to the tensor-core gemv (its m8 kernel).
 * H200, batch 16: gpt2 503 us a step against 448 with cuBLASLt, gpt2-xl 3470 against 2560; at batch
 * 4 and 8 the tensor-core gemv was faster for both (docs/perf-notes.md).
 */
const GEMV_MMA_16BIT_MAX_M = 8;

/**
 * The "auto" policy: with `tensor_cores`, the tensor-core gemv wherever it suits (gemv_mma_suits),
 * for 16-bit weights up to M = GEMV_MMA_16BIT_MAX_M; else gemv for M <= 2 and for wide outputs (the
 * LM head) up to M = 8; everything else cuBLASLt. (M = 2 with rows over 8 KiB, gpt2-xl's mlp.c_proj,
 * went to cuBLASLt from the H100 per-op tables of p1 in docs/perf-notes.md until the full-block grids:
 * H200, gpt2-xl batch 2, 1620 us a step with gemv against 1746.)
 */
export function gemv_preferred(a: MatmulArgs, dtype: DType, tensor_cores = true): boolean {
  if (tensor_cores && gemv_mma_suits(a, dtype) && (!!a.w_scale || a.M <= GEMV_MMA_16BIT_MAX_M)) return true;
  if (a.N >= GEMV_WIDE_N) return a.M <= GEMV_WIDE_MAX_M;
  return a.M <= 2;
}

/** Whether `b` is absent or 16-byte aligned (the gemv's and gemm_mma's vector loads and stores). */
const aligned16 = (b: Buf | null | undefined) => !b || b.ptr % 16n === 0n;

/**
 * Whether the gemv kernel can run `a` (validated): M <= GEMV_MAX_M, rows of whole 16-byte
 * vectors (K * element bytes a multiple of 16; int8 weights: K a multiple of 16), x, w and the
 * layernorm vectors 16-byte aligned, and
 * x (M * K elements, and with a layernorm 2 * K more, 3 * K at M = 1) fits the shared memory a block may have (`smem_optin_bytes`).
 */
export function gemv_fits(a: MatmulArgs, dtype: DType, smem_optin_bytes: number): boolean {
  const row_bytes = a.K * dtype_bytes(dtype);
  return a.M <= GEMV_MAX_M && row_bytes % 16 === 0 && (!a.w_scale || a.K % 16 === 0) &&
    gemv_smem_rows(a) * row_bytes <= smem_optin_bytes - GEMV_STATIC_SMEM &&
    [a.x, a.w, a.ln?.weight, a.ln?.bias].every(aligned16);
}

/**
 * Whether gemm_mma.cu runs the matmul `a`: 16-bit storage and weights (no row scales), N a multiple of
 * its tile (at most 65,535 of them: the grid's y) and K of its k-tile, 16-byte aligned operands (its
 * loads and its epilogue's stores are whole 16-byte vectors).
 */
export function gemm_fits(a: MatmulArgs, dtype: DType): boolean {
  return dtype !== "f32" && !a.w_scale && a.N % KERNEL_CONSTANTS.GEMM_TILE === 0 &&
    a.K % KERNEL_CONSTANTS.GEMM_KB === 0 &&
    a.N / KERNEL_CONSTANTS.GEMM_TILE <= 65535 &&
    [a.out, a.x, a.w, a.bias, a.ln?.weight, a.ln?.bias].every(aligned16);
}

/** Most K slices of a gemm_mma launch. */
export const GEMM_SPLIT_MAX = 8;
/** Fewest k-tiles a slice of a split gemm_mma launch takes (its cp.async ring's depth and then some). */
const GEMM_SPLIT_MIN_KT = 4;

/**
 * gemm_mma's K slices for `a` (gemm_mma.cu, split K): 1 where its tiles fill the SMs, else enough slices
 * for about one block an SM, at most GEMM_SPLIT_MAX, each of at least GEMM_SPLIT_MIN_KT k-tiles, over
 * at most GEMV_SPLIT_MAX_TILES tiles (the arrival counters). `forced` (an experiment's count,
 * $NGPT_GEMM_SPLIT) replaces the rule, within the same bounds.
 */
export function gemm_split(a: MatmulArgs, sm_count: number, forced?: number): number {
  const { GEMM_TILE, GEMM_KB } = KERNEL_CONSTANTS;
  const tiles = Math.ceil(a.M / GEMM_TILE) * (a.N / GEMM_TILE);
  if (tiles > GEMV_SPLIT_MAX_TILES) return 1;
  const wanted = forced ?? (tiles >= sm_count ? 1 : Math.ceil(sm_count / tiles));
  return Math.max(1, Math.min(wanted, GEMM_SPLIT_MAX, Math.floor(a.K / GEMM_KB / GEMM_SPLIT_MIN_KT)));
}

/** $NGPT_GEMM_SPLIT (1..GEMM_SPLIT_MAX): an experiment's K slices for every gemm_mma launch. */
export function forced_gemm_split(): number | undefined {
  return env_int("NGPT_GEMM_SPLIT", 1, GEMM_SPLIT_MAX);
}

/**
 * gemm_mma's dynamic shared memory: STAGES A and B tiles of GEMM_TILE rows of GEMM_KB elements plus 16
 * bytes of padding (gemm_mma.cu's PITCH).
 */
export function gemm_smem_bytes(dtype: DType): number {
  const { GEMM_TILE, GEMM_STAGES, GEMM_KB } = KERNEL_CONSTANTS;
  return GEMM_STAGES * 2 * GEMM_TILE * (GEMM_KB * dtype_bytes(dtype) + 16);
}

/**
 * Rows of K elements of a gemv's dynamic shared memory: x's M, then, with a layernorm, its weight and
 * bias (staged before the programmatic-launch wait: gemv.cu's gemv_stage_ln) and, at M = 1, x before
 * it is normalized (gemv_stage_x writes x' into the first row).
 */
function gemv_smem_rows(a: Pick<MatmulArgs, "M" | "ln">): number {
  return a.ln ? a.M + 2 + (a.M === 1 ? 1 : 0) : a.M;
}

/** How to launch the gemv kernel for `a`. */
export interface GemvLaunch {
  kernel: KernelName;
  blocks: number;
  threads: number;
  /** Dynamic shared memory: x, M * K elements (with a layernorm 2 * K more, 3 * K at M = 1: gemv_smem_rows). */
  smem_bytes: number;
  /** Warps sharing a row group (splitting K). */
  ks: number;
  /** ng_gemv's flags: activation (0 none, 1 erf, 2 tanh) | 4 accumulate | 8 f32 out. */
  flags: number;
  /** gemv_mma.cu: blocks splitting K (1: none; block b takes slice b % kslices). */
  kslices: number;
}

/**
 * A gemv grid picked by hand instead of gemv_launch's rule: for benchmarks that search the shapes
 * (tests/gpu/gemv_bench.ts --sweep), through CudaBackend.gemv_shape.
 */
export interface GemvShape {
  /** Warps sharing a row group (splitting K). */
  ks: number;
  /** Row groups a block (ks * per_tile warps, at most GEMV_MAX_WARPS). */
  per_tile: number;
  /** Blocks (they loop over further tiles); with kslices, a multiple of it. */
  blocks: number;
  /** The tensor-core gemv only: blocks splitting K (default 1, no split). */
  kslices?: number;
}

/**
 * The gemv variant (the smallest bound >= M; gemv_mma.cu's where it suits and `tensor_cores`) and
 * its grid. Two shapes, each the faster one where measured:
 * - M <= 2 (and the tensor-core gemv), grouped (gemv_grouped_grid): full blocks of row groups, K
 *   split over `ks` warps, and no more blocks than fit the SMs at once.
 * - M > 2 on CUDA cores, persistent: a block is one row group (K split so that a lane loads its share
 *   in about one chunk, ks up to 4); as many blocks as fit the SMs at once (by registers at 128 per
 *   thread, threads and shared memory), each looping over row groups.
 */
export function gemv_launch(
  a: MatmulArgs,
  dtype: DType,
  sm_count: number,
  smem_per_sm: number,
  tensor_cores = true,
  max_split = GEMV_SPLIT_MAX,
  shape: GemvShape | null = null,
): GemvLaunch {
  if (shape) return gemv_shaped(a, dtype, sm_count, smem_per_sm, tensor_cores, shape);
  if (tensor_cores && gemv_mma_suits(a, dtype)) {
    return gemv_mma_launch(a, dtype, sm_count, smem_per_sm, max_split);
  }
  const v = GEMV_VARIANTS.find(([m]) => a.M <= m);
  if (!v) throw new Error(`internal: gemv for M=${a.M} above ${GEMV_MAX_M}`);
  // Int8 weights (w_scale): the W8 variant, whose vectors hold 16 weights at M <= 2 (K / 16 a row),
  // else as many as a 16-bit vector (gemv.cu).
  const [, kernel16, per_lane, kernel8] = v;
  const kernel = a.w_scale ? kernel8 : kernel16;
  const row_bytes = a.K * dtype_bytes(dtype), smem_bytes = gemv_smem_rows(a) * row_bytes;
  const nvec = (a.w_scale && a.M <= 2 ? a.K : row_bytes) / 16;
  const groups = Math.ceil(a.N / GEMV_ROWS);
  const flags = gemv_flags(a);
  const ks_for = (max: number) => Math.max(1, Math.min(max, Math.ceil(nvec / (32 * per_lane))));
  if (a.M <= 2) {
    // ks stays at one chunk a lane even where that takes more tiles than fit at once (the blocks
    // loop): fewer warps in one wave measured slower (H200, gpt2-xl batch 1, 1441 against 1417 us).
    const ks = ks_for(GEMV_MAX_WARPS);
    const g = gemv_grouped_grid(groups, ks, ks, smem_bytes, sm_count, smem_per_sm);
    return { kernel, ...g, smem_bytes, kslices: 1, flags };
  }
  const ks = ks_for(GEMV_MAX_KS), threads = 32 * ks;
  const per_sm = gemv_blocks_per_sm(32, threads, smem_bytes, smem_per_sm);
  return { kernel, blocks: Math.min(groups, sm_count * per_sm), threads, smem_bytes, ks, kslices: 1, flags };
}

/** gemv_launch's variant with the grid of `shape` (checked: each kernel's bounds on warps and tiles). */
function gemv_shaped(
  a: MatmulArgs,
  dtype: DType,
  sm_count: number,
  smem_per_sm: number,
  tensor_cores: boolean,
  shape: GemvShape,
): GemvLaunch {
  const { ks, per_tile, blocks, kslices = 1 } = shape;
  const what = `gemv shape ${JSON.stringify(shape)} for M=${a.M} N=${a.N} K=${a.K}`;
  const int_in = (v: number, lo: number, hi: number) => Number.isInteger(v) && v >= lo && v <= hi;
  if (
    !int_in(ks, 1, GEMV_MAX_WARPS) || !int_in(per_tile, 1, GEMV_MAX_WARPS / ks) || !int_in(blocks, 1, 65535)
  ) {
    throw new Error(`${what}: needs 1 <= ks * per_tile <= ${GEMV_MAX_WARPS} and 1 <= blocks <= 65535`);
  }
  const mma = tensor_cores && gemv_mma_suits(a, dtype);
  if (!int_in(kslices, 1, mma && !a.ln ? GEMV_SPLIT_MAX : 1) || blocks % kslices !== 0) {
    throw new Error(
      `${what}: kslices must divide blocks, and exceed 1 only on the tensor-core gemv without ln`,
    );
  }
  const base = mma
    ? gemv_mma_shape(a, dtype, sm_count, smem_per_sm, kslices)
    : gemv_launch(a, dtype, sm_count, smem_per_sm, false);
  const l = { ...base, ks, threads: 32 * ks * per_tile, blocks };
  if (!split_fits(a, l)) {
    throw new Error(
      `${what}: a split block passes at most ${GEMV_SPLIT_TILES_PER_BLOCK} of the ${split_tiles(a, l)} tiles`,
    );
  }
  return l;
}

/**
 * The grouped shape's grid for `groups` row groups (gemv.cu at M <= 2, gemv_mma.cu unsplit). Blocks
 * are full: as many groups as GEMV_MAX_WARPS warps hold, so that one x staging (and layernorm) serves
 * the most weight rows. K is split over the largest ks in ks_min..ks_max (ks_max: about one chunk
 * a lane) whose tiles all fit the SMs at once, else over ks_min (fewest tiles); blocks beyond what
 * fits at once would run as a second wave, so the grid stops there and blocks loop over the rest.
 * Measured on an H200 against the rule before, which spread smaller blocks over every SM and let
 * up to 8 blocks an SM queue (docs/perf-notes.md, fifth round): a decode step of gpt2-xl 1660 ->
 * 1417 us at batch 1 and 2398 -> 2316 at batch 8, of gpt2 216 -> 200 and 323 -> 306.
 */
function gemv_grouped_grid(
  groups: number,
  ks_max: number,
  ks_min: number,
  smem_bytes: number,
  sm_count: number,
  smem_per_sm: number,
): { ks: number; threads: number; blocks: number } {
  if (!(ks_min >= 1 && ks_min <= ks_max && ks_max <= GEMV_MAX_WARPS)) {
    throw new Error(`internal: gemv ks range ${ks_min}..${ks_max}`);
  }
  for (let ks = ks_max;; ks--) {
    const per_tile = Math.floor(GEMV_MAX_WARPS / ks), threads = 32 * ks * per_tile;
    const tiles = Math.ceil(groups / per_tile);
    const at_once = sm_count *
      gemv_blocks_per_sm(GEMV_GROUPED_BLOCKS_PER_SM, threads, smem_bytes, smem_per_sm);
    if (tiles <= at_once || ks === ks_min) return { ks, threads, blocks: Math.min(tiles, at_once) };
  }
}

/**
 * Blocks of `threads` threads and `smem_bytes` of x staging that fit one SM at once, at most `cap`
 * (registers at GEMV_MAX_REGS per thread, 2048 threads, shared memory); at least 1.
 */
function gemv_blocks_per_sm(cap: number, threads: number, smem_bytes: number, smem_per_sm: number): number {
  return Math.max(
    1,
    Math.min(
      cap,
      Math.floor(65536 / (GEMV_MAX_REGS * threads)),
      Math.floor(2048 / threads),
      Math.floor(smem_per_sm / (smem_bytes + GEMV_STATIC_SMEM)),
    ),
  );
}

/** ng_gemv's, ng_gemv_mma's and ng_gemm_mma's flags (GemvLaunch.flags). */
export function gemv_flags(a: MatmulArgs): number {
  return ACTIVATION_CODE[a.act] | (a.accumulate ? 4 : 0) | (a.out_f32 ? 8 : 0);
}

/** Most K slices of a split gemv_mma launch (GemvLaunch.kslices). */
export const GEMV_SPLIT_MAX = 4;
/** Most row-group tiles of a split launch: the arrival counters' length (ops.ts allocates them). */
export const GEMV_SPLIT_MAX_TILES = 4096;
/** Most tiles one block of a split launch passes (gemv_mma.cu keeps a bit for each). */
const GEMV_SPLIT_TILES_PER_BLOCK = 32;
/** x bytes a block of the tensor-core gemv stages, from which K is split across blocks. */
const GEMV_SPLIT_X_BYTES = 32 << 10;

/**
 * Most K slices a gemv_mma launch may split into: $NGPT_GEMV_SPLIT (1 to GEMV_SPLIT_MAX; 1 never
 * splits) when set, else GEMV_SPLIT_MAX.
 */
export function default_gemv_split(): number {
  return env_int("NGPT_GEMV_SPLIT", 1, GEMV_SPLIT_MAX) ?? GEMV_SPLIT_MAX;
}

/**
 * gemv_mma.cu's variant and grid (gemv_mma_suits): row groups of GEMV_MMA_ROWS weight rows; K split
 * over `ks` warps so that a lane loads its share in about one chunk (GEMV_MMA_CHUNK_BYTES of 64-k
 * blocks); as gemv's grouped shape, a block holds several groups when there are more than SMs.
 * Without a layernorm, where the warps of a row group would each need more than one chunk, K is also
 * split across blocks into `kslices` (x bytes / GEMV_SPLIT_X_BYTES, at most `max_split`) of at least
 * one chunk each: a block stages its slice of x only (gpt2-xl's mlp.c_proj at M = 8: 100 KB of x a
 * block unsplit, as much as its weights).
 */
function gemv_mma_launch(
  a: MatmulArgs,
  dtype: DType,
  sm_count: number,
  smem_per_sm: number,
  max_split: number,
): GemvLaunch {
  const x_bytes = a.M * a.K * dtype_bytes(dtype), blocks_k = a.K / GEMV_MMA_KB;
  const per_chunk = mma_chunk_blocks(a);
  // Split only where the unsplit warps would each need more than one chunk (H200, batch 8: gpt2-xl's
  // mlp.c_proj in 16 bits, 2585 -> 2400 us a step; where one chunk sufficed, splitting cost gpt2 16%
  // and gpt2-xl's int8 weights 9%).
  const one_chunk = Math.ceil(blocks_k / per_chunk) <= GEMV_MAX_WARPS;
  const kslices = a.ln || one_chunk ? 1 : Math.max(
    1,
    Math.min(max_split, Math.ceil(x_bytes / GEMV_SPLIT_X_BYTES), Math.floor(blocks_k / per_chunk)),
  );
  const l = gemv_mma_shape(a, dtype, sm_count, smem_per_sm, kslices);
  return split_fits(a, l) ? l : gemv_mma_shape(a, dtype, sm_count, smem_per_sm, 1);
}

/** Row-group tiles of a tensor-core gemv launch (GEMV_MMA_ROWS rows a group, threads / 32 / ks groups a tile). */
function split_tiles(a: MatmulArgs, l: GemvLaunch): number {
  return Math.ceil(Math.ceil(a.N / GEMV_MMA_ROWS) / (l.threads / 32 / l.ks));
}

/**
 * Whether launch `l` can run: unsplit, or a split whose blocks each pass at most
 * GEMV_SPLIT_TILES_PER_BLOCK tiles (gemv_mma.cu keeps a bit for each) and whose tiles the
 * GEMV_SPLIT_MAX_TILES arrival counters cover.
 */
function split_fits(a: MatmulArgs, l: GemvLaunch): boolean {
  if (l.kslices === 1) return true;
  const tiles = split_tiles(a, l);
  return tiles <= GEMV_SPLIT_MAX_TILES && tiles <= GEMV_SPLIT_TILES_PER_BLOCK * (l.blocks / l.kslices);
}

/** 64-k blocks a lane of gemv_mma.cu loads at once (a chunk): 16-bit weights 8 k a 16-byte load, int8 16. */
function mma_chunk_blocks(a: MatmulArgs): number {
  return GEMV_MMA_CHUNK_BYTES / (a.w_scale ? 16 : 32);
}

/** gemv_mma_launch's grid for `kslices` slices of K. */
function gemv_mma_shape(
  a: MatmulArgs,
  dtype: DType,
  sm_count: number,
  smem_per_sm: number,
  kslices: number,
): GemvLaunch {
  const split = kslices > 1 ? "split_" : "", w8 = a.w_scale ? "w8_" : "";
  const kernel = `gemv_mma_${split}${w8}m${a.M <= 8 ? 8 : 16}` as KernelName;
  const groups = Math.ceil(a.N / GEMV_MMA_ROWS), blocks_k = a.K / GEMV_MMA_KB;
  const per_chunk = mma_chunk_blocks(a);
  // The widest slice (the kernel cuts K at slice * blocks_k / kslices).
  const slice_k = Math.ceil(blocks_k / kslices),
    smem_bytes = (kslices > 1 ? a.M : gemv_smem_rows(a)) * slice_k * GEMV_MMA_KB * dtype_bytes(dtype);
  // Unsplit: the grouped grid, with K over at least 2 warps where it has 2 blocks (a warp's mma
  // steps over its k blocks are one dependent chain; H200, gpt2's int8 c_attn at M = 8, one warp a
  // row group 5.1 us, two 4.5). The split keeps the shape it was measured with.
  const ks_chunk = Math.max(1, Math.min(GEMV_MAX_WARPS, Math.ceil(slice_k / per_chunk)));
  if (kslices === 1) {
    const ks_min = Math.min(2, slice_k, GEMV_MAX_WARPS);
    const g = gemv_grouped_grid(
      groups,
      Math.max(ks_chunk, ks_min),
      ks_min,
      smem_bytes,
      sm_count,
      smem_per_sm,
    );
    return { kernel, ...g, smem_bytes, kslices, flags: gemv_flags(a) };
  }
  const ks = ks_chunk;
  const per_tile = Math.max(1, Math.min(Math.floor(GEMV_MAX_WARPS / ks), Math.floor(groups / sm_count)));
  const threads = 32 * ks * per_tile, tiles = Math.ceil(groups / per_tile);
  const per_sm = gemv_blocks_per_sm(GEMV_GROUPED_BLOCKS_PER_SM, threads, smem_bytes, smem_per_sm);
  const per_slice = Math.max(1, Math.min(tiles, Math.floor(sm_count * per_sm / kslices)));
  return { kernel, blocks: kslices * per_slice, threads, smem_bytes, ks, kslices, flags: gemv_flags(a) };
}

/** Largest power of two (at most 256) dividing an address. */
function alignment(p: bigint): number {
  let a = 1;
  while (a < 256 && p % BigInt(a * 2) === 0n) a *= 2;
  return a;
}

let loaded = false;

/** Opens cuBLASLt (once per process) or throws saying where it looked. */
function load_cublaslt(ctx: CudaContext): void {
  if (loaded) return;
  const s = ctx.lib.symbols;
  const reasons: string[] = [];
  for (const paths of [cublaslt_candidates(), cublaslt_candidates(python_site_dirs())]) {
    const list = nul_list(paths);
    if (s.ng_cublaslt_load(list, BigInt(list.length)) === 0) {
      loaded = true;
      return;
    }
    reasons.push(ctx.lib.last_error());
  }
  throw new NativeError(
    "ng_cublaslt_load",
    -1,
    `cuBLASLt not found (set NGPT_CUBLASLT to libcublasLt.so, or install the CUDA toolkit): ${
      reasons.join("; ")
    }`,
  );
}

/** cuBLASLt state of one backend: handle, workspace, plans. */
export class Matmuls {
  #ctx: CudaContext;
  #dtype: DType;
  #handle: bigint;
  #workspace: bigint;
  #plans = new Map<string, MatmulPlan>();
  /** Layernormed inputs of the cuBLASLt path. */
  readonly input_scratch: GrowingScratch;
  /** Dequantized int8 weights of the cuBLASLt path (sized exactly: the largest layer). */
  readonly weight_scratch: GrowingScratch;

  constructor(ctx: CudaContext, dtype: DType) {
    this.#ctx = ctx;
    this.#dtype = dtype;
    this.input_scratch = new GrowingScratch(ctx, "matmul layernorm scratch", true);
    this.weight_scratch = new GrowingScratch(ctx, "matmul dequantized weight scratch", false);
    load_cublaslt(ctx);
    const out = new BigUint64Array(1);
    ctx.lib.check(ctx.lib.symbols.ng_cublaslt_create(ctx.ctx, out), "ng_cublaslt_create");
    this.#handle = out[0];
    try {
      this.#workspace = ctx.mem_alloc(WORKSPACE_BYTES);
    } catch (e) {
      ctx.lib.symbols.ng_cublaslt_destroy(ctx.ctx, this.#handle);
      throw e;
    }
  }

  /** The autotuned plans' choices, by plan key. */
  tuned(): ({ key: string } & TunedChoice)[] {
    return [...this.#plans].filter(([, p]) => p.tuned).map(([key, p]) => ({ key, ...p.tuned! }));
  }

  /** Number of plans. */
  count(): number {
    return this.#plans.size;
  }

  /** Checks a matmul's arguments against the contract; throws naming the problem. */
  validate(a: MatmulArgs): void {
    const what = `matmul into "${a.out.label}" (M=${a.M} N=${a.N} K=${a.K})`;
    for (const k of ["M", "N", "K"] as const) {
      if (!Number.isInteger(a[k]) || a[k] <= 0) throw new Error(`${what}: ${k} must be a positive integer`);
    }
    if (a.accumulate && a.act !== "none") {
      throw new Error(`${what}: accumulate needs act "none", got "${a.act}"`);
    }
    if (a.out_f32 && a.accumulate) throw new Error(`${what}: out_f32 cannot accumulate`);
    if (a.out_f32 && a.act !== "none") throw new Error(`${what}: out_f32 needs act "none"`);
    if (a.out_f32 && a.bias && this.#dtype !== "f32") {
      throw new Error(`${what}: a bias with out_f32 is not supported for ${this.#dtype} weights`);
    }
    const es = this.#dtype === "f32" ? 4 : 2;
    const checks: [string, { bytes: number; label: string }, number][] = [
      ["x", a.x, a.M * a.K * es],
      ["w", a.w, a.N * a.K * (a.w_scale ? 1 : es)],
      ["out", a.out, a.M * a.N * (a.out_f32 ? 4 : es)],
    ];
    if (a.bias) checks.push(["bias", a.bias, a.N * es]);
    if (a.w_scale) {
      if (a.K % 4 !== 0) throw new Error(`${what}: int8 weights need K a multiple of 4`);
      checks.push(["w_scale", a.w_scale, a.N * 4]);
    }
    if (a.ln) {
      if (!(a.ln.eps >= 0)) throw new Error(`${what}: ln.eps must be a non-negative number, got ${a.ln.eps}`);
      checks.push(["ln.weight", a.ln.weight, a.K * es]);
      if (a.ln.bias) checks.push(["ln.bias", a.ln.bias, a.K * es]);
    }
    for (const [name, b, need] of checks) {
      if (b.bytes < need) {
        throw new Error(`${what}: ${name} "${b.label}" holds ${b.bytes} bytes, needs ${need}`);
      }
    }
  }

  /**
   * The plan for `a`, created when `may_create` (outside capture), else it must exist. A new plan
   * is autotuned on `stream` when `autotune` (see #autotune).
   */
  plan(a: MatmulArgs, may_create: boolean, stream = 0n, autotune = false): MatmulPlan {
    const out_dtype = a.out_f32 ? 0 : DTYPE_CODE[this.#dtype];
    const bias = a.bias ? a.bias.ptr : 0n;
    const key = [
      a.M,
      a.N,
      a.K,
      out_dtype,
      a.act,
      a.accumulate ? 1 : 0,
      a.bias ? alignment(bias) : 0,
      alignment(a.w.ptr),
      alignment(a.x.ptr),
      alignment(a.out.ptr),
    ].join(",");
    const hit = this.#plans.get(key);
    if (hit) return hit;
    if (!may_create) {
      throw new Error(
        `internal: no cuBLASLt plan for matmul into "${a.out.label}" (${key}) during graph capture ` +
          "(run_step's record() must enqueue the same ops on its dry run and its capture)",
      );
    }
    let p: MatmulPlan | null = null;
    if (a.act === "gelu_tanh") {
      p = this.#try_create(a, out_dtype, a.bias ? EPILOGUE_GELU_BIAS : EPILOGUE_GELU, bias, "none");
    }
    p ??= this.#try_create(a, out_dtype, a.bias ? EPILOGUE_BIAS : EPILOGUE_DEFAULT, bias, a.act);
    if (!p) {
      throw new Error(
        `matmul into "${a.out.label}": cuBLASLt has no algorithm for M=${a.M} N=${a.N} K=${a.K} ${this.#dtype}: ` +
          this.#ctx.lib.last_error(),
      );
    }
    this.#plans.set(key, p);
    if (autotune) {
      try {
        p.tuned = this.#autotune(a, p, stream);
      } catch (e) {
        this.#plans.delete(key);
        this.#ctx.lib.symbols.ng_cublaslt_plan_destroy(p.plan);
        throw e;
      }
    }
    return p;
  }

  /**
   * Times each of the heuristic's candidates for `a` (cuBLASLt's first pick is not always the
   * fastest for the skinny M of decode steps) and selects the fastest when it beats the first by
   * more than AUTOTUNE_MIN_GAIN. Each run writes a scratch
   * output (never a.out: an accumulating matmul must not add twice) after flushing the L2 with a
   * memset, as a decode step meets its weights cold. Synchronizes the stream.
   */
  #autotune(a: MatmulArgs, p: MatmulPlan, stream: bigint): TunedChoice | undefined {
    const s = this.#ctx.lib.symbols, ctx = this.#ctx;
    const n = s.ng_cublaslt_plan_algos(p.plan);
    if (n <= 1) return undefined;
    const out_bytes = a.M * a.N * (a.out_f32 ? 4 : dtype_bytes(this.#dtype));
    const scratch = ctx.mem_alloc(out_bytes + FLUSH_BYTES);
    const t0 = ctx.event_create(0), t1 = ctx.event_create(0);
    try {
      const trial = { ...a, out: { ptr: scratch, bytes: out_bytes, label: "autotune output" } };
      const us: number[] = [];
      for (let i = 0; i < n; i++) {
        ctx.lib.check(s.ng_cublaslt_plan_select(p.plan, i), "ng_cublaslt_plan_select");
        let best = Infinity;
        for (let r = 0; r < AUTOTUNE_RUNS; r++) {
          ctx.memset8(scratch + BigInt(out_bytes), r & 0xff, FLUSH_BYTES, stream);
          ctx.event_record(t0, stream);
          this.run(trial, p, stream);
          ctx.event_record(t1, stream);
          ctx.event_sync(t1);
          if (r > 0) best = Math.min(best, ctx.event_elapsed_ms(t0, t1) * 1000);
        }
        us.push(best);
      }
      // A clear winner only: near-ties would make the choice (and the rounding) vary run to run.
      const fastest = us.indexOf(Math.min(...us));
      const pick = us[fastest] < (1 - AUTOTUNE_MIN_GAIN) * us[0] ? fastest : 0;
      ctx.lib.check(s.ng_cublaslt_plan_select(p.plan, pick), "ng_cublaslt_plan_select");
      return { index: pick, us: us[pick], first_us: us[0], candidates: n };
    } finally {
      ctx.event_destroy(t0);
      ctx.event_destroy(t1);
      ctx.stream_sync(stream);
      ctx.mem_free(scratch);
    }
  }

  #try_create(
    a: MatmulArgs,
    out_dtype: number,
    epilogue: number,
    bias: bigint,
    post_gelu: Activation,
  ): MatmulPlan | null {
    const out = new BigUint64Array(1);
    const s = this.#ctx.lib.symbols.ng_cublaslt_plan_create(
      this.#ctx.ctx,
      this.#handle,
      BigInt(a.M),
      BigInt(a.N),
      BigInt(a.K),
      DTYPE_CODE[this.#dtype],
      out_dtype,
      epilogue,
      a.accumulate ? 1 : 0,
      bias,
      alignment(a.w.ptr),
      alignment(a.x.ptr),
      alignment(a.out.ptr),
      BigInt(WORKSPACE_BYTES),
      out,
    );
    if (s === CUBLAS_STATUS_NOT_SUPPORTED) return null;
    this.#ctx.lib.check(s, "ng_cublaslt_plan_create");
    return { plan: out[0], post_gelu };
  }

  /** Enqueues the gemm of a planned matmul on `stream`. */
  run(a: MatmulArgs, p: MatmulPlan, stream: bigint): void {
    const s = this.#ctx.lib.symbols.ng_cublaslt_matmul(
      this.#ctx.ctx,
      this.#handle,
      p.plan,
      a.out.ptr,
      a.x.ptr,
      a.w.ptr,
      a.bias ? a.bias.ptr : 0n,
      this.#workspace,
      BigInt(WORKSPACE_BYTES),
      stream,
    );
    if (s !== 0) this.#ctx.lib.check(s, `ng_cublaslt_matmul(into "${a.out.label}")`);
  }

  /**
   * A buffer of at least `bytes` for a layernormed matmul input: the last one when big enough,
   * else a new one, which only `may_grow` (outside graph capture) allows.
   */
  /** Destroys the plans, the handle, the workspace and the scratch buffers. */
  dispose(): void {
    const s = this.#ctx.lib.symbols;
    this.input_scratch.dispose();
    this.weight_scratch.dispose();
    for (const p of this.#plans.values()) s.ng_cublaslt_plan_destroy(p.plan);
    this.#plans.clear();
    this.#ctx.lib.check(s.ng_cublaslt_destroy(this.#ctx.ctx, this.#handle), "ng_cublaslt_destroy");
    this.#ctx.mem_free(this.#workspace);
  }
}
