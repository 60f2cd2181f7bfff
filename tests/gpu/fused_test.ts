// The fused decode (native/kernels/decode_fused.cu: a whole decode step in one persistent kernel,
// batches up to 8) against the op-by-op decode it replaces (NGPT_FUSED_DECODE=0), on the same
// device: logits of every decode position, and the engine's tokens with ragged prompts and
// per-sequence sampling, for 16- and 32-bit storage, int8 weights and the int8 KV cache, graphs on
// and off. Both paths run the same device functions (gemv.cu, attention_decode.cu), though with
// other splits of K, so f32 agrees to rounding and bf16 to its precision.
import { assert, assertEquals } from "../helpers/assert.ts";
import type { DType } from "../../src/backend/backend.ts";
import type { CudaBackend } from "../../src/backend/cuda.ts";
import { load_model, type Model } from "../../mod.ts";
import { fixture } from "../helpers/compare.ts";
import { gpu_suite, rel_l2 } from "./gpu_helpers.ts";

type Ref = { input_ids: number[] };
type Opts = { weights?: "int8"; kv_dtype?: "int8" };

/** Loads `path` on cuda with the fused decode on or off (read at each step's recording). */
async function load(path: string, fused: boolean, dtype: DType, graphs: boolean, opts: Opts): Promise<Model> {
  Deno.env.set("NGPT_FUSED_DECODE", fused ? "1" : "0");
  return await load_model(path, { device: "cuda", dtype, graphs, ...opts });
}

function fused_steps(m: Model): number {
  return (m.gpt.backend as CudaBackend).fused_steps;
}

gpu_suite("fused_test", () => {
  const hf = JSON.parse(Deno.readTextFileSync(fixture("hf_tiny.json"))) as Ref;
  const cases: [string, string][] = [
    ["HF GPT2LMHeadModel (gelu_new)", fixture("hf_tiny_lm")],
    ["nanoGPT bias=False, fp16, head 24", fixture("nano_nobias.pt")],
  ];
  const modes: [DType, boolean, number][] = [["f32", true, 1e-5], ["f32", false, 1e-5], ["bf16", true, 2e-2]];
  const paths: [string, Opts][] = [
    ["16-bit", {}],
    ["int8 weights", { weights: "int8" }],
    ["int8 KV cache", { kv_dtype: "int8" }],
  ];
  for (const [name, path] of cases) {
    for (const [dtype, graphs, limit] of modes) {
      for (const [what, opts] of paths) {
        Deno.test(`fused decode = op by op (cuda ${dtype}, graphs ${graphs}, ${what}): ${name}`, async () => {
          // The switch is read as each step is recorded: one model at a time.
          const run = async (fused: boolean) => {
            using m = await load(path, fused, dtype, graphs, opts);
            const ids = hf.input_ids.map((t) => t % m.config.vocab_size);
            const logits = m.engine.teacher_forced_logits(ids, 3);
            assertEquals(fused_steps(m) > 0, fused, `fused ${fused}: fused steps ${fused_steps(m)}`);
            return logits;
          };
          const want = await run(false);
          const have = await run(true);
          have.forEach((lg, i) => {
            const err = rel_l2(lg, want[i]);
            assert(err < limit, `decode position ${i + 3}: relative L2 error ${err}`);
          });
        });
      }
    }
  }

  for (const B of [3, 8]) {
    Deno.test(`fused decode: the engine's tokens at batch ${B} (ragged prompts, per-sequence sampling, f32)`, async () => {
      const prompts = Array.from(
        { length: B },
        (_, i) => Array.from({ length: 1 + 3 * i }, (_, j) => 7 + 11 * i + j),
      );
      const runs: number[][][] = [];
      for (const fused of [false, true]) {
        using model = await load(fixture("hf_tiny_lm"), fused, "f32", true, {});
        const out = await Promise.all(prompts.map((p, i) =>
          model.generate(p, {
            temperature: i % 3 === 0 ? 0 : 0.9,
            top_k: i % 2 === 0 ? 0 : 20,
            seed: 100 + i,
            max_new_tokens: 12 + 5 * i,
            stop_at_eot: false,
          })
        ));
        assertEquals(fused_steps(model) > 0, fused);
        runs.push(out.map((r) => r.tokens));
      }
      assertEquals(runs[1], runs[0]);
    });
  }
});
