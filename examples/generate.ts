/**
 * Generates text from a GPT-2 or nanoGPT model and streams it to stdout (logs go to stderr).
 *
 *   deno run -A examples/generate.ts [--model PATH_OR_NAME] [options] [PROMPT]
 *
 * Run with --help for the options. The prompt comes from the arguments, else from stdin.
 * @module
 */
import { parseArgs } from "node:util";
import { DEFAULT_MODEL, load_model, SAMPLING_DEFAULTS } from "../mod.ts";
import { flag_number, run_cli } from "./cli.ts";

const HELP = `Usage: ./ngpt generate [--model PATH_OR_NAME] [options] [PROMPT]
   or: deno run -A examples/generate.ts [--model PATH_OR_NAME] [options] [PROMPT]

Generates a continuation of PROMPT (or of stdin when no prompt is given) and streams it to stdout.

Model (--model, default ${DEFAULT_MODEL}):
  ${DEFAULT_MODEL}  nanoGPT's shakespeare-char, kept in the repo (runs offline)
  path/to/ckpt.pt         a nanoGPT checkpoint (its out_dir works too); meta.pkl beside it gives the
                          character vocabulary, else GPT-2 BPE
  path/to/m.safetensors   a nanoGPT checkpoint converted by examples/convert.ts
  path/to/hf_dir          a Hugging Face GPT-2 directory (config.json + model.safetensors)
  gpt2 | gpt2-xl | org/m  a hub name: downloaded into the cache (NGPT_CACHE, default ~/.cache/ngpt)
  random:gpt2-xl          random weights of a GPT-2 size (for benchmarks)

Options:
  --device auto|cpu|cuda  where to run (default auto: CUDA when a device works, else the CPU)
  --dtype bf16|f16|f32    storage type on CUDA (default bf16; the CPU runs f32)
  --weights dtype|int8    blocks' linear weights: the dtype, or int8 (per-row scales)
  --kv-dtype dtype|int8   KV cache: the dtype, or int8 with per-row scales
  --no-graphs             launch kernels one by one instead of one CUDA graph per step
  --steps-per-launch N    decode steps recorded into one launch (default 8; 1 = one per step)
  --max-new-tokens N      tokens to generate (default ${SAMPLING_DEFAULTS.max_new_tokens})
  --temperature T         0 = greedy (default ${SAMPLING_DEFAULTS.temperature})
  --top-k K               0 = off (default ${SAMPLING_DEFAULTS.top_k})
  --top-p P               1 = off (default ${SAMPLING_DEFAULTS.top_p})
  --seed S                same seed, same text (default: random)
  --stop STR              stop at this string (repeatable)
  --no-eot                do not stop at the end-of-text token
  --num-samples N         generate N samples of the prompt in one batch (seeds seed, seed+1, ...)
  --context slide|error   past the model's context: slide like nanoGPT's sample.py, or fail
  --threads N             CPU threads (default all cores)
  --revision REV          hub revision (default main)
  --echo                  print the prompt before the continuation
  --quiet                 no logs on stderr
  -h, --help              this help
`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      model: { type: "string" },
      device: { type: "string", default: "auto" },
      dtype: { type: "string" },
      weights: { type: "string" },
      "kv-dtype": { type: "string" },
      "no-graphs": { type: "boolean", default: false },
      "steps-per-launch": { type: "string" },
      "max-new-tokens": { type: "string" },
      temperature: { type: "string" },
      "top-k": { type: "string" },
      "top-p": { type: "string" },
      seed: { type: "string" },
      stop: { type: "string", multiple: true },
      "no-eot": { type: "boolean", default: false },
      "num-samples": { type: "string" },
      context: { type: "string", default: "slide" },
      threads: { type: "string" },
      revision: { type: "string" },
      echo: { type: "boolean", default: false },
      quiet: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  let prompt = positionals.join(" ");
  if (positionals.length === 0) {
    if (Deno.stdin.isTerminal()) console.error("reading the prompt from stdin (end with Ctrl-D)...");
    prompt = await new Response(Deno.stdin.readable).text();
  }
  const log = values.quiet ? undefined : (m: string) => console.error(m);
  const quiet = () => {};
  const opts = {
    max_new_tokens: flag_number("max-new-tokens", values["max-new-tokens"], true),
    temperature: flag_number("temperature", values.temperature, false),
    top_k: flag_number("top-k", values["top-k"], true),
    top_p: flag_number("top-p", values["top-p"], false),
    seed: flag_number("seed", values.seed, true),
    stop: values.stop,
    stop_at_eot: !values["no-eot"],
  };
  const n_samples = flag_number("num-samples", values["num-samples"], true) ?? 1;
  if (n_samples < 1) throw new Error(`--num-samples must be >= 1, got ${n_samples}`);
  const t0 = performance.now();
  using model = await load_model(values.model ?? DEFAULT_MODEL, {
    device: values.device as "auto" | "cpu" | "cuda",
    dtype: values.dtype as "bf16" | "f16" | "f32" | undefined,
    weights: values.weights as "dtype" | "int8" | undefined,
    kv_dtype: values["kv-dtype"] as "dtype" | "int8" | undefined,
    graphs: !values["no-graphs"],
    threads: flag_number("threads", values.threads, true),
    revision: values.revision,
    context_overflow: values.context as "slide" | "error",
    steps_per_launch: flag_number("steps-per-launch", values["steps-per-launch"], true),
    log: log ?? quiet,
  });
  log?.(`loaded in ${((performance.now() - t0) / 1000).toFixed(2)} s`);
  const out = new TextEncoder();
  const write = (s: string) => {
    const bytes = out.encode(s);
    let off = 0;
    while (off < bytes.length) off += Deno.stdout.writeSync(bytes.subarray(off));
  };
  if (values.echo) write(prompt);
  const t1 = performance.now();
  if (n_samples === 1) {
    for await (const piece of model.stream(prompt, opts)) write(piece);
    write("\n");
  } else {
    const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 31);
    const reqs = Array.from({ length: n_samples }, (_, i) => ({ ...opts, prompt, seed: seed + i }));
    const results = await model.engine.generate(reqs);
    results.forEach((r, i) => {
      write(`${i > 0 ? "---------------\n" : ""}${values.echo && i > 0 ? prompt : ""}${r.text}\n`);
    });
  }
  const st = model.engine.stats;
  log?.(
    `${model.backend.device_name}: first token ${
      st.ttft_ms.toFixed(1)
    } ms, ${st.decode_steps} decode steps in ` +
      `${st.decode_ms.toFixed(1)} ms (${
        (st.decode_ms * 1000 / Math.max(1, st.decode_steps)).toFixed(0)
      } us/step), ` +
      `total ${(performance.now() - t1).toFixed(0)} ms`,
  );
  return 0;
}

if (import.meta.main) await run_cli(main);
