/**
 * Micro-benchmark of the small-M matmuls of GPT-2 decode: the gemv kernel against the layernorm
 * kernel + cuBLASLt, per shape and M, each op timed inside a CUDA graph of 8..128 copies reading
 * distinct weights (so launch gaps count as in a real step, and the weights come from memory, not
 * L2). Prints one line per (shape, M) and, with --json, writes the rows; --gemm adds gemm_mma.cu's
 * time (where it fits: 16-bit weights, N a multiple of 64).
 *
 *   deno run -A tests/gpu/gemv_bench.ts [--ms 1,2,4,8,12,16] [--json out.json]
 *
 * With --sweep, times the gemv alone on every grid worth trying (GemvShape: warps a row group,
 * row groups a block, blocks) against the rule's (gemv_launch), re-times the fastest few and the
 * rule's, and prints the best; --w8 uses int8 weights, --only a comma list of shape names to keep.
 * @module
 */
import { parseArgs } from "node:util";
import { create_cuda_backend } from "../../src/backend/cuda.ts";
import type { Activation, MatmulArgs } from "../../src/backend/backend.ts";
import { sub_buf } from "../../src/backend/buf.ts";
import { gemv_mma_suits, type GemvShape } from "../../src/backend/cuda/matmul.ts";
import { KERNEL_CONSTANTS } from "../../src/backend/cuda/kernels.ts";
import { padded_vocab } from "../../src/model/gpt.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    ms: { type: "string", default: "1,2,4,8,12,16" },
    json: { type: "string" },
    sweep: { type: "boolean", default: false },
    w8: { type: "boolean", default: false },
    gemm: { type: "boolean", default: false },
    only: { type: "string" },
  },
});
const only = values.only?.split(",");
const ITERS = 10;
/** Weight bytes each timed graph streams at least (copies of the weights, so L2 (50 MB) cannot hold them). */
const STREAM_BYTES = 200e6;
/** The pool of random weights the copies are views of. */
const POOL_BYTES = 1536 << 20;

interface Shape {
  name: string;
  N: number;
  K: number;
  ln: boolean;
  act: Activation;
  accumulate: boolean;
  out_f32: boolean;
}
const shapes: Shape[] = [];
for (const [m, C] of [["gpt2", 768], ["xl", 1600]] as const) {
  shapes.push(
    { name: `${m} qkv`, N: 3 * C, K: C, ln: true, act: "none", accumulate: false, out_f32: false },
    { name: `${m} proj`, N: C, K: C, ln: false, act: "none", accumulate: true, out_f32: false },
    { name: `${m} fc`, N: 4 * C, K: C, ln: true, act: "gelu_erf", accumulate: false, out_f32: false },
    { name: `${m} fc2`, N: C, K: 4 * C, ln: false, act: "none", accumulate: true, out_f32: false },
    // The LM head padded as the engine stores it (gpt.ts padded_vocab; unpadded, cuBLASLt took 215 us
    // at M = 256 against about 37).
    {
      name: `${m} lm`,
      N: padded_vocab(50257),
      K: C,
      ln: true,
      act: "none",
      accumulate: false,
      out_f32: true,
    },
  );
}

/**
 * The grids --sweep tries for the matmul `a`: every split of K over warps that leaves none idle, every
 * count of row groups a block up to 8 warps, and blocks enough for every tile or whole waves of
 * 1..4 blocks an SM (they loop over the rest).
 */
function sweep_shapes(a: MatmulArgs): GemvShape[] {
  const { GEMV_ROWS, GEMV_MAX_WARPS, GEMV_MMA_ROWS, GEMV_MMA_KB } = KERNEL_CONSTANTS;
  const mma = gemv_mma_suits(a, be.dtype);
  const groups = Math.ceil(a.N / (mma ? GEMV_MMA_ROWS : GEMV_ROWS));
  // What a warp's lanes split: 64-k blocks on tensor cores, else a weight row's vectors (gemv.cu:
  // 16 int8 weights at M <= 2, else as many as a 16-byte bf16 vector).
  const units = mma ? a.K / GEMV_MMA_KB : a.w_scale && a.M <= 2 ? a.K / 16 : a.K / 8;
  const out: GemvShape[] = [];
  for (let ks = 1; ks <= GEMV_MAX_WARPS && (ks === 1 || (ks - 1) * (mma ? 1 : 32) < units); ks++) {
    for (let per_tile = 1; ks * per_tile <= GEMV_MAX_WARPS; per_tile++) {
      const tiles = Math.ceil(groups / per_tile);
      const counts = new Set([tiles, ...[1, 2, 3, 4].map((k) => k * be.sm_count).filter((b) => b < tiles)]);
      for (const blocks of counts) out.push({ ks, per_tile, blocks });
    }
  }
  return out;
}

using be = create_cuda_backend({ dtype: "bf16" });
console.log(`${be.device_name}, bf16${values.w8 ? ", int8 weights" : ""}, weights streamed from memory`);
console.log(
  values.sweep
    ? "shape        M   rule us  best us  best shape"
    : "shape        M   gemv us  GB/s   cublas us  GB/s" + (values.gemm ? "   gemm us  GB/s" : ""),
);
const rows: Record<string, unknown>[] = [];
const pool = be.alloc(POOL_BYTES, "weight pool");
{
  const chunk = new Uint16Array(2 << 20); // random bf16 in about +-0.1
  let a = 12345;
  for (let i = 0; i < chunk.length; i++) {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    chunk[i] = (a >>> 16) % 2 ? 0x3dcc - (a & 0x3ff) : 0xbdcc - (a & 0x3ff);
  }
  for (let off = 0; off < POOL_BYTES; off += chunk.byteLength) be.write(pool, chunk, off);
}
const w_scale = values.w8 ? be.alloc(50257 * 4, "row scales") : null;
if (w_scale) be.write(w_scale, new Float32Array(50257).fill(1 / 64));
for (const s of shapes) {
  if (only && !only.includes(s.name)) continue;
  const M_max = Math.max(16, ...values.ms.split(",").map(Number)), w_bytes = s.N * s.K * (values.w8 ? 1 : 2);
  const reps = Math.min(128, Math.max(8, Math.ceil(STREAM_BYTES / w_bytes)));
  const ws = Array.from({ length: reps }, (_, i) => {
    const off = Math.floor((i * w_bytes) % (POOL_BYTES - w_bytes) / 256) * 256;
    return sub_buf(pool, off, w_bytes);
  });
  const view = (off: number, bytes: number) => sub_buf(pool, off, bytes);
  const x = view(0, M_max * s.K * 2), bias = view(1 << 20, s.N * 2);
  const g = view(2 << 20, s.K * 2), b = view(3 << 20, s.K * 2);
  const out = be.alloc(M_max * s.N * 4, "out");
  for (const M of values.ms.split(",").map(Number)) {
    const args = (w: typeof x): MatmulArgs => ({
      out,
      x,
      w,
      w_scale,
      bias: s.out_f32 ? null : bias,
      M,
      N: s.N,
      K: s.K,
      act: s.act,
      accumulate: s.accumulate,
      out_f32: s.out_f32,
      ln: s.ln ? { weight: g, bias: b, eps: 1e-5 } : undefined,
    });
    /** Microseconds a matmul: through `max_m` (16: the gemv, 0: cuBLASLt), the gemv on `shape` (null: the rule's grid). */
    const time = (max_m: number, shape: GemvShape | null, tag: string, iters = ITERS, gemm = false) => {
      be.gemv = max_m;
      be.gemv_shape = shape;
      be.gemm = gemm;
      const key = `${s.name} ${M} ${max_m} ${tag}`;
      const record = () => {
        for (const w of ws) be.matmul(args(w));
      };
      be.run_step(key, record);
      be.synchronize();
      const t0 = performance.now();
      for (let i = 0; i < iters; i++) be.run_step(key, record);
      be.synchronize();
      be.gemv_shape = null;
      be.gemm = false;
      return (performance.now() - t0) * 1e3 / (iters * reps);
    };
    if (values.sweep) {
      const tried = sweep_shapes(args(ws[0])).map((shape) => ({
        shape,
        us: time(16, shape, JSON.stringify(shape)),
      }));
      be.reset_steps();
      tried.sort((p, q) => p.us - q.us);
      // The fastest few and the rule again, three times each, keeping the median (one sweep's times are noisy).
      const median = (shape: GemvShape | null) => {
        const t = [0, 1, 2].map((i) => time(16, shape, `${JSON.stringify(shape)} again ${i}`, 3 * ITERS));
        t.sort((p, q) => p - q);
        return t[1];
      };
      const rule_us = median(null);
      const best = tried.slice(0, 5).map(({ shape }) => ({ shape, us: median(shape) })).sort((p, q) =>
        p.us - q.us
      )[0];
      be.reset_steps();
      console.log(
        `${s.name.padEnd(10)} ${String(M).padStart(3)} ${rule_us.toFixed(2).padStart(8)} ${
          best.us.toFixed(2).padStart(8)
        }  ${JSON.stringify(best.shape)}`,
      );
      rows.push({ shape: s.name, M, w8: values.w8, rule_us, best, tried, weight_bytes: w_bytes, reps });
      continue;
    }
    const us = [16, 0].map((max_m) => time(max_m, null, "rule"));
    const gemm_us = values.gemm ? time(0, null, "gemm", ITERS, true) : null;
    const gbs = (t: number) => (w_bytes / (t * 1e3)).toFixed(0);
    console.log(
      `${s.name.padEnd(10)} ${String(M).padStart(3)} ${us[0].toFixed(2).padStart(8)} ${
        gbs(us[0]).padStart(5)
      } ` +
        `${us[1].toFixed(2).padStart(10)} ${gbs(us[1]).padStart(5)}` +
        (gemm_us === null ? "" : `${gemm_us.toFixed(2).padStart(10)} ${gbs(gemm_us).padStart(5)}`),
    );
    rows.push({ shape: s.name, M, gemv_us: us[0], cublas_us: us[1], gemm_us, weight_bytes: w_bytes, reps });
  }
  be.reset_steps();
  be.free(out);
}
be.free(pool);
if (w_scale) be.free(w_scale);
if (values.json) Deno.writeTextFileSync(values.json, JSON.stringify(rows, null, 1));
