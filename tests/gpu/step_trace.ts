/**
 * Where a decode step's time goes, kernel by kernel: runs a random GPT-2 with NGPT_TRACE set (every
 * block logs its entry, its programmatic-launch wait, its marks and its exit: common.cuh), takes one
 * whole decode step from the trace and prints, for each kernel of a layer (the mean over layers and
 * steps) and for the rest of the step:
 *   prewait  per block (median), entry -> reaching its wait (what it requests before);
 *   gap      the previous kernel's last block out -> this kernel's first block past its wait (the
 *            release of the dependency);
 *   spread   first -> last block past the wait;
 *   body     per block (median), wait -> exit, and (gemv) wait -> x staged (mark 0), -> dot products
 *            done (mark 1), -> stored (mark 2);
 *   tail     the median block's exit -> the last block's exit;
 *   step     the previous kernel's last exit -> this one's: the step is the sum of these.
 * Times are the global timer's. Marks exist in gemv.cu and gemv_mma.cu (0 x staged, 1 dot products,
 * 2 stored) and attention_decode.cu (1: keys done, before the merge); elsewhere their columns are "-".
 *   deno run -A tests/gpu/step_trace.ts --model gpt2 --batch 1 [--weights int8] [--new 24] [--json FILE] [--raw FILE]
 *   deno run -A tests/gpu/step_trace.ts --model gpt2 --batch 1 --from FILE   (a --raw trace, no GPU)
 * (NGPT_TRACE: records to keep, 262,144 by default; gpt2-xl logs about 60,000 a step at batch 1.)
 */
import { parseArgs } from "node:util";
import { create_backend, Engine, GPT, open_model } from "../../mod.ts";
import { CudaBackend } from "../../src/backend/cuda.ts";
import { parse_trace, TRACE_RECORD_WORDS } from "../../src/backend/cuda/step_trace.ts";
import { median, summarize_steps, summary_table, timer_resolution_ns } from "../helpers/step_summary.ts";
import { create_tokenizer } from "../../src/tokenizer/tokenizer.ts";
import { DECODE_TOOL_OPTIONS, synthetic_prompts } from "./gpu_helpers.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    ...DECODE_TOOL_OPTIONS,
    json: { type: "string" },
    new: { type: "string", default: "24" },
    raw: { type: "string" },
    from: { type: "string" },
  },
});
const B = Number(values.batch);
let words: BigUint64Array, n_layer: number, device = "(from a file)";
if (values.from) { // a trace written by --raw, looked at again without a GPU
  const bytes = Deno.readFileSync(values.from);
  words = new BigUint64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8);
  using source = await open_model(`random:${values.model}`);
  n_layer = source.config.n_layer;
} else {
  if (!Deno.env.get("NGPT_TRACE")) Deno.env.set("NGPT_TRACE", "1");
  using source = await open_model(`random:${values.model}`);
  using backend = create_backend({ device: "cuda" });
  if (!(backend instanceof CudaBackend)) throw new Error("step_trace needs the CUDA backend");
  using gpt = await GPT.load(backend, source, { weights: values.weights as "dtype" | "int8" });
  using engine = new Engine(gpt, await create_tokenizer(source.tokenizer), { max_running: B });
  const V = gpt.config.vocab_size;
  const prompts = synthetic_prompts(B, 64, V);
  const run = (n: number) =>
    engine.generate(
      prompts.map((prompt) => ({ prompt, max_new_tokens: n, temperature: 0, stop_at_eot: false })),
    );
  await run(40); // compiles, captures the graphs
  backend.step_trace(true);
  await run(Number(values.new));
  const read = backend.step_trace();
  if (!read) throw new Error("no trace: NGPT_TRACE is not set");
  words = read;
  n_layer = gpt.config.n_layer;
  device = backend.device_name;
  if (values.raw) { // the records as read, for another look without a GPU (--from)
    const used = Math.min(Number(words[0]) + 1, words.length / TRACE_RECORD_WORDS) * TRACE_RECORD_WORDS;
    Deno.writeFileSync(values.raw, new Uint8Array(words.buffer, 0, used * 8));
  }
}
const { launches, dropped } = parse_trace(words);
if (dropped) console.error(`${dropped} records dropped (raise NGPT_TRACE)`);

const s = summarize_steps(launches, n_layer, B);
console.log(summary_table(s));
const step_us = s.steps.map((rs) => rs.reduce((a, r) => a + r.step, 0) / 1000);
const out = {
  model: values.model,
  B,
  weights: values.weights,
  steps: s.steps.length,
  steps_left_out: s.left_out,
  launches_per_step: s.steps.flat().length / s.steps.length,
  step_us_median: +median(step_us).toFixed(1),
  step_us: step_us.map((v) => +v.toFixed(1)),
  timer_resolution_ns: timer_resolution_ns(launches),
  device,
};
console.log(JSON.stringify(out));
if (values.json) {
  Deno.writeTextFileSync(
    values.json,
    JSON.stringify({ ...out, by_label: s.by_label, step_rows: s.steps }, null, 1),
  );
}
