// Compiles every CUDA kernel in every dtype (and head-size) variant for sm_90 and sm_80 through
// NVRTC (in workers: tests/helpers/nvrtc_worker.ts), with no GPU and no CUDA driver. Without NVRTC: fails when CI is set, else is skipped
// with the reason printed.
import { assert, assertEquals } from "./helpers/assert.ts";
import { native } from "../src/native/lib.ts";
import { Nvrtc, NvrtcCompileError } from "../src/backend/cuda/nvrtc.ts";
import { kernel_variants } from "../src/backend/cuda/kernels.ts";
import type { CompileJob, CompileResult } from "./helpers/nvrtc_worker.ts";

function load_nvrtc(): Nvrtc | string {
  try {
    return Nvrtc.load(native());
  } catch (e) {
    return (e as Error).message;
  }
}

const nvrtc = load_nvrtc();
const in_ci = !!Deno.env.get("CI");

if (typeof nvrtc === "string" && !in_ci) {
  console.log(`nvrtc_compile_test skipped: ${nvrtc}`);
  Deno.test({
    name: `nvrtc compile: skipped: NVRTC not found (${nvrtc.slice(0, 120)})`,
    ignore: true,
    fn() {},
  });
} else {
  // Compiling every variant takes minutes a core (the fused decode's variants about 8 s each), so
  // the variants are spread over one worker per core (up to 4).
  const workers = Math.max(1, Math.min(4, navigator.hardwareConcurrency ?? 1));
  for (const arch of [90, 80]) {
    Deno.test(`nvrtc compiles every kernel variant for sm_${arch}`, async () => {
      if (typeof nvrtc === "string") throw new Error(`CI is set but NVRTC is missing: ${nvrtc}`);
      const n = kernel_variants().length;
      assert(n > 20, `only ${n} variants`);
      const results = await Promise.all(Array.from({ length: workers }, (_, w) => {
        const worker = new Worker(new URL("./helpers/nvrtc_worker.ts", import.meta.url), { type: "module" });
        const job: CompileJob = {
          arch,
          indices: Array.from({ length: n }, (_, i) => i).filter((i) => i % workers === w),
        };
        return new Promise<CompileResult>((resolve, reject) => {
          worker.onmessage = (e: MessageEvent<CompileResult>) => {
            worker.terminate();
            resolve(e.data);
          };
          worker.onerror = (e) => {
            worker.terminate();
            e.preventDefault();
            reject(new Error(`compile worker ${w} for sm_${arch}: ${e.message}`));
          };
          worker.postMessage(job);
        });
      }));
      const errors = results.flatMap((r) => r.errors);
      if (errors.length > 0) throw new Error(errors.join("\n"));
      assertEquals(results.reduce((s, r) => s + r.compiled, 0), n);
    });
  }

  Deno.test("nvrtc reports the compile log of a broken kernel", () => {
    if (typeof nvrtc === "string") throw new Error(`CI is set but NVRTC is missing: ${nvrtc}`);
    let caught: unknown = null;
    try {
      nvrtc.compile('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }', "broken.cu", [
        "--gpu-architecture=sm_90",
      ]);
    } catch (e) {
      caught = e;
    }
    assert(caught instanceof NvrtcCompileError, `expected NvrtcCompileError, got ${caught}`);
    assert(caught.log.includes("undefined_name"), `log does not name the bad identifier: ${caught.log}`);
    assert(caught.message.includes("NVRTC_ERROR_COMPILATION"), caught.message);
  });
}
