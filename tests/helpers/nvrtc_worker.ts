/**
 * A worker of tests/nvrtc_compile_test.ts: compiles the kernel variants it is sent (indices into
 * kernel_variants()) for one SM architecture and posts back one message per variant that failed
 * (or was not an ELF CUBIN), then `done`. Compiles run one per worker, so the test spreads them
 * over the machine's cores (NVRTC calls block the thread that makes them).
 */
import { native } from "../../src/native/lib.ts";
import { Nvrtc, NvrtcCompileError } from "../../src/backend/cuda/nvrtc.ts";
import { compile_variant, kernel_variants, variant_name } from "../../src/backend/cuda/kernels.ts";

/** What the test sends: the architecture and the variants' indices. */
export interface CompileJob {
  arch: number;
  indices: number[];
}

/** What a worker sends back when it is done: the failures, one line each, and how many compiled. */
export interface CompileResult {
  errors: string[];
  compiled: number;
}

/** The worker's global scope, as far as this file uses it. */
const scope = self as unknown as {
  onmessage: ((e: MessageEvent<CompileJob>) => void) | null;
  postMessage(m: CompileResult): void;
};

scope.onmessage = (e: MessageEvent<CompileJob>) => {
  const { arch, indices } = e.data;
  const errors: string[] = [];
  let compiled = 0;
  try {
    const nvrtc = Nvrtc.load(native());
    const variants = kernel_variants();
    for (const i of indices) {
      const v = variants[i];
      try {
        const cubin = compile_variant(nvrtc, v, arch, null);
        // A CUBIN is an ELF image.
        const elf = cubin.length > 64 && cubin[0] === 0x7f && cubin[1] === 0x45 && cubin[2] === 0x4c &&
          cubin[3] === 0x46;
        if (!elf) errors.push(`${variant_name(v)} sm_${arch}: not an ELF CUBIN (${cubin.length} bytes)`);
        else compiled++;
      } catch (err) {
        const msg = err instanceof NvrtcCompileError ? err.message : String(err);
        errors.push(`${variant_name(v)} sm_${arch}: ${msg}`);
      }
    }
  } catch (err) {
    errors.push(`worker for sm_${arch}: ${(err as Error).message}`);
  }
  scope.postMessage({ errors, compiled });
};
