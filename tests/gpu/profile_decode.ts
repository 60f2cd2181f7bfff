/**
 * Runs a few decode steps of one (model, batch) case inside the profiler range, for
 *   ncu --profile-from-start off --metrics gpu__time_duration.sum,dram__bytes_read.sum ... deno run -A
 *     tests/gpu/profile_decode.ts --model gpt2 --batch 1 --prompt 64 --steps 4 [--weights int8] [--kv-dtype int8]
 * The engine runs B slots, as the bench does, so the kernels and their plans are the bench's; every
 * prompt is prefilled in one launch, so every profiled step decodes all B sequences.
 * Steps run one per launch, so every step's kernels are profiled the same way.
 * Summarize with tests/gpu/ncu_summary.py.
 */
import { parseArgs } from "node:util";
import { create_backend, Engine, GPT, open_model } from "../../mod.ts";
import { CudaBackend } from "../../src/backend/cuda.ts";
import { create_tokenizer } from "../../src/tokenizer/tokenizer.ts";
import { synthetic_prompts } from "./gpu_helpers.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "gpt2" },
    batch: { type: "string", default: "1" },
    prompt: { type: "string", default: "64" },
    steps: { type: "string", default: "4" },
    weights: { type: "string", default: "dtype" },
    "kv-dtype": { type: "string", default: "dtype" },
  },
});
const B = Number(values.batch), P = Number(values.prompt), S = Number(values.steps);
using source = await open_model(`random:${values.model}`);
using backend = create_backend({ device: "cuda" });
if (!(backend instanceof CudaBackend)) throw new Error("profile_decode needs the CUDA backend");
using gpt = await GPT.load(backend, source, { weights: values.weights as "dtype" | "int8" });
using engine = new Engine(gpt, await create_tokenizer(source.tokenizer), {
  steps_per_launch: 1,
  max_running: B,
  kv_dtype: values["kv-dtype"] as "dtype" | "int8",
  // Every prompt in one prefill launch, so each profiled step decodes all B sequences (with the
  // default budget, gpt2 at batch 256 admitted its prompts over many steps and the profiled steps
  // decoded about 103 sequences).
  prefill_tokens: Math.min(65536, Math.max(2048, B * P)),
  prefill_seqs: Math.min(1024, Math.max(64, B)),
});
engine.reserve();
const V = gpt.config.vocab_size;
const prompts = synthetic_prompts(B, P, V);
const reqs = (n: number) =>
  prompts.map((prompt) => ({ prompt, max_new_tokens: n, temperature: 0, stop_at_eot: false }));
await engine.generate(reqs(S + 1)); // records every step's graph outside the profiled range
backend.profiler(true);
await engine.generate(reqs(S + 1));
backend.profiler(false);
console.log(
  JSON.stringify({ model: values.model, batch: B, prompt: P, decode_steps: S, device: backend.device_name }),
);
