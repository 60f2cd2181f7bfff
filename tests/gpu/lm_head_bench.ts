/**
 * Micro-benchmark of the LM head (f32 logits from bf16 weights) against the vocabulary's row count:
 * GPT-2's 50257 (odd, so rows of logits are 4-byte aligned only) and 50304 (a multiple of 64, as
 * nanoGPT pads it). Each matmul is timed inside a CUDA graph of 8 copies.
 *   deno run -A tests/gpu/lm_head_bench.ts
 * @module
 */
import { create_cuda_backend } from "../../src/backend/cuda.ts";

using be = create_cuda_backend({ dtype: "bf16" });
be.autotune = false;
for (const C of [768, 1600]) {
  for (const N of [50257, 50304]) {
    for (const M of [1, 8, 64, 256]) {
      const w = be.alloc(N * C * 2, "w"), x = be.alloc(M * C * 2, "x"), out = be.alloc(M * N * 4, "out");
      be.write(w, new Uint16Array(N * C).fill(0x3c00));
      be.write(x, new Uint16Array(M * C).fill(0x3c00));
      const mm = () =>
        be.matmul({ out, x, w, bias: null, M, N, K: C, act: "none", accumulate: false, out_f32: true });
      const key = `lm:${C}:${N}:${M}`;
      be.run_step(key, () => {
        for (let i = 0; i < 8; i++) mm();
      });
      be.synchronize();
      const t0 = performance.now();
      for (let r = 0; r < 20; r++) be.run_step(key, () => {});
      be.synchronize();
      const us = (performance.now() - t0) * 1000 / (20 * 8);
      console.log(
        `C ${C} N ${N} M ${M}: ${us.toFixed(1)} us, ${(N * C * 2 / us / 1e6).toFixed(2)} TB/s of weights`,
      );
      be.reset_steps();
      for (const b of [w, x, out]) be.free(b);
    }
  }
}
