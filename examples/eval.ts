/**
 * Scores a text file the way nanoGPT measures validation loss: the text (its last 10% with
 * `--split val`, its first 90% with `train`, as nanoGPT's prepare.py splits it) is tokenized with
 * the model's tokenizer, cut into non-overlapping windows of the model's context, and every
 * position of every window is scored (the window's tokens predict the next ones). The last line of
 * stdout is JSON: {"loss", "perplexity", "tokens", "tok_s"}; progress goes to stderr.
 *
 *   deno task eval [--model M] --text FILE [--split all|train|val] [--device auto|cpu|cuda]
 *                  [--dtype bf16|f16|f32] [--weights dtype|int8] [--kv-dtype dtype|int8] [--batch 16]
 *                  [--window N]
 *
 * On CUDA the logits never exist for all positions at once: each launch's rows go through the LM
 * head and a log-softmax in chunks (src/engine/step.ts).
 * @module
 */
import { parseArgs } from "node:util";
import { DEFAULT_MODEL, GPT2_SIZES, load_model, open_model } from "../mod.ts";
import { run_cli } from "./cli.ts";

/** The part of `text` a split keeps (nanoGPT's prepare.py: the first 90% trains, the rest validates). */
export function split_text(text: string, split: string): string {
  const n = Math.floor(text.length * 0.9);
  if (split === "all") return text;
  if (split === "train") return text.slice(0, n);
  if (split === "val") return text.slice(n);
  throw new RangeError(`--split must be all, train or val, got "${split}"`);
}

/** Non-overlapping windows of `tokens`: inputs of up to `window` tokens and the tokens after each. */
export function windows(tokens: number[], window: number): { inputs: number[][]; targets: number[][] } {
  const inputs: number[][] = [], targets: number[][] = [];
  for (let i = 0; i + 1 < tokens.length; i += window) {
    const n = Math.min(window, tokens.length - 1 - i);
    inputs.push(tokens.slice(i, i + n));
    targets.push(tokens.slice(i + 1, i + 1 + n));
  }
  return { inputs, targets };
}

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: "string", default: DEFAULT_MODEL },
      text: { type: "string" },
      split: { type: "string", default: "all" },
      device: { type: "string", default: "auto" },
      dtype: { type: "string" },
      weights: { type: "string" },
      "kv-dtype": { type: "string" },
      batch: { type: "string", default: "16" },
      window: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(
      "deno task eval [--model M] --text FILE [--split all|train|val] [--device auto|cpu|cuda] [--dtype bf16|f16|f32] " +
        "[--weights dtype|int8] [--kv-dtype dtype|int8] [--batch 16] [--window N]",
    );
    return 0;
  }
  if (!values.text) throw new Error("--text FILE is required");
  const batch = Number(values.batch);
  if (!(Number.isInteger(batch) && batch >= 1)) {
    throw new Error(`--batch must be a positive integer, got "${values.batch}"`);
  }
  const text = split_text(await Deno.readTextFile(values.text), values.split);
  const spec = values.model in GPT2_SIZES ? `random:${values.model}` : values.model;
  let context: number;
  {
    using source = await open_model(spec);
    context = source.config.block_size;
  }
  const window = values.window ? Number(values.window) : context;
  if (!(Number.isInteger(window) && window >= 2 && window <= context)) {
    throw new Error(`--window must be an integer in [2, ${context}], got "${values.window}"`);
  }
  using model = await load_model(spec, {
    device: values.device as "auto" | "cpu" | "cuda",
    dtype: values.dtype as "bf16" | "f16" | "f32" | undefined,
    // Checked by load_model: each names the option and its choices.
    weights: values.weights as "dtype" | "int8" | undefined,
    kv_dtype: values["kv-dtype"] as "dtype" | "int8" | undefined,
    prefill_tokens: batch * window,
    prefill_seqs: batch,
    max_running: batch,
    prefix_caching: false,
    log: (m) => console.error(m),
  });
  const tokens = model.tokenizer.encode(text);
  const { inputs, targets } = windows(tokens, window);
  const total = inputs.reduce((a, x) => a + x.length, 0);
  console.error(
    `${values.split}: ${text.length} characters, ${tokens.length} tokens, ${inputs.length} windows of ${window}`,
  );
  // Warm-up on a full launch's shape: kernels, GEMM plans and the step's graph (with one window, the
  // timed run recorded the batch's graph and tuned its GEMMs).
  model.engine.score(inputs.slice(0, batch), targets.slice(0, batch));
  const t0 = performance.now();
  let last = t0;
  const lps = model.engine.score(inputs, targets, (done) => {
    if (performance.now() - last > 2000) {
      last = performance.now();
      console.error(`scored ${done} / ${total} positions`);
    }
  });
  const seconds = (performance.now() - t0) / 1000;
  let nll = 0;
  for (const lp of lps) for (const v of lp) nll -= v;
  const loss = nll / total;
  console.log(JSON.stringify({ loss, perplexity: Math.exp(loss), tokens: total, tok_s: total / seconds }));
  return 0;
}

if (import.meta.main) await run_cli(main);
