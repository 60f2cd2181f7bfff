/**
 * Where a decode step's time goes, kernel by kernel: runs a random GPT-2 with NGPT_TRACE set (every
 * block logs its entry, its programmatic-launch wait, its marks and its exit: common.cuh), takes one
 * whole decode step from the trace and prints, for each kernel of a layer (the median over layers)
 * and for the rest of the step:
 *   gap_us   the previous kernel's last block out -> this kernel's first block past its wait (the
 *            release of the dependency);
 *   spread   first -> last block past the wait;
 *   body     per block (median), wait -> exit, and (gemv) wait -> x staged (mark 0), -> dot products
 *            done (mark 1), -> stored (mark 2);
 *   tail     the median block's exit -> the last block's exit;
 *   step     the previous kernel's last exit -> this one's: the step is the sum of these.
 * Times come from each SM's clock, put on one time line by fitting it to the global timer per SM.
 *   deno run -A tests/gpu/step_trace.ts --model gpt2 --batch 1 [--weights int8] [--new 24] [--json FILE] [--raw FILE]
 * (NGPT_TRACE: records to keep, 262,144 by default; gpt2-xl logs about 60,000 a step at batch 1.)
 */
import { parseArgs } from "node:util";
import { create_backend, Engine, GPT, open_model } from "../../mod.ts";
import { CudaBackend } from "../../src/backend/cuda.ts";
import {
  parse_trace,
  TRACE_RECORD_WORDS,
  type TraceBlock,
  type TraceLaunch,
} from "../../src/backend/cuda/step_trace.ts";
import { create_tokenizer } from "../../src/tokenizer/tokenizer.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "gpt2" },
    batch: { type: "string", default: "1" },
    weights: { type: "string", default: "dtype" },
    json: { type: "string" },
    new: { type: "string", default: "24" },
    raw: { type: "string" },
  },
});
if (!Deno.env.get("NGPT_TRACE")) Deno.env.set("NGPT_TRACE", "1");
const B = Number(values.batch);
using source = await open_model(`random:${values.model}`);
using backend = create_backend({ device: "cuda" });
if (!(backend instanceof CudaBackend)) throw new Error("step_trace needs the CUDA backend");
using gpt = await GPT.load(backend, source, { weights: values.weights as "dtype" | "int8" });
using engine = new Engine(gpt, await create_tokenizer(source.tokenizer), { max_running: B });
const V = gpt.config.vocab_size;
const run = (n: number) =>
  engine.generate(Array.from({ length: B }, (_, b) => ({
    prompt: Array.from({ length: 64 }, (_, t) => (b * 7919 + t * 104729) % V),
    max_new_tokens: n,
    temperature: 0,
    stop_at_eot: false,
  })));
await run(40); // compiles, captures the graphs
backend.step_trace(true);
await run(Number(values.new));
const words = backend.step_trace();
if (!words) throw new Error("no trace: NGPT_TRACE is not set");
if (values.raw) { // the records as read, for another look without a GPU
  const used = Math.min(Number(words[0]) + 1, words.length / TRACE_RECORD_WORDS) * TRACE_RECORD_WORDS;
  Deno.writeFileSync(values.raw, new Uint8Array(words.buffer, 0, used * 8));
}
const { launches, dropped } = parse_trace(words);
if (dropped) console.error(`${dropped} records dropped (raise NGPT_TRACE)`);

// One time line: per SM, ns = clk / f + offset, f and the offset fitted to the global timer.
const pairs = new Map<number, [number, number][]>();
for (const l of launches) {
  for (const b of l.blocks) {
    const p = pairs.get(b.sm) ?? [];
    p.push([b.entry_clk, b.entry_ns]);
    if (b.exit_clk !== null && b.exit_ns !== null) p.push([b.exit_clk, b.exit_ns]);
    pairs.set(b.sm, p);
  }
}
const median = (a: number[]) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length === 0 ? NaN : s[s.length >> 1];
};
const ghz = median([...pairs.values()].map((p) => {
  const lo = p.reduce((a, b) => (b[0] < a[0] ? b : a)), hi = p.reduce((a, b) => (b[0] > a[0] ? b : a));
  return (hi[0] - lo[0]) / (hi[1] - lo[1]);
}));
const offset = new Map([...pairs].map(([sm, p]) => [sm, median(p.map(([c, t]) => t - c / ghz))]));
const ns = (b: TraceBlock, clk: number | null) => (clk === null ? NaN : clk / ghz + offset.get(b.sm)!);
// The global timer's step: the smallest gap between its distinct readings.
const readings = [...new Set(launches.flatMap((l) => l.blocks.flatMap((b) => [b.entry_ns, b.wait_ns ?? 0])))]
  .filter((t) => t > 0).sort((x, y) => x - y);
const resolution_ns = readings.slice(1).reduce((m, t, i) => Math.min(m, t - readings[i]), Infinity);

// Decode steps (an embed of fewer rows than the 64-token prompts): from one decode embed to the next, that embed included, so the
// steps' rows add up to the time between the embeds' last exits.
const embeds = launches.flatMap((
  l,
  i,
) => (l.kernel === "embed" && l.grid >= B && l.grid < 64 * B ? [i] : []));
if (embeds.length < 2) throw new Error(`the trace holds ${embeds.length} decode steps; need 2`);

interface Row {
  label: string;
  kernel: string;
  grid: number;
  gap: number;
  spread: number;
  body: number;
  staged: number;
  dots: number;
  stored: number;
  tail: number;
  step: number;
}
const L = gpt.config.n_layer;
const gemv_roles = ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"];
const last_exit = (l: TraceLaunch) => Math.max(...l.blocks.map((b) => ns(b, b.exit_clk)));
function step_rows(step: TraceLaunch[]): Row[] {
  let gemvs = 0, prev_exit = last_exit(step[0]);
  return step.slice(1).map((l) => {
    const gemv = l.kernel.startsWith("gemv");
    const label = gemv ? (gemvs < 4 * L ? gemv_roles[gemvs % 4] : "lm_head") : l.kernel.replace(/_kv8$/, "");
    if (gemv) gemvs++;
    const wait = l.blocks.map((b) => ns(b, b.wait_clk)), exit = l.blocks.map((b) => ns(b, b.exit_clk));
    const per = (k: number, from: (b: TraceBlock) => number | null) =>
      median(l.blocks.map((b) => ns(b, b.mark_clk[k]) - ns(b, from(b))));
    const end = Math.max(...exit);
    const r: Row = {
      label,
      kernel: l.kernel,
      grid: l.grid,
      gap: Math.min(...wait) - prev_exit,
      spread: Math.max(...wait) - Math.min(...wait),
      body: median(l.blocks.map((b) => ns(b, b.exit_clk) - ns(b, b.wait_clk))),
      staged: per(0, (b) => b.wait_clk),
      dots: per(1, (b) => b.mark_clk[0]),
      stored: per(2, (b) => b.mark_clk[1]),
      tail: end - median(exit),
      step: end - prev_exit,
    };
    prev_exit = end;
    return r;
  });
}
const steps = embeds.slice(1).map((e, i) => step_rows(launches.slice(embeds[i], e + 1)));
const step_us = steps.map((rs) => rs.reduce((a, r) => a + r.step, 0) / 1000);
const rows = steps.flat();

// Each kernel of a layer: the median over layers and steps; the rest likewise over steps.
const keys = ["gap", "spread", "body", "staged", "dots", "stored", "tail", "step"] as const;
const groups = new Map<string, Row[]>();
for (const r of rows) groups.set(r.label, [...groups.get(r.label) ?? [], r]);
const us = (v: number) => (Number.isFinite(v) ? (v / 1000).toFixed(2) : "-");
console.log(`| kernel | launches a step | grid | ${keys.join(" | ")} |`);
console.log(`| --- | ---: | ---: | ${keys.map(() => "---:").join(" | ")} |`);
const summary: Record<string, unknown>[] = [];
for (const [label, rs] of groups) {
  const med = Object.fromEntries(keys.map((k) => [k, median(rs.map((r) => r[k]))]));
  const per_step = rs.reduce((a, r) => a + r.step, 0) / steps.length;
  summary.push({
    label,
    kernel: rs[0].kernel,
    launches: rs.length / steps.length,
    grid: rs[0].grid,
    ...med,
    per_step,
  });
  console.log(
    `| ${label} | ${rs.length / steps.length} | ${rs[0].grid} | ${keys.map((k) => us(med[k])).join(" | ")} |`,
  );
}
const out = {
  model: values.model,
  B,
  weights: values.weights,
  steps: steps.length,
  launches_per_step: rows.length / steps.length,
  step_us_median: +median(step_us).toFixed(1),
  step_us: step_us.map((v) => +v.toFixed(1)),
  sm_ghz: +ghz.toFixed(3),
  timer_resolution_ns: resolution_ns,
  device: backend.device_name,
};
console.log(JSON.stringify(out));
if (values.json) Deno.writeTextFileSync(values.json, JSON.stringify({ ...out, summary, rows }, null, 1));
