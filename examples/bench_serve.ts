/**
 * Serving benchmark: replays a request set against the engine in process (or a server's URL) and
 * reports request and output-token throughput, TTFT, inter-token latency and end-to-end latency
 * (mean, p50, p99), the KV memory held at the peak against what the live tokens needed, and the
 * prefix-cache hit ratio; as a table, JSON and a chart of latency against request rate.
 *
 *   deno task bench:serve [--model gpt2] [--device cuda] [--dtype bf16] [--requests 2000]
 *       [--prompt 16,512] [--output 16,256] [--modes offline,closed,closed-free,poisson,prefix] [--rates 5,10,20]
 *       [--max-running 256] [--prefill-tokens N] [--prefill-seqs N] [--url http://host:port] [--json F]
 *       [--svg F] [--trace F] [--seed 0]
 *
 * Modes: `offline` submits every request at once (continuous batching); `closed` runs them as
 * closed batches of max_running requests, each starting when the last has finished and every slot
 * held until the batch's longest request ends (what generate_batch did before continuous
 * batching); `closed-free` is the same with finished requests leaving early; `poisson` lets them arrive as a Poisson process
 * at each of --rates requests/s (`--rates half` picks half the offline saturation rate); `prefix`
 * runs --prefix-requests requests sharing a --prefix-tokens prefix with a --suffix-tokens suffix,
 * with and without the prefix cache. Prompt and output lengths are uniform in the given ranges;
 * the end-of-text token is ignored. Random token ids: the model's weights do not matter.
 * @module
 */
import { parseArgs } from "node:util";
import {
  type Backend,
  create_backend,
  DEFAULT_MODEL,
  Engine,
  type EngineOptions,
  type GenerateRequest,
  GPT,
  GPT2_SIZES,
  type LaunchTrace,
  open_model,
} from "../mod.ts";
import { create_tokenizer } from "../src/tokenizer/tokenizer.ts";
// deno-lint-ignore no-import-prefix
import type OpenAI from "npm:openai@7.59.0";
import { render_chart, type Series } from "./bench_chart.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "gpt2" },
    device: { type: "string", default: "auto" },
    dtype: { type: "string" },
    requests: { type: "string", default: "2000" },
    prompt: { type: "string", default: "16,512" },
    output: { type: "string", default: "16,256" },
    modes: { type: "string", default: "offline,closed" },
    rates: { type: "string", default: "half" },
    "poisson-requests": { type: "string", default: "500" },
    "max-running": { type: "string", default: "256" },
    "prefill-tokens": { type: "string" },
    "prefill-seqs": { type: "string" },
    "prefix-requests": { type: "string", default: "256" },
    "prefix-tokens": { type: "string", default: "768" },
    "suffix-tokens": { type: "string", default: "32" },
    "prefix-output": { type: "string", default: "32" },
    url: { type: "string" },
    json: { type: "string" },
    trace: { type: "string" },
    svg: { type: "string" },
    seed: { type: "string", default: "0" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log(
    "deno task bench:serve [--model gpt2] [--device cuda] [--requests 2000] [--prompt 16,512] [--output 16,256] " +
      "[--modes offline,closed,closed-free,poisson,prefix] [--rates half|5,10] [--max-running 256] [--url U] [--json F] [--svg F]",
  );
  Deno.exit(0);
}

const range = (s: string, what: string) => {
  const [a, b] = s.split(",").map(Number);
  if (!(Number.isInteger(a) && Number.isInteger(b) && a >= 1 && b >= a)) {
    throw new Error(`--${what}: expected MIN,MAX`);
  }
  return [a, b] as const;
};
const [P0, P1] = range(values.prompt, "prompt"), [O0, O1] = range(values.output, "output");
const N = Number(values.requests), MAX_RUNNING = Number(values["max-running"]);

function rng(seed: number) {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

/** One request to replay. */
interface Job {
  prompt: number[];
  max_new_tokens: number;
}

/** What one request measured, in milliseconds. */
interface Timing {
  ttft: number;
  /** Intervals between its tokens (a launch's tokens share the launch's interval). */
  itl: number[];
  e2e: number;
  output: number;
}

/** Summary of one run. */
interface RunResult {
  mode: string;
  model: string;
  device: string;
  requests: number;
  rate?: number;
  /** The arrival rate achieved (requests/s between the first and the last arrival). */
  arrival_rate?: number;
  seconds: number;
  req_s: number;
  output_tok_s: number;
  ttft_ms: Stats;
  itl_ms: Stats;
  e2e_ms: Stats;
  kv_peak?: { held_blocks: number; live_tokens: number; sequences: number; ratio: number };
  prefix_hit_ratio?: number;
  preemptions?: number;
}

interface Stats {
  mean: number;
  p50: number;
  p99: number;
}

function stats(xs: number[]): Stats {
  if (xs.length === 0) return { mean: 0, p50: 0, p99: 0 };
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { mean: s.reduce((a, b) => a + b, 0) / s.length, p50: q(0.5), p99: q(0.99) };
}

function jobs(n: number, vocab: number, seed: number): Job[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => {
    const lp = P0 + Math.floor(r() * (P1 - P0 + 1)), lo = O0 + Math.floor(r() * (O1 - O0 + 1));
    return { prompt: Array.from({ length: lp }, () => Math.floor(r() * vocab)), max_new_tokens: lo };
  });
}

const request = (j: Job): GenerateRequest => ({
  prompt: j.prompt,
  max_new_tokens: j.max_new_tokens,
  temperature: 0,
  stop_at_eot: false,
});

/**
 * Runs one request through the engine, timing its tokens. With `hold` (closed batches as
 * generate_batch ran them before continuous batching) it keeps its slot generating until `hold`
 * tokens, as a finished sequence did until the batch's longest ended; only its own are counted.
 */
async function timed_engine(engine: Engine, j: Job, hold = j.max_new_tokens): Promise<Timing> {
  const t0 = performance.now();
  const h = engine.submit(request({ ...j, max_new_tokens: Math.max(hold, j.max_new_tokens) }));
  let last = t0, first = 0, n = 0, end = 0;
  const itl: number[] = [];
  for await (const ev of h.events()) {
    const take = Math.min(ev.tokens.length, j.max_new_tokens - n);
    if (take <= 0) continue;
    const now = performance.now();
    if (!first) first = now;
    else for (let i = 0; i < take; i++) itl.push((now - last) / ev.tokens.length);
    last = now;
    n += take;
    if (n === j.max_new_tokens) end = now;
  }
  await h.result;
  return { ttft: first - t0, itl, e2e: (end || performance.now()) - t0, output: n };
}

/** Runs one request against a server (streamed), timing its tokens. */
async function timed_url(client: OpenAI, model: string, j: Job): Promise<Timing> {
  const t0 = performance.now();
  const st = await client.completions.create({
    model,
    prompt: j.prompt,
    max_tokens: j.max_new_tokens,
    temperature: 0,
    ignore_eos: true,
    stream: true,
  } as OpenAI.CompletionCreateParamsStreaming);
  let last = t0, first = 0, n = 0;
  const itl: number[] = [];
  for await (const c of st) {
    const text = c.choices[0]?.text ?? "";
    if (!text) continue;
    const now = performance.now();
    if (!first) first = now;
    else itl.push(now - last);
    last = now;
    n++;
  }
  return { ttft: first - t0, itl, e2e: performance.now() - t0, output: n };
}

function summarize(
  mode: string,
  device: string,
  ts: Timing[],
  seconds: number,
  rate?: { asked: number; achieved: number },
): RunResult {
  const out = ts.reduce((a, t) => a + t.output, 0);
  return {
    mode,
    model: values.model,
    device,
    requests: ts.length,
    ...(rate !== undefined ? { rate: rate.asked, arrival_rate: rate.achieved } : {}),
    seconds,
    req_s: ts.length / seconds,
    output_tok_s: out / seconds,
    ttft_ms: stats(ts.map((t) => t.ttft)),
    itl_ms: stats(ts.flatMap((t) => t.itl)),
    e2e_ms: stats(ts.map((t) => t.e2e)),
  };
}

/**
 * Runs `items` arriving at exponential inter-arrival times, `rate` per second, and measures the
 * rate achieved: timers fire late when the event loop is busy, which lowers it.
 */
async function poisson<T>(
  items: Job[],
  rate: number,
  seed: number,
  run: (j: Job) => Promise<T>,
): Promise<{ results: T[]; rate: { asked: number; achieved: number } }> {
  const r = rng(seed ^ 0x9e3779b9);
  const t0 = performance.now();
  let at = 0, first = Infinity, last = 0;
  const results = await Promise.all(items.map(async (j) => {
    at += -Math.log(1 - r()) / rate * 1000;
    const wait = t0 + at - performance.now();
    if (wait > 0) await new Promise((res) => setTimeout(res, wait));
    const now = performance.now();
    first = Math.min(first, now);
    last = Math.max(last, now);
    return run(j);
  }));
  const achieved = last > first ? (items.length - 1) * 1000 / (last - first) : rate;
  return { results, rate: { asked: rate, achieved } };
}

const results: RunResult[] = [];
/** --trace: every timed run's launches (Engine.on_launch), written as JSON lines. */
const launches: (LaunchTrace & { mode: string })[] = [];
const tracer = (mode: string) => values.trace ? (t: LaunchTrace) => void launches.push({ mode, ...t }) : null;
const modes = values.modes.split(",");
const seed = Number(values.seed);

if (values.url) {
  // Against a running server: offline and poisson only.
  // Loaded only here: the in-process runs need no HTTP client (and no npm download).
  const openai_module = "npm:openai@7.59.0";
  const { default: OpenAIClient } = await import(openai_module) as typeof import("npm:openai@7.59.0");
  const client = new OpenAIClient({
    baseURL: `${values.url.replace(/\/$/, "")}/v1`,
    apiKey: Deno.env.get("OPENAI_API_KEY") ?? "none",
    maxRetries: 0,
  });
  const model = (await client.models.list()).data[0].id;
  const js = jobs(N, 50257, seed);
  if (modes.includes("offline")) {
    const t0 = performance.now();
    const ts = await Promise.all(js.map((j) => timed_url(client, model, j)));
    results.push(summarize("offline", values.url, ts, (performance.now() - t0) / 1000));
  }
  for (const rate of modes.includes("poisson") ? values.rates.split(",").map(Number) : []) {
    const t0 = performance.now();
    const p = await poisson(
      js.slice(0, Number(values["poisson-requests"])),
      rate,
      seed,
      (j) => timed_url(client, model, j),
    );
    results.push(summarize("poisson", values.url, p.results, (performance.now() - t0) / 1000, p.rate));
  }
} else {
  const spec = values.model in GPT2_SIZES
    ? `random:${values.model}`
    : values.model === "shakespeare"
    ? DEFAULT_MODEL
    : values.model;
  using source = await open_model(spec);
  const tokenizer = await create_tokenizer(source.tokenizer);
  using backend: Backend = create_backend({
    device: values.device as "auto",
    dtype: values.dtype as "bf16" | undefined,
  });
  using gpt = await GPT.load(backend, source);
  const device = backend.device_name, V = gpt.config.vocab_size;
  const engine_opts: EngineOptions = {
    max_running: MAX_RUNNING,
    kv_memory_fraction: 0.9,
    ...(values["prefill-tokens"] ? { prefill_tokens: Number(values["prefill-tokens"]) } : {}),
    ...(values["prefill-seqs"] ? { prefill_seqs: Number(values["prefill-seqs"]) } : {}),
  };
  const js = jobs(N, V, seed);
  let saturation = 0;
  {
    using engine = new Engine(gpt, tokenizer, engine_opts);
    // Warm-up: kernels, plans and the step graphs of every bucket the runs use.
    await Promise.all(
      jobs(Math.min(N, 2 * MAX_RUNNING), V, seed + 1).map((j) => engine.generate([request(j)])),
    );
    if (modes.includes("offline")) {
      engine.on_launch = tracer("offline");
      const t0 = performance.now();
      const ts = await Promise.all(js.map((j) => timed_engine(engine, j)));
      const r = summarize("offline", device, ts, (performance.now() - t0) / 1000);
      const p = engine.kv_peak, bs = engine.options.block_size;
      r.kv_peak = {
        held_blocks: p.held,
        live_tokens: p.live_tokens,
        sequences: p.sequences,
        ratio: p.held / (1.1 * p.live_tokens / bs + p.sequences),
      };
      r.preemptions = engine.preemptions;
      saturation = r.req_s;
      results.push(r);
    }
    // Closed batches of max_running requests, each starting when the last has finished: `closed`
    // holds every slot until the batch's longest request ends (generate_batch before continuous
    // batching); `closed-free` lets a finished request leave (closed batches through this engine).
    for (const mode of ["closed", "closed-free"].filter((m) => modes.includes(m))) {
      engine.on_launch = tracer(mode);
      const t0 = performance.now();
      const ts: Timing[] = [];
      for (let i = 0; i < js.length; i += MAX_RUNNING) {
        const batch = js.slice(i, i + MAX_RUNNING);
        const hold = mode === "closed" ? Math.max(...batch.map((j) => j.max_new_tokens)) : 0;
        ts.push(...await Promise.all(batch.map((j) => timed_engine(engine, j, hold))));
      }
      results.push(summarize(mode, device, ts, (performance.now() - t0) / 1000));
    }
    if (modes.includes("poisson")) {
      const rates = values.rates === "half"
        ? [saturation / 2]
        : values.rates.split(",").map((x) => x === "half" ? saturation / 2 : Number(x));
      // Arrivals are timers: the engine yields to the event loop as the server runs it (every 2 ms).
      // Without it (the in-process default) timers fire only when the engine is idle: on an H200,
      // 500 gpt2 requests asked to arrive at 402/s within 1.2 s took 16 s (31 requests/s).
      engine.io_yield_ms = 2;
      for (const rate of rates) {
        engine.on_launch = tracer(`poisson ${rate.toFixed(1)}`);
        if (!(rate > 0)) throw new Error(`--rates: ${rate} is not a rate (run offline first for "half")`);
        const t0 = performance.now();
        const p = await poisson(
          js.slice(0, Number(values["poisson-requests"])),
          rate,
          seed,
          (j) => timed_engine(engine, j),
        );
        results.push(summarize("poisson", device, p.results, (performance.now() - t0) / 1000, p.rate));
      }
    }
  }
  if (modes.includes("prefix")) {
    const r = rng(seed ^ 0x55);
    const n = Number(values["prefix-requests"]), plen = Number(values["prefix-tokens"]);
    const slen = Number(values["suffix-tokens"]), olen = Number(values["prefix-output"]);
    const workload = (): Job[] => {
      const prefix = Array.from({ length: plen }, () => Math.floor(r() * V));
      return Array.from({ length: n }, () => ({
        prompt: [...prefix, ...Array.from({ length: slen }, () => Math.floor(r() * V))],
        max_new_tokens: olen,
      }));
    };
    const pj = workload();
    for (const prefix_caching of [false, true]) {
      using engine = new Engine(gpt, tokenizer, { ...engine_opts, prefix_caching });
      // Warm-up: the same workload with another prefix, so the timed run records no step graphs
      // and tunes no GEMM shapes (on an H200 without it, the cached run was the slower one).
      await Promise.all(workload().map((j) => timed_engine(engine, j)));
      engine.pool!.stats.queried_tokens = engine.pool!.stats.hit_tokens = 0;
      engine.on_launch = tracer(prefix_caching ? "prefix-cached" : "prefix-uncached");
      const t0 = performance.now();
      const ts = await Promise.all(pj.map((j) => timed_engine(engine, j)));
      const res = summarize(
        prefix_caching ? "prefix-cached" : "prefix-uncached",
        device,
        ts,
        (performance.now() - t0) / 1000,
      );
      const st = engine.pool!.stats;
      res.prefix_hit_ratio = st.queried_tokens ? st.hit_tokens / st.queried_tokens : 0;
      results.push(res);
    }
  }
}

for (const r of results) console.log(JSON.stringify(r));
const pad = (s: string | number, n: number) => String(s).padStart(n);
const f = (x: number, d = 1) => x.toFixed(d);
console.log(
  `\n${"mode".padEnd(16)} ${pad("reqs", 5)} ${pad("rate", 6)} ${pad("req/s", 7)} ${pad("out tok/s", 10)} ` +
    `${pad("ttft p50", 9)} ${pad("ttft p99", 9)} ${pad("itl p50", 8)} ${pad("itl p99", 8)} ${
      pad("e2e p50", 8)
    } ${pad("e2e p99", 8)}`,
);
for (const r of results) {
  console.log(
    `${r.mode.padEnd(16)} ${pad(r.requests, 5)} ${pad(r.rate ? f(r.rate) : "-", 6)} ${pad(f(r.req_s), 7)} ${
      pad(f(r.output_tok_s, 0), 10)
    } ${pad(f(r.ttft_ms.p50), 9)} ${pad(f(r.ttft_ms.p99), 9)} ${pad(f(r.itl_ms.p50, 2), 8)} ${
      pad(f(r.itl_ms.p99, 2), 8)
    } ${pad(f(r.e2e_ms.p50, 0), 8)} ${pad(f(r.e2e_ms.p99, 0), 8)}${
      r.kv_peak ? `  kv peak ${r.kv_peak.held_blocks} blocks, ${f(r.kv_peak.ratio, 3)}x need` : ""
    }${r.prefix_hit_ratio !== undefined ? `  prefix hits ${f(100 * r.prefix_hit_ratio)}%` : ""}${
      r.arrival_rate !== undefined ? `  arrived at ${f(r.arrival_rate)}/s` : ""
    }`,
  );
}
if (values.json) {
  Deno.writeTextFileSync(values.json, JSON.stringify({ date: new Date().toISOString(), results }, null, 2));
}
if (values.trace) {
  Deno.writeTextFileSync(
    values.trace,
    launches.map((l) => JSON.stringify(l)).join("\n") + "\n",
  );
}
if (values.svg) {
  const series: Series[] = ["ttft p99", "itl p99", "e2e p50"].map((name) => ({ name, points: [] }));
  for (const r of results.filter((x) => x.rate)) {
    series[0].points.push([r.rate!, Math.max(0.01, r.ttft_ms.p99)]);
    series[1].points.push([r.rate!, Math.max(0.01, r.itl_ms.p99)]);
    series[2].points.push([r.rate!, Math.max(0.01, r.e2e_ms.p50)]);
  }
  Deno.writeTextFileSync(
    values.svg,
    render_chart(series, `Latency against request rate, ${values.model} on ${results[0]?.device ?? "?"}`, {
      x_label: "requests/s (Poisson arrivals)",
      y_label: "milliseconds",
    }),
  );
}
