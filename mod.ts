/**
 * ngpt: fast, readable GPT-2 and nanoGPT inference from TypeScript on Deno.
 *
 * ```ts
 * import { load_model } from "./mod.ts";
 * using model = await load_model("gpt2", { device: "auto" });
 * const out = await model.generate("Hello, I'm a language model,", { max_new_tokens: 40, temperature: 0 });
 * console.log(out.text);
 * for await (const piece of model.stream("Once upon a time", { max_new_tokens: 40, seed: 1 })) {
 *   Deno.stdout.writeSync(new TextEncoder().encode(piece));
 * }
 * ```
 *
 * Models: nanoGPT checkpoints (`ckpt.pt` as train.py writes it), Hugging Face GPT-2 directories
 * (config.json + model.safetensors), hub names (`gpt2` .. `gpt2-xl`, downloaded into a cache) and
 * random-weight GPT-2 sizes (`random:gpt2-xl`) for benchmarks. Backends: `cuda` (NVRTC kernels,
 * cuBLASLt, one CUDA graph per step shape) and `cpu` (Zig kernels, the fp32 reference).
 * @module
 */
export {
  create_backend,
  DEFAULT_MODEL,
  type DeviceKind,
  load_model,
  LOAD_OPTION_KEYS,
  type LoadOptions,
  Model,
} from "./src/load.ts";
export {
  type ContextOverflow,
  Engine,
  type EngineOptions,
  type FinishReason,
  type GenerateRequest,
  type GenerateResult,
  type RunStats,
  type TextEvent,
} from "./src/engine/engine.ts";
export { SAMPLING_DEFAULTS, type SamplingOptions } from "./src/engine/sampling.ts";
export { GPT } from "./src/model/gpt.ts";
export { gpt2_config, GPT2_SIZES, type GPTConfig } from "./src/model/config.ts";
export type { Activation, Backend, Buf, DType } from "./src/backend/backend.ts";
export { create_cpu_backend } from "./src/backend/cpu.ts";
export { create_cuda_backend, cuda_status } from "./src/backend/cuda.ts";
export { open_model } from "./src/loaders/open_model.ts";
export type { ModelSource, TensorSource, TokenizerSpec } from "./src/model/source.ts";
export { create_tokenizer, type Tokenizer } from "./src/tokenizer/tokenizer.ts";
export { NativeError } from "./src/native/lib.ts";
