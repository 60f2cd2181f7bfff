// Weight-only int8 (W8A16) on CUDA against the CPU backend's int8 reference, which quantizes the
// same weights the same way: the gemv W8 kernel (decode, small batches) and the dequantize +
// cuBLASLt path (prefill), through the prefill, the KV-cache decode and the engine's sampling.
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
  const modes: [DType, boolean, number][] = [["f32", true, 1e-4], ["f32", false, 1e-4], ["bf16", true, 5e-2]];
  for (const [name, path] of cases) {
    for (const [dtype, graphs, limit] of modes) {
      Deno.test(`int8 weights (cuda ${dtype}, graphs ${graphs}) equal the CPU's int8: ${name}`, async () => {
        using cpu = await load_model(path, { device: "cpu", weights: "int8" });
        using gpu = await load_model(path, { device: "cuda", dtype, graphs, weights: "int8" });
        assertEquals(gpu.gpt.weights, "int8");
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

  Deno.test("int8 weights: the engine on cuda (f32) generates the CPU's int8 tokens, batch 1 and 12", async () => {
    const prompts = Array.from({ length: 12 }, (_, i) => [5 + i, 17, 200 - i]);
    const runs: number[][][] = [];
    for (const device of ["cpu", "cuda"] as const) {
      using model = await load_model(fixture("hf_tiny_lm"), { device, dtype: "f32", weights: "int8" });
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
