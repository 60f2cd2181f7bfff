/**
 * Serves a model over HTTP with OpenAI's completions API (continuous batching, a paged KV cache,
 * prefix caching). Logs go to stderr; the URL is printed once the model is loaded and /health
 * answers 200.
 *
 *   deno task serve [--model M] [--device auto|cpu|cuda] [--dtype bf16] [--host 127.0.0.1] [--port 8000]
 *                   [--api-key KEY] [--max-running N] [--max-waiting N] [--kv-memory-fraction F]
 * @module
 */
import { parseArgs } from "node:util";
import { DEFAULT_MODEL, load_model } from "../mod.ts";
import { serve } from "../src/server/server.ts";
import { flag_number, run_cli } from "./cli.ts";

const HELP = `Usage: ./ngpt serve [options]   (or deno task serve, deno run -A examples/serve.ts)

Serves a model with OpenAI's completions API at http://HOST:PORT/v1 (POST /v1/completions,
GET /v1/models), plus GET /health and GET /metrics (Prometheus).

Options:
  --model M                 what to serve (default ${DEFAULT_MODEL}; see ./ngpt generate --help)
  --model-name NAME         its name in requests (default: M)
  --device auto|cpu|cuda    where to run (default auto)
  --dtype bf16|f16|f32      storage type on CUDA (default bf16)
  --weights dtype|int8      blocks' linear weights: the dtype, or int8 (per-row scales)
  --kv-dtype dtype|int8     KV cache: the dtype, or int8 with per-row scales
  --host H                  interface to bind (default 127.0.0.1)
  --port P                  port (default 8000; 0 picks a free one)
  --api-key KEY             require 'Authorization: Bearer KEY' on /v1/ (default: none)
  --max-running N           sequences decoding at once (default 256 on CUDA, 64 on the CPU)
  --max-waiting N           requests queued at most; more get 429 (default 1024)
  --kv-memory-fraction F    share of free device memory for the KV cache (default 0.9)
  --prefill-tokens N        prompt tokens per prefill launch (chunk budget)
  --no-prefix-caching       do not reuse the KV of shared prompt prefixes
  --quiet                   no logs on stderr
  -h, --help                this help
`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      model: { type: "string", default: DEFAULT_MODEL },
      "model-name": { type: "string" },
      device: { type: "string", default: "auto" },
      dtype: { type: "string" },
      weights: { type: "string" },
      "kv-dtype": { type: "string" },
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "8000" },
      "api-key": { type: "string" },
      "max-running": { type: "string" },
      "max-waiting": { type: "string", default: "1024" },
      "kv-memory-fraction": { type: "string", default: "0.9" },
      "prefill-tokens": { type: "string" },
      "no-prefix-caching": { type: "boolean", default: false },
      quiet: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (positionals.length) throw new Error(`unexpected argument "${positionals[0]}" (see --help)`);
  const log = values.quiet ? () => {} : (m: string) => console.error(m);
  const fraction = flag_number("kv-memory-fraction", values["kv-memory-fraction"], false);
  const model = await load_model(values.model, {
    device: values.device as "auto" | "cpu" | "cuda",
    dtype: values.dtype as "bf16" | "f16" | "f32" | undefined,
    weights: values.weights as "dtype" | "int8" | undefined,
    kv_dtype: values["kv-dtype"] as "dtype" | "int8" | undefined,
    max_running: flag_number("max-running", values["max-running"], true),
    max_waiting: flag_number("max-waiting", values["max-waiting"], true),
    kv_memory_fraction: fraction,
    prefill_tokens: flag_number("prefill-tokens", values["prefill-tokens"], true),
    prefix_caching: !values["no-prefix-caching"],
    io_yield_ms: 2,
    log,
  });
  try {
    model.engine.reserve();
    const server = serve(model, {
      host: values.host,
      port: flag_number("port", values.port, true),
      api_key: values["api-key"],
      model_id: values["model-name"] ?? values.model,
      handle_signals: true,
      log,
    });
    log(
      `serving ${
        values["model-name"] ?? values.model
      } on ${model.backend.device_name} (${model.backend.dtype})`,
    );
    console.log(`${server.url}/v1`);
    await server.finished;
    log("stopped");
  } finally {
    model.dispose();
  }
  return 0;
}

if (import.meta.main) await run_cli(main);
