/**
 * load_model: from a checkpoint path, a Hugging Face directory, a hub name or `random:<size>` to a
 * model on a backend with its tokenizer and engine, ready to generate.
 * @module
 */
import type { Backend, DType } from "./backend/backend.ts";
import { create_cpu_backend } from "./backend/cpu.ts";
import { create_cuda_backend, cuda_status } from "./backend/cuda.ts";
import {
  Engine,
  ENGINE_OPTION_KEYS,
  type EngineOptions,
  type GenerateRequest,
  type GenerateResult,
  type TextEvent,
} from "./engine/engine.ts";
import type { RequestOptions } from "./engine/request.ts";
import { open_model } from "./loaders/open_model.ts";
import { create_tokenizer, type Tokenizer } from "./tokenizer/tokenizer.ts";
import type { GPTConfig } from "./model/config.ts";
import { GPT, type WeightFormat } from "./model/gpt.ts";
import { prepare_native } from "./native/lib.ts";
import { check_choice, check_keys } from "./util/check.ts";

/** Where to run: "auto" picks CUDA when a device works, else the CPU. */
export type DeviceKind = "auto" | "cpu" | "cuda";

/** Options of load_model: where and how to load, and the engine's options (EngineOptions). */
export interface LoadOptions extends EngineOptions {
  /** Default "auto". */
  device?: DeviceKind;
  /** Storage type on CUDA (default "bf16"); the CPU backend computes in "f32" only. */
  dtype?: DType;
  /**
   * How the transformer blocks' linear weights are stored: "dtype" (default) or "int8" (weight-only,
   * per-output-row scales, quantized at load).
   */
  weights?: WeightFormat;
  /** CUDA graphs for every step (default true); false launches kernels one by one. */
  graphs?: boolean;
  /** CPU threads (default: all cores). */
  threads?: number;
  /** CUDA device ordinal (default 0). */
  cuda_device?: number;
  /** Hub revision for hub names (default "main"). */
  revision?: string;
  /** Cache directory for downloads, compiled kernels and native builds. */
  cache_dir?: string;
  /** Path of libngpt (default: NGPT_LIB, then the checkout's zig-out, built when missing or stale). */
  lib_path?: string;
  /**
   * Called with progress messages (default: none, except that building the native library, which
   * takes about 20 s the first time, always says so on stderr unless `log` is given).
   */
  log?: (msg: string) => void;
  /** A backend to share between models (then not disposed with the model). */
  backend?: Backend;
}

/** The keys of LoadOptions (for unknown-key checks). */
export const LOAD_OPTION_KEYS: readonly (keyof LoadOptions)[] = [
  "device",
  "dtype",
  "weights",
  "graphs",
  "threads",
  "cuda_device",
  "revision",
  "cache_dir",
  "lib_path",
  "log",
  "backend",
  ...ENGINE_OPTION_KEYS,
];

/**
 * The model `load_model()` loads when given none: nanoGPT's shakespeare-char, converted to
 * safetensors and kept in the repo (models/shakespeare-char/), so the main job runs offline.
 */
export const DEFAULT_MODEL = "embedded:shakespeare-char";

/** Picks and creates the backend for `opts`; throws a clear Error when the choice cannot run. */
export function create_backend(opts: LoadOptions = {}): Backend {
  check_keys(opts, LOAD_OPTION_KEYS, "load options");
  const device = check_choice("device", opts.device ?? "auto", ["auto", "cpu", "cuda"]);
  let use_cuda = device === "cuda";
  if (device === "auto") {
    const st = cuda_status();
    use_cuda = st.ok;
    if (!st.ok) opts.log?.(`no usable CUDA device (${st.reason}): using the CPU`);
  }
  if (use_cuda) {
    return create_cuda_backend({
      dtype: opts.dtype ?? "bf16",
      graphs: opts.graphs ?? true,
      device: opts.cuda_device,
      lib_path: opts.lib_path,
      cache_dir: opts.cache_dir,
    });
  }
  if (opts.dtype && opts.dtype !== "f32") {
    throw new RangeError(`the CPU backend computes in f32 only; dtype "${opts.dtype}" needs --device cuda`);
  }
  return create_cpu_backend({ threads: opts.threads, lib_path: opts.lib_path });
}

/** A loaded model: weights on a backend, its tokenizer, and an engine to generate with. */
export class Model implements Disposable {
  /** Its hyperparameters. */
  readonly config: GPTConfig;
  /** Text <-> token ids. */
  readonly tokenizer: Tokenizer;
  /** Where it runs. */
  readonly backend: Backend;
  /** The model on the backend. */
  readonly gpt: GPT;
  /** The continuous-batching engine every call goes through. */
  readonly engine: Engine;
  /** Where the weights came from. */
  readonly origin: string;
  /** What the checkpoint says about itself (nanoGPT's iter_num, best_val_loss), when it does. */
  readonly info: Readonly<Record<string, number>>;
  #own_backend: boolean;

  /** Use load_model. */
  constructor(
    gpt: GPT,
    tokenizer: Tokenizer,
    origin: string,
    engine: Engine,
    own_backend: boolean,
    info = {},
  ) {
    this.gpt = gpt;
    this.config = gpt.config;
    this.backend = gpt.backend;
    this.tokenizer = tokenizer;
    this.origin = origin;
    this.engine = engine;
    this.info = info;
    this.#own_backend = own_backend;
  }

  /**
   * Generates a continuation of one prompt.
   *
   * @example Greedy, then sampled with a seed
   * ```ts
   * import { load_model } from "../mod.ts";
   * using model = await load_model(undefined, { device: "cpu" });
   * const greedy = await model.generate("ROMEO:", { max_new_tokens: 30, temperature: 0 });
   * const sampled = await model.generate("ROMEO:", { max_new_tokens: 30, seed: 1, top_p: 0.9 });
   * console.log(greedy.text, sampled.tokens.length, sampled.finish_reason);
   * ```
   */
  async generate(prompt: string | number[], opts: RequestOptions = {}): Promise<GenerateResult> {
    return (await this.engine.generate([{ ...opts, prompt }]))[0];
  }

  /**
   * Generates for several prompts at once; they share the device batch. Each item is a prompt,
   * or a request with its own options; `opts` gives the defaults.
   *
   * @example Two prompts, one with its own stop string
   * ```ts
   * import { load_model } from "../mod.ts";
   * using model = await load_model(undefined, { device: "cpu" });
   * const [a, b] = await model.generate_batch(
   *   ["ROMEO:", { prompt: "JULIET:", stop: ["\n"] }],
   *   { max_new_tokens: 20, temperature: 0 },
   * );
   * console.log(a.text, b.finish_reason);
   * ```
   */
  generate_batch(
    prompts: (string | number[] | GenerateRequest)[],
    opts: RequestOptions = {},
  ): Promise<GenerateResult[]> {
    return this.engine.generate(this.#requests(prompts, opts));
  }

  /**
   * Streams the continuation of one prompt as text pieces; breaking out of the loop cancels it.
   *
   * @example Print as it comes
   * ```ts
   * import { load_model } from "../mod.ts";
   * using model = await load_model(undefined, { device: "cpu" });
   * for await (const piece of model.stream("ROMEO:", { max_new_tokens: 40, seed: 1 })) {
   *   Deno.stdout.writeSync(new TextEncoder().encode(piece));
   * }
   * ```
   */
  async *stream(prompt: string | number[], opts: RequestOptions = {}): AsyncGenerator<string> {
    for await (const ev of this.engine.run([{ ...opts, prompt }])) if (ev.text) yield ev.text;
  }

  /** Streams several prompts: events carry the index of their request. */
  stream_batch(
    prompts: (string | number[] | GenerateRequest)[],
    opts: RequestOptions = {},
  ): AsyncGenerator<TextEvent> {
    return this.engine.run(this.#requests(prompts, opts));
  }

  #requests(prompts: (string | number[] | GenerateRequest)[], opts: RequestOptions): GenerateRequest[] {
    return prompts.map((p) =>
      typeof p === "string" || Array.isArray(p) ? { ...opts, prompt: p } : { ...opts, ...p }
    );
  }

  /** Frees the engine's buffers, the weights and (if load_model created it) the backend. */
  [Symbol.dispose](): void {
    this.engine[Symbol.dispose]();
    this.gpt[Symbol.dispose]();
    if (this.#own_backend) this.backend[Symbol.dispose]();
  }

  /** Same as [Symbol.dispose]. */
  dispose(): void {
    this[Symbol.dispose]();
  }
}

/**
 * Loads a model: `spec` is a nanoGPT `ckpt.pt` (or its out_dir), a converted nanoGPT
 * `.safetensors`, a Hugging Face model directory, a hub name such as `gpt2` (downloaded into a
 * cache), `random:gpt2`..`random:gpt2-xl`, or by default the embedded shakespeare-char model.
 * Builds the native library first when it is missing or stale (or, imported from a URL, fetches
 * and builds it in the cache once). Pass `backend` to share one backend between models (it is
 * then not disposed with the model).
 *
 * @example Greedy text from the embedded model on the CPU
 * ```ts
 * import { load_model } from "../mod.ts";
 * using model = await load_model(undefined, { device: "cpu" });
 * const out = await model.generate("ROMEO:", { max_new_tokens: 20, temperature: 0 });
 * console.log(out.text, out.finish_reason);
 * ```
 */
export async function load_model(spec: string = DEFAULT_MODEL, opts: LoadOptions = {}): Promise<Model> {
  check_keys(opts, LOAD_OPTION_KEYS, "load options");
  if (!opts.backend) {
    await prepare_native({ lib_path: opts.lib_path, cache_dir: opts.cache_dir, log: opts.log });
  }
  using source = await open_model(spec, {
    revision: opts.revision,
    cache_dir: opts.cache_dir,
    log: opts.log,
  });
  const tokenizer = await create_tokenizer(source.tokenizer);
  // Everything made here is freed if a later step fails; on success the Model owns it.
  using stack = new DisposableStack();
  const backend = opts.backend ?? stack.use(create_backend(opts));
  opts.log?.(
    `loading ${source.origin} onto ${backend.device_name} (${backend.dtype}${
      opts.weights === "int8" ? ", int8 weights" : ""
    })`,
  );
  const gpt = stack.use(await GPT.load(backend, source, { weights: opts.weights }));
  const engine_opts = Object.fromEntries(
    ENGINE_OPTION_KEYS.map((k) => [k, opts[k]]).filter(([, v]) => v !== undefined),
  );
  const engine = stack.use(new Engine(gpt, tokenizer, engine_opts as EngineOptions));
  const model = new Model(gpt, tokenizer, source.origin, engine, !opts.backend, source.info);
  stack.move();
  return model;
}
