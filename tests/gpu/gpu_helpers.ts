/**
 * Shared helpers of the GPU tests: the skip rule, deterministic random data, dtype round trips
 * and naive TypeScript references of the ops (in f64).
 */
import { create_cuda_backend, cuda_status, type CudaBackend } from "../../src/backend/cuda.ts";
import type { Buf, DType } from "../../src/backend/backend.ts";
import { rng } from "../helpers/rng.ts";

/** Whether (and why not) CUDA works here. */
export const STATUS = cuda_status();

/**
 * Registers a file's tests when a CUDA device is present; otherwise one ignored test whose name
 * says why, so the skip shows in the output.
 */
export function gpu_suite(file: string, register: () => void): void {
  if (STATUS.ok) register();
  else Deno.test({ name: `${file}: skipped: no CUDA device (${STATUS.reason})`, ignore: true, fn() {} });
}

/** A CUDA backend whose kernel cache is $NGPT_CACHE (run_on_device.sh points it at a temp dir). */
export function backend(dtype: DType, graphs = true): CudaBackend {
  return create_cuda_backend({ dtype, graphs });
}

/**
 * `B` token prompts of `P` tokens below `V`, different per sequence and the same every run (the
 * decode tools' input: fused_trace.ts, profile_decode.ts, step_trace.ts).
 */
export function synthetic_prompts(B: number, P: number, V: number): number[][] {
  return Array.from(
    { length: B },
    (_, b) => Array.from({ length: P }, (_, t) => (b * 7919 + t * 104729) % V),
  );
}

/** The decode tools' options for which model to run (random weights), at what batch and weights. */
export const DECODE_TOOL_OPTIONS = {
  model: { type: "string", default: "gpt2" },
  batch: { type: "string", default: "1" },
  weights: { type: "string", default: "dtype" },
} as const;

/** A seeded uniform generator in [0, 1) (mulberry32). */
export { rng };
export { rel_l2 } from "../helpers/compare.ts";

/** `n` seeded normal values times `scale`. */
export function randn(n: number, seed: number, scale = 1): Float32Array {
  const u = rng(seed), out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const a = Math.max(u(), 1e-12), b = u();
    out[i] = scale * Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * b);
  }
  return out;
}

function f16_to_f32(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Decodes raw little-endian elements of `dtype` to f32. */
export function decode(bytes: Uint8Array, dtype: DType): Float32Array {
  if (dtype === "f32") return new Float32Array(bytes.slice().buffer);
  const u16 = new Uint16Array(bytes.slice().buffer);
  const out = new Float32Array(u16.length);
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  for (let i = 0; i < u16.length; i++) {
    if (dtype === "bf16") {
      u[0] = u16[i] << 16;
      out[i] = f[0];
    } else {
      out[i] = f16_to_f32(u16[i]);
    }
  }
  return out;
}

/** Reads `n` elements of the backend's dtype from `buf` as f32. */
export function read_f32(be: CudaBackend, buf: Buf, n: number, dtype: DType = be.dtype): Float32Array {
  const es = dtype === "f32" ? 4 : 2;
  const raw = new Uint8Array(n * es);
  be.read(buf, raw);
  return decode(raw, dtype);
}

/** Uploads f32 data converted to the backend's dtype; returns the buffer and the stored values. */
export function upload(
  be: CudaBackend,
  data: Float32Array,
  label: string,
): { buf: Buf; values: Float32Array } {
  const es = be.dtype === "f32" ? 4 : 2;
  const buf = be.alloc(data.length * es, label);
  be.write_weight(buf, new Uint8Array(data.buffer, data.byteOffset, data.byteLength), "f32", data.length);
  return { buf, values: read_f32(be, buf, data.length) };
}

/** Allocates and fills an int32 buffer. */
export function upload_i32(be: CudaBackend, data: ArrayLike<number>, label: string): Buf {
  const a = Int32Array.from(data);
  const buf = be.alloc(a.byteLength, label);
  be.write(buf, a);
  return buf;
}

/** Allocates and fills an f32 buffer whatever the backend dtype. */
export function upload_raw_f32(be: CudaBackend, data: ArrayLike<number>, label: string): Buf {
  const a = Float32Array.from(data);
  const buf = be.alloc(a.byteLength, label);
  be.write(buf, a);
  return buf;
}

/** Reads `n` int32 values. */
export function read_i32(be: CudaBackend, buf: Buf, n: number): Int32Array {
  const out = new Int32Array(n);
  be.read(buf, out);
  return out;
}

/** Tolerance on relative L2 error for a storage dtype. */
export function tol(dtype: DType, f32 = 1e-4): number {
  return dtype === "f32" ? f32 : dtype === "f16" ? 1e-2 : 2e-2;
}

/** GELU: exact (erf) or the tanh approximation. */
export function gelu(x: number, act: "gelu_erf" | "gelu_tanh"): number {
  if (act === "gelu_tanh") return 0.5 * x * (1 + Math.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}

/** erf to ~1e-15 (Taylor series near 0, continued fraction tail). */
export function erf(x: number): number {
  const s = Math.sign(x), a = Math.abs(x);
  if (a < 3) {
    let sum = 0, term = a, n = 0;
    while (Math.abs(term) > 1e-17 * Math.abs(sum) || n < 3) {
      sum += term / (2 * n + 1);
      n++;
      term *= -a * a / n;
      if (n > 200) break;
    }
    return s * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc continued fraction (Lentz) for |x| >= 3.
  let f = a, c = a, d = 0;
  for (let i = 1; i < 100; i++) {
    const an = i / 2;
    d = a + an * d;
    d = 1 / d;
    c = a + an / c;
    f *= c * d;
  }
  const erfc = Math.exp(-a * a) / Math.sqrt(Math.PI) / f;
  return s * (1 - erfc);
}

/** Each of the `rows` rows of x[rows, C] layernormed in f64 (biased variance, as torch), times w, plus b. */
export function ref_layernorm(
  x: ArrayLike<number>,
  rows: number,
  C: number,
  w: ArrayLike<number>,
  b: ArrayLike<number> | null,
  eps = 1e-5,
): Float64Array {
  const out = new Float64Array(rows * C);
  for (let r = 0; r < rows; r++) {
    let mean = 0, v = 0;
    for (let c = 0; c < C; c++) mean += x[r * C + c];
    mean /= C;
    for (let c = 0; c < C; c++) v += (x[r * C + c] - mean) ** 2;
    const rstd = 1 / Math.sqrt(v / C + eps);
    for (let c = 0; c < C; c++) out[r * C + c] = (x[r * C + c] - mean) * rstd * w[c] + (b ? b[c] : 0);
  }
  return out;
}

/** out[M, N] = x[M, K] @ w[N, K]^T (+ bias) in f64. */
export function ref_matmul(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  bias: ArrayLike<number> | null,
  M: number,
  N: number,
  K: number,
): Float64Array {
  const out = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = bias ? bias[n] : 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      out[m * N + n] = s;
    }
  }
  return out;
}

/** Philox4x32-10 of (counter, key): four u32 words. */
export function philox4x32_10(ctr: [number, number, number, number], k0: number, k1: number): number[] {
  let [c0, c1, c2, c3] = ctr.map((v) => v >>> 0);
  const mulhilo = (a: number, b: number): [number, number] => {
    const p = BigInt(a) * BigInt(b);
    return [Number(p >> 32n) >>> 0, Number(p & 0xffffffffn) >>> 0];
  };
  k0 >>>= 0;
  k1 >>>= 0;
  for (let i = 0; i < 10; i++) {
    const [hi0, lo0] = mulhilo(0xD2511F53, c0);
    const [hi1, lo1] = mulhilo(0xCD9E8D57, c2);
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
    k0 = (k0 + 0x9E3779B9) >>> 0;
    k1 = (k1 + 0xBB67AE85) >>> 0;
  }
  return [c0, c1, c2, c3];
}
