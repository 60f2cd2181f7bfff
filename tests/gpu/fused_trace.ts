/**
 * Where a fused decode step's time goes: runs a few decode steps of a random GPT-2 with
 * NGPT_FUSED_TRACE=1 and prints, from the last step's phase log (native/kernels/decode_fused.cu),
 * the microseconds of each phase (with the barrier after it), summed over the layers, and the bytes
 * of weights each phase reads per microsecond. One JSON line.
 *   deno run -A tests/gpu/fused_trace.ts --model gpt2 --batch 1 [--weights int8] [--graphs off]
 * (--graphs off for Nsight Compute, which cannot profile the nodes of graphs with conditional nodes).
 */
import { parseArgs } from "node:util";
import { create_backend, Engine, GPT, open_model } from "../../mod.ts";
import { CudaBackend } from "../../src/backend/cuda.ts";
import { create_tokenizer } from "../../src/tokenizer/tokenizer.ts";
import { DECODE_TOOL_OPTIONS, synthetic_prompts } from "./gpu_helpers.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    ...DECODE_TOOL_OPTIONS,
    graphs: { type: "string", default: "on" },
  },
});
Deno.env.set("NGPT_FUSED_TRACE", "1");
const B = Number(values.batch);
using source = await open_model(`random:${values.model}`);
using backend = create_backend({ device: "cuda", graphs: values.graphs !== "off" });
if (!(backend instanceof CudaBackend)) throw new Error("fused_trace needs the CUDA backend");
using gpt = await GPT.load(backend, source, { weights: values.weights as "dtype" | "int8" });
using engine = new Engine(gpt, await create_tokenizer(source.tokenizer), { max_running: B });
const V = gpt.config.vocab_size;
const prompts = synthetic_prompts(B, 64, V);
await engine.generate(
  prompts.map((prompt) => ({ prompt, max_new_tokens: 40, temperature: 0, stop_at_eot: false })),
);
const be = backend;
const t = be.fused_trace();
if (!t || be.fused_steps === 0) throw new Error("no fused decode ran");
const c = gpt.config, L = c.n_layer, C = c.n_embd;
const clk = Array.from(t.subarray(0, 5 * L + 3), Number),
  [t0, t1] = [Number(t[5 * L + 3]), Number(t[5 * L + 4])];
const ns_per_clk = (t1 - t0) / (clk[clk.length - 1] - clk[0]);
const us = (i: number) => (clk[i + 1] - clk[i]) * ns_per_clk / 1000;
const wb = values.weights === "int8" ? 1 : 2;
const phases = ["qkv", "attn", "proj", "fc", "fc2"],
  bytes = [3 * C * C * wb, 0, C * C * wb, 4 * C * C * wb, 4 * C * C * wb];
const out: Record<string, unknown> = {
  model: values.model,
  B,
  weights: values.weights,
  total_us: (t1 - t0) / 1000,
};
out.embed_us = us(0);
phases.forEach((p, j) => {
  let s = 0;
  for (let l = 0; l < L; l++) s += us(1 + 5 * l + j);
  out[`${p}_us`] = +s.toFixed(1);
  out[`${p}_us_each`] = +(s / L).toFixed(2);
  if (bytes[j]) out[`${p}_GBps`] = Math.round(bytes[j] * L / (s * 1e3));
});
const head = us(5 * L + 1);
out.head_us = +head.toFixed(1);
out.head_GBps = Math.round(gpt.vocab_padded * C * 2 / (head * 1e3));
console.log(JSON.stringify(out));
