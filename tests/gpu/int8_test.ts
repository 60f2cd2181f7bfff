// 8-bit paths on CUDA against the CPU backend's references, which quantize the same way: int8
// weights (the gemv W8 kernel for decode and small batches, dequantize + cuBLASLt for prefill) and
// the int8 KV cache (kv_append, attention_prefill and attention_decode's NG_KV8 variants), alone and
// together, through the prefill, the KV-cache decode and the engine's sampling.
import { assert, assertEquals } from "../helpers/assert.ts";
import type { DType } from "../../src/backend/backend.ts";
import { load_model } from "../../mod.ts";
import { fixture } from "../helpers/compare.ts";
import { gpu_suite, rel_l2 } from "./gpu_helpers.ts";

type Ref = { input_ids: number[]; logits: number[][] };

gpu_suite("int8_test", () => {
  const hf = JSON.parse(Deno.readTextFileSync(fixture("hf_tiny.json"))) as Ref;
  const cases: [string, string][] = [
    ["HF GPT2LMHeadModel (gelu_new)", fixture("hf_tiny_lm")],
    ["nanoGPT bias=False, fp16, head 24", fixture("nano_nobias.pt")],
  ];
  // A rounding step of an int8 value can land the other way on the GPU (a quotient a few ulps off),
  // so the int8 KV cache's f32 bound is looser than the weights'.
  const modes: [DType, boolean, number, number][] = [
    ["f32", true, 1e-4, 2e-3],
    ["f32", false, 1e-4, 2e-3],
    ["bf16", true, 5e-2, 5e-2],
  ];
  const paths: [string, { weights?: "int8"; kv_dtype?: "int8" }][] = [
    ["int8 weights", { weights: "int8" }],
    ["int8 KV cache", { kv_dtype: "int8" }],
    ["int8 weights and KV cache", { weights: "int8", kv_dtype: "int8" }],
  ];
  for (const [name, path] of cases) {
    for (const [dtype, graphs, w_limit, kv_limit] of modes) {
      for (const [what, opts] of paths) {
        const limit = opts.kv_dtype ? kv_limit : w_limit;
        Deno.test(`${what} (cuda ${dtype}, graphs ${graphs}) equal the CPU's: ${name}`, async () => {
          using cpu = await load_model(path, { device: "cpu", ...opts });
          using gpu = await load_model(path, { device: "cuda", dtype, graphs, ...opts });
          assertEquals(gpu.gpt.weights, opts.weights ?? "dtype");
          const ids = hf.input_ids.map((t) => t % cpu.config.vocab_size);
          for (const n of [1, 5, ids.length]) {
            const want = cpu.engine.prefill_logits([ids.slice(0, n)])[0];
            const got = gpu.engine.prefill_logits([ids.slice(0, n)])[0];
            const err = rel_l2(got, want);
            assert(err < limit, `prefill of ${n} tokens: relative L2 error ${err}`);
          }
          const want = cpu.engine.teacher_forced_logits(ids, 3);
          gpu.engine.teacher_forced_logits(ids, 3).forEach((lg, i) => {
            const err = rel_l2(lg, want[i]);
            assert(err < limit, `decode position ${i + 2}: relative L2 error ${err}`);
          });
        });
      }
    }
  }

  Deno.test("int8 weights and KV: the engine on cuda (f32) generates the CPU's tokens, batch 1 and 12", async () => {
    const prompts = Array.from({ length: 12 }, (_, i) => [5 + i, 17, 200 - i]);
    const runs: number[][][] = [];
    for (const device of ["cpu", "cuda"] as const) {
      using model = await load_model(fixture("hf_tiny_lm"), {
        device,
        dtype: "f32",
        weights: "int8",
        kv_dtype: "int8",
      });
      const one = await model.generate(prompts[0], {
        temperature: 0,
        max_new_tokens: 20,
        stop_at_eot: false,
      });
      const many = await model.generate_batch(prompts, {
        temperature: 0.8,
        seed: 3,
        max_new_tokens: 20,
        stop_at_eot: false,
      });
      runs.push([one.tokens, ...many.map((r) => r.tokens)]);
    }
    assertEquals(runs[1], runs[0]);
  });
});
