/**
 * Micro-benchmark of the small-M matmuls of GPT-2 decode: the gemv kernel against the layernorm
 * kernel + cuBLASLt, per shape and M, each op timed inside a CUDA graph of 8..128 copies reading
 * distinct weights (so launch gaps count as in a real step, and the weights come from memory, not
 * L2). Prints one line per (shape, M) and, with --json, writes the rows.
 *
 *   deno run -A tests/gpu/gemv_bench.ts [--ms 1,2,4,8,12,16] [--json out.json]
 * @module
 */
import { parseArgs } from "node:util";
import { create_cuda_backend } from "../../src/backend/cuda.ts";
import type { Activation, MatmulArgs } from "../../src/backend/backend.ts";
import { sub_buf } from "../../src/backend/buf.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { ms: { type: "string", default: "1,2,4,8,12,16" }, json: { type: "string" } },
});
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
    { name: `${m} lm`, N: 50257, K: C, ln: true, act: "none", accumulate: false, out_f32: true },
  );
}

using be = create_cuda_backend({ dtype: "bf16" });
console.log(`${be.device_name}, bf16, weights streamed from memory`);
console.log("shape        M   gemv us  GB/s   cublas us  GB/s");
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
for (const s of shapes) {
  const M_max = 16, w_bytes = s.N * s.K * 2;
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
      bias: s.out_f32 ? null : bias,
      M,
      N: s.N,
      K: s.K,
      act: s.act,
      accumulate: s.accumulate,
      out_f32: s.out_f32,
      ln: s.ln ? { weight: g, bias: b, eps: 1e-5 } : undefined,
    });
    const us: number[] = [];
    for (const max_m of [16, 0]) {
      be.gemv = max_m;
      const key = `${s.name} ${M} ${max_m}`;
      const record = () => {
        for (const w of ws) be.matmul(args(w));
      };
      be.run_step(key, record);
      be.synchronize();
      const t0 = performance.now();
      for (let i = 0; i < ITERS; i++) be.run_step(key, record);
      be.synchronize();
      us.push((performance.now() - t0) * 1e3 / (ITERS * reps));
    }
    const gbs = (t: number) => (w_bytes / (t * 1e3)).toFixed(0);
    console.log(
      `${s.name.padEnd(10)} ${String(M).padStart(3)} ${us[0].toFixed(2).padStart(8)} ${
        gbs(us[0]).padStart(5)
      } ` +
        `${us[1].toFixed(2).padStart(10)} ${gbs(us[1]).padStart(5)}`,
    );
    rows.push({ shape: s.name, M, gemv_us: us[0], cublas_us: us[1], weight_bytes: w_bytes, reps });
  }
  be.reset_steps();
  be.free(out);
}
be.free(pool);
if (values.json) Deno.writeTextFileSync(values.json, JSON.stringify(rows, null, 1));
