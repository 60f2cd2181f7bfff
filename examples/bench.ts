/**
 * Decode benchmark: tok/s, time per step, TTFT and memory against batch size, with CUDA graphs and
 * without, for GPT-2 sizes (random weights) or any model path.
 *
 *   deno task bench [--device cpu|cuda|auto] [--models gpt2,gpt2-xl] [--batches 1,8,64]
 *                   [--prompt 64] [--new 256] [--graphs both|on|off] [--dtype bf16] [--weights int8]
 *                   [--kv-dtype int8]
 *                   [--json out.json] [--svg chart.svg] [--peer peer.jsonl]
 *
 * Each batch runs as a closed batch through the engine: B slots, every prompt prefilled in one launch,
 * then decode; TTFT is the time of a run of one new token, decode time the rest of a run of N.
 * Models: a GPT-2 size (random weights), `shakespeare` (the embedded model), or any spec load_model
 * accepts. `--peer` reads torch_baseline.py's JSON lines to draw them on the chart.
 * @module
 */
import { parseArgs } from "node:util";
import { type Backend, create_backend, DEFAULT_MODEL, Engine, GPT, GPT2_SIZES, open_model } from "../mod.ts";
import { cuda_status, CudaBackend } from "../src/backend/cuda.ts";
import { create_tokenizer } from "../src/tokenizer/tokenizer.ts";
import { kv_block_bytes, type KvDtype } from "../src/engine/device_state.ts";
import { render_chart, throughput_series } from "./bench_chart.ts";

/** One measurement. */
export interface BenchRow {
  model: string;
  batch: number;
  engine: string;
  prompt: number;
  new: number;
  tok_s: number;
  step_us: number;
  ttft_ms: number;
  /** Host time per decode step, excluding waits for the device (RunStats.host_us_per_step). */
  host_us?: number;
  /** Of host_us: time in launch calls and read_async (RunStats.launch_us_per_step). */
  launch_us?: number;
  /** Median over launches of host time per step (RunStats.host_us_median). */
  host_us_p50?: number;
  weight_bytes: number;
  kv_bytes: number;
  /** Bytes the backend allocated (weights, KV cache, workspace). */
  allocated_bytes: number;
  /** Device memory in use beyond what was in use before the model (CUDA: driver's view). */
  peak_device_bytes?: number;
  device: string;
  /** Decode steps per launch (EngineOptions.steps_per_launch). */
  steps_per_launch?: number;
  /** Whether those steps ran as a device-side loop (a graph WHILE node) rather than unrolled. */
  device_loop?: boolean;
  error?: string;
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    device: { type: "string", default: "auto" },
    models: { type: "string", default: "gpt2" },
    batches: { type: "string", default: "1" },
    prompt: { type: "string", default: "64" },
    new: { type: "string", default: "256" },
    graphs: { type: "string", default: "both" },
    dtype: { type: "string" },
    weights: { type: "string", default: "dtype" },
    "kv-dtype": { type: "string", default: "dtype" },
    json: { type: "string" },
    svg: { type: "string" },
    peer: { type: "string" },
    threads: { type: "string" },
    steps: { type: "string", default: "8" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log(
    "deno task bench [--device cpu|cuda|auto] [--models gpt2,...,shakespeare,PATH] [--batches 1,8] " +
      "[--prompt 64] [--new 256] [--graphs both|on|off] [--steps 8 (decode steps per launch; 1,8 runs both)] " +
      "[--dtype bf16|f16|f32] [--weights dtype|int8] [--kv-dtype dtype|int8] [--json F] [--svg F] [--peer F]",
  );
  Deno.exit(0);
}

const spec_of = (m: string) => m in GPT2_SIZES ? `random:${m}` : m === "shakespeare" ? DEFAULT_MODEL : m;
const P = Number(values.prompt), N = Number(values.new);
const batches = values.batches.split(",").map(Number);
const steps = values.steps.split(",").map(Number);
if (steps.some((k) => !(Number.isInteger(k) && k >= 1))) throw new Error("--steps: positive integers");
if (!(P >= 1 && N >= 2) || batches.some((b) => !(b >= 1))) {
  throw new Error("--prompt >= 1, --new >= 2, batches >= 1");
}
const rows: BenchRow[] = [];
/** Autotuned matmul plans already reported (stderr). */
const tuned_shown = new Set<string>();

function rng(seed: number) {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

if (!["auto", "cpu", "cuda"].includes(values.device)) {
  throw new Error(`--device must be auto, cpu or cuda, got "${values.device}"`);
}
const is_cuda = values.device === "cuda" || (values.device === "auto" && cuda_status().ok);

for (const m of values.models.split(",")) {
  using source = await open_model(spec_of(m));
  const tokenizer = await create_tokenizer(source.tokenizer);
  const modes = !is_cuda ? [true] : values.graphs === "both" ? [true, false] : [values.graphs !== "off"];
  for (const graphs of modes) {
    using backend = create_backend({
      device: is_cuda ? "cuda" : "cpu",
      dtype: values.dtype as "bf16" | undefined,
      graphs,
      threads: values.threads ? Number(values.threads) : undefined,
    });
    const mem0 = used_bytes(backend);
    using gpt = await GPT.load(backend, source, { weights: values.weights as "dtype" | "int8" });
    const base_name = (is_cuda ? (graphs ? "ngpt" : "ngpt-nographs") : "ngpt-cpu") +
      (gpt.weights === "int8" ? "-int8" : "") + (values["kv-dtype"] === "int8" ? "-kv8" : "");
    console.error(
      `${m}: ${backend.device_name}, ${base_name}, weights ${(gpt.weight_bytes / 2 ** 20).toFixed(0)} MiB`,
    );
    for (const [K, B] of (graphs ? steps : steps.slice(0, 1)).flatMap((k) => batches.map((b) => [k, b]))) {
      const engine_name = base_name + (K === 8 ? "" : `-k${K}`);
      const base: BenchRow = {
        model: m,
        batch: B,
        engine: engine_name,
        prompt: P,
        new: N,
        tok_s: 0,
        step_us: 0,
        ttft_ms: 0,
        weight_bytes: gpt.weight_bytes,
        kv_bytes: 0,
        allocated_bytes: 0,
        device: backend.device_name,
        steps_per_launch: K,
      };
      try {
        // A closed batch: B slots, every prompt prefilled in one launch, a KV pool of what the
        // batch needs (each sequence's blocks for P + N + K positions), no prefix cache.
        const c = gpt.config, bs = 16;
        const kv_dtype = values["kv-dtype"] as KvDtype;
        const block_bytes = kv_block_bytes(c, bs, backend.dtype, kv_dtype);
        const blocks = Math.max(Math.ceil(c.block_size / bs), B * Math.ceil((P + N + K) / bs));
        using engine = new Engine(gpt, tokenizer, {
          context_overflow: "error",
          steps_per_launch: K,
          max_running: B,
          prefill_tokens: Math.max(16, B * P),
          prefill_seqs: B,
          block_size: bs,
          kv_dtype,
          kv_memory: (Math.ceil(blocks * 1.02) + 2) * block_bytes,
          // Every run computes its prompts: the repeated prompts would otherwise hit the cache.
          prefix_caching: false,
        });
        const r = rng(B);
        const V = c.vocab_size;
        const prompts = Array.from({ length: B }, () => Array.from({ length: P }, () => Math.floor(r() * V)));
        const reqs = (n: number) =>
          prompts.map((prompt) => ({ prompt, max_new_tokens: n, temperature: 0, stop_at_eot: false }));
        await engine.generate(reqs(N)); // warm-up: compiles kernels, records every step shape the run uses
        // TTFT: the batch's prefill and first token; decode: the rest, timed as the difference.
        const t0 = performance.now();
        await engine.generate(reqs(1));
        const ttft_ms = performance.now() - t0;
        const t1 = performance.now();
        await engine.generate(reqs(N));
        const decode_ms = performance.now() - t1 - ttft_ms;
        const st = engine.stats;
        const row: BenchRow = {
          ...base,
          tok_s: B * (N - 1) / (decode_ms / 1000),
          step_us: decode_ms * 1000 / (N - 1),
          ttft_ms,
          host_us: st.host_us_per_step,
          launch_us: st.launch_us_per_step,
          host_us_p50: st.host_us_median,
          kv_bytes: engine.kv_bytes,
          allocated_bytes: backend.allocated_bytes(),
        };
        if (backend instanceof CudaBackend) {
          row.peak_device_bytes = used_bytes(backend) - mem0;
          if (K > 1) row.device_loop = backend.graphs && backend.device_loops;
          if (backend.loop_error) console.error(`device-side loop refused: ${backend.loop_error}`);
        }
        rows.push(row);
        console.log(JSON.stringify(row));
        if (backend instanceof CudaBackend && backend.autotune) {
          for (const t of backend.tuned_plans()) {
            if (t.index > 0 && !tuned_shown.has(t.key)) {
              tuned_shown.add(t.key);
              console.error(
                `autotune ${t.key}: candidate ${t.index} of ${t.candidates}, ${t.us.toFixed(1)} us ` +
                  `(heuristic's first ${t.first_us.toFixed(1)} us)`,
              );
            }
          }
        }
      } catch (e) {
        rows.push({ ...base, error: (e as Error).message.slice(0, 300) });
        console.log(JSON.stringify(rows[rows.length - 1]));
      }
    }
  }
}

/** Device memory in use (total - free) as the driver reports it; 0 on the CPU. */
function used_bytes(backend: Backend): number {
  if (!(backend instanceof CudaBackend)) return 0;
  const m = backend.mem_info();
  return m.total_bytes - m.free_bytes;
}

const peers: BenchRow[] = [];
if (values.peer) {
  for (const line of Deno.readTextFileSync(values.peer).split("\n")) {
    if (!line.startsWith("{")) continue;
    const r = JSON.parse(line);
    if (r.engine && r.tok_s) peers.push({ ...r, engine: `torch-${r.engine}` });
  }
}
const all = [...rows, ...peers];
const device = rows.find((r) => !r.error)?.device ?? "unknown device";
if (values.json) {
  Deno.writeTextFileSync(
    values.json,
    JSON.stringify({ device, date: new Date().toISOString(), rows: all }, null, 2),
  );
}
if (values.svg) {
  Deno.writeTextFileSync(
    values.svg,
    render_chart(
      throughput_series(all),
      `Decode throughput vs batch size (prompt ${P}, ${N} new tokens) on ${device}, ${
        new Date().toISOString().slice(0, 10)
      }`,
    ),
  );
}

const pad = (s: string | number, n: number) => String(s).padStart(n);
console.log(
  `\n${"model".padEnd(12)} ${pad("B", 4)} ${"engine".padEnd(16)} ${pad("tok/s", 10)} ${pad("step_us", 9)} ${
    pad("ttft_ms", 8)
  } ${pad("mem_MiB", 8)} ${pad("host_us", 8)} ${pad("host_p50", 8)}`,
);
for (const r of all) {
  if (r.error) {
    console.log(
      `${r.model.padEnd(12)} ${pad(r.batch, 4)} ${r.engine.padEnd(16)} ERROR ${r.error.slice(0, 80)}`,
    );
    continue;
  }
  const mem = r.peak_device_bytes ?? r.allocated_bytes;
  console.log(
    `${r.model.padEnd(12)} ${pad(r.batch, 4)} ${r.engine.padEnd(16)} ${pad(r.tok_s.toFixed(0), 10)} ${
      pad(r.step_us.toFixed(1), 9)
    } ${pad(r.ttft_ms.toFixed(2), 8)} ${pad(mem ? (mem / 2 ** 20).toFixed(0) : "-", 8)} ${
      pad(r.host_us !== undefined ? r.host_us.toFixed(1) : "-", 8)
    } ${pad(r.host_us_p50 !== undefined ? r.host_us_p50.toFixed(1) : "-", 8)}`,
  );
}
