/**
 * ngpt: fast, readable GPT-2 and nanoGPT inference from TypeScript on Deno, and a server for it.
 *
 * ```ts
 * import { load_model } from "./mod.ts";
 * using model = await load_model(); // the embedded shakespeare-char model; or "gpt2", "path/to/ckpt.pt", ...
 * const out = await model.generate("ROMEO:", { max_new_tokens: 40, temperature: 0 });
 * console.log(out.text);
 * for await (const piece of model.stream("JULIET:", { max_new_tokens: 40, seed: 1 })) {
 *   Deno.stdout.writeSync(new TextEncoder().encode(piece));
 * }
 * ```
 *
 * Models: nanoGPT checkpoints (`ckpt.pt` as train.py writes it, or converted to safetensors),
 * Hugging Face GPT-2 directories (config.json + model.safetensors), hub names (`gpt2` .. `gpt2-xl`,
 * downloaded into a cache) and random-weight GPT-2 sizes (`random:gpt2-xl`) for benchmarks.
 * Backends: `cuda` (NVRTC kernels, cuBLASLt, CUDA graphs) and `cpu` (Zig kernels, the fp32
 * reference). Every call goes through one continuous-batching engine over a paged KV cache.
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
export { type Servable, serve, type ServeOptions, type Server } from "./src/server/server.ts";
export {
  type ContextOverflow,
  Engine,
  ENGINE_OPTION_KEYS,
  type EngineOptions,
  type FinishReason,
  type GenerateRequest,
  type GenerateResult,
  type LaunchTrace,
  QueueFullError,
  type RequestEvent,
  type RequestHandle,
  type RunStats,
  type TextEvent,
  type TokenLogprob,
} from "./src/engine/engine.ts";
export {
  type EventQueue,
  MAX_LOGPROBS,
  type RequestOptions,
  type ResolvedRequest,
  type SeqStatus,
  type Sequence,
} from "./src/engine/request.ts";
export type { TextStream } from "./src/engine/text_stream.ts";
export type { KvDtype } from "./src/engine/device_state.ts";
export { type ResolvedSampling, SAMPLING_DEFAULTS, type SamplingOptions } from "./src/engine/sampling.ts";
export { BlockPool, type PrefixCacheStats } from "./src/engine/kv_cache.ts";
export { EngineMetrics, Histogram } from "./src/engine/metrics.ts";
export {
  type FusedDecodeInput,
  GPT,
  type Linear,
  type LinearOptions,
  type Norm,
  type StepInput,
  type WeightFormat,
  type Workspace,
} from "./src/model/gpt.ts";
export type { Block } from "./src/model/gpt.ts";
export { gpt2_config, GPT2_SIZES, type GPTConfig } from "./src/model/config.ts";
export type { ModelSource, TensorSource, TokenizerSpec } from "./src/model/source.ts";
export type * from "./src/backend/backend.ts";
export { type CpuBackend, type CpuBackendOptions, create_cpu_backend } from "./src/backend/cpu.ts";
export {
  create_cuda_backend,
  cuda_status,
  type CudaBackend,
  type CudaBackendOptions,
  type CudaStatus,
} from "./src/backend/cuda.ts";
export type { GemvPolicy, GemvShape, GemvTensorCores } from "./src/backend/cuda/matmul.ts";
export type { MemInfo } from "./src/backend/cuda/driver.ts";
export { open_model, type OpenModelOptions } from "./src/loaders/open_model.ts";
export { create_tokenizer, type Tokenizer } from "./src/tokenizer/tokenizer.ts";
export {
  NativeError,
  type NativeLib,
  type NativeSymbols,
  prepare_native,
  type PrepareNativeOptions,
} from "./src/native/lib.ts";
export type { native_symbols } from "./src/native/symbols.ts";
export { PermissionError } from "./src/util/permissions.ts";
