/**
 * Kernel modules of one backend: each variant compiled (or taken from the disk cache) and loaded
 * into the context the first time an op needs it, then kept until dispose.
 * @module
 */
import type { DType } from "../backend.ts";
import type { CudaContext } from "./driver.ts";
import { compile_variant, type KernelName, KERNELS, type KernelVariant, variant_name } from "./kernels.ts";
import { Nvrtc } from "./nvrtc.ts";

/** Loaded kernel functions, by variant. */
export class KernelModules {
  #ctx: CudaContext;
  #dtype: DType;
  #cache_dir: string | null;
  #nvrtc: Nvrtc | null = null;
  #modules = new Map<string, { module: bigint; func: bigint }>();

  #defines: (kernel: KernelName) => readonly string[];

  /** `defines`: further -D options of every kernel (the step trace's, step_trace.ts). */
  constructor(
    ctx: CudaContext,
    dtype: DType,
    cache_dir: string | null,
    defines: (kernel: KernelName) => readonly string[] = () => [],
  ) {
    this.#ctx = ctx;
    this.#dtype = dtype;
    this.#cache_dir = cache_dir;
    this.#defines = defines;
  }

  /** The function of `kernel` (for attention: at `head_dim`), loaded if `may_load`, else it must be. */
  get(kernel: KernelName, head_dim: number | undefined, may_load: boolean): bigint {
    const v: KernelVariant = { kernel, dtype: this.#dtype, head_dim };
    const name = variant_name(v);
    const hit = this.#modules.get(name);
    if (hit) return hit.func;
    if (!may_load) {
      throw new Error(
        `internal: kernel ${name} is not loaded during graph capture (run_step's record() must enqueue ` +
          "the same ops on its dry run and its capture)",
      );
    }
    this.#nvrtc ??= Nvrtc.load(this.#ctx.lib);
    const cubin = compile_variant(this.#nvrtc, v, this.#ctx.arch, this.#cache_dir, this.#defines(kernel));
    const module = this.#ctx.module_load(cubin);
    try {
      const func = this.#ctx.module_function(module, KERNELS[kernel].entry);
      this.#modules.set(name, { module, func });
      return func;
    } catch (e) {
      this.#ctx.module_unload(module);
      throw e;
    }
  }

  /** Number of loaded modules. */
  count(): number {
    return this.#modules.size;
  }

  /** Unloads every module. */
  dispose(): void {
    for (const { module } of this.#modules.values()) this.#ctx.module_unload(module);
    this.#modules.clear();
  }
}
