/**
 * Matmuls through cuBLASLt: one plan (descriptors + the heuristic's algorithm) per shape, dtype,
 * epilogue, accumulate and pointer alignments, created outside any graph capture (run_step's dry
 * run creates them; a plan missing during capture is a bug and throws). A single workspace
 * (32 MiB) is allocated up front and set in every plan.
 *
 * Activations: "gelu_tanh" uses cuBLASLt's GELU(_BIAS) epilogue (tanh form = HF gelu_new) when the
 * heuristic has an algorithm for it, else BIAS + the bias_gelu kernel; "gelu_erf" (nanoGPT) is
 * always the BIAS epilogue + the bias_gelu kernel (the caller launches it when `post_gelu` says).
 * @module
 */
import type { DType, MatmulArgs } from "../backend.ts";
import type { CudaContext } from "./driver.ts";
import { dtype_code } from "./kernels.ts";
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
  /** After the gemm, apply GELU in place: null none, 0 erf, 1 tanh (bias already added). */
  post_gelu: 0 | 1 | null;
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

  constructor(ctx: CudaContext, dtype: DType) {
    this.#ctx = ctx;
    this.#dtype = dtype;
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
      ["w", a.w, a.N * a.K * es],
      ["out", a.out, a.M * a.N * (a.out_f32 ? 4 : es)],
    ];
    if (a.bias) checks.push(["bias", a.bias, a.N * es]);
    for (const [name, b, need] of checks) {
      if (b.bytes < need) {
        throw new Error(`${what}: ${name} "${b.label}" holds ${b.bytes} bytes, needs ${need}`);
      }
    }
  }

  /** The plan for `a`, created when `may_create` (outside capture), else it must exist. */
  plan(a: MatmulArgs, may_create: boolean): MatmulPlan {
    const out_dtype = a.out_f32 ? 0 : dtype_code(this.#dtype);
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
      p = this.#try_create(a, out_dtype, a.bias ? EPILOGUE_GELU_BIAS : EPILOGUE_GELU, bias, null);
    }
    p ??= this.#try_create(
      a,
      out_dtype,
      a.bias ? EPILOGUE_BIAS : EPILOGUE_DEFAULT,
      bias,
      a.act === "gelu_erf" ? 0 : a.act === "gelu_tanh" ? 1 : null,
    );
    if (!p) {
      throw new Error(
        `matmul into "${a.out.label}": cuBLASLt has no algorithm for M=${a.M} N=${a.N} K=${a.K} ${this.#dtype}: ` +
          this.#ctx.lib.last_error(),
      );
    }
    this.#plans.set(key, p);
    return p;
  }

  #try_create(
    a: MatmulArgs,
    out_dtype: number,
    epilogue: number,
    bias: bigint,
    post_gelu: 0 | 1 | null,
  ): MatmulPlan | null {
    const out = new BigUint64Array(1);
    const s = this.#ctx.lib.symbols.ng_cublaslt_plan_create(
      this.#ctx.ctx,
      this.#handle,
      BigInt(a.M),
      BigInt(a.N),
      BigInt(a.K),
      dtype_code(this.#dtype),
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

  /** Destroys the plans, the handle and the workspace. */
  dispose(): void {
    const s = this.#ctx.lib.symbols;
    for (const p of this.#plans.values()) s.ng_cublaslt_plan_destroy(p.plan);
    this.#plans.clear();
    this.#ctx.lib.check(s.ng_cublaslt_destroy(this.#ctx.ctx, this.#handle), "ng_cublaslt_destroy");
    this.#ctx.mem_free(this.#workspace);
  }
}
