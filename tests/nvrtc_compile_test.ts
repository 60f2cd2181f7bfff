// Compiles every CUDA kernel in every dtype (and head-size) variant for sm_90 and sm_80 through
// NVRTC, with no GPU and no CUDA driver. Without NVRTC: fails when CI is set, else is skipped
// with the reason printed.
import { assert } from "./helpers/assert.ts";
import { native } from "../src/native/lib.ts";
import { Nvrtc, NvrtcCompileError } from "../src/backend/cuda/nvrtc.ts";
import { compile_variant, kernel_variants, variant_name } from "../src/backend/cuda/kernels.ts";

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
  for (const arch of [90, 80]) {
    Deno.test(`nvrtc compiles every kernel variant for sm_${arch}`, () => {
      if (typeof nvrtc === "string") throw new Error(`CI is set but NVRTC is missing: ${nvrtc}`);
      const variants = kernel_variants();
      assert(variants.length > 20, `only ${variants.length} variants`);
      for (const v of variants) {
        let cubin: Uint8Array;
        try {
          cubin = compile_variant(nvrtc, v, arch, null);
        } catch (e) {
          if (e instanceof NvrtcCompileError) throw new Error(`${variant_name(v)} sm_${arch}: ${e.message}`);
          throw e;
        }
        // A CUBIN is an ELF image.
        assert(
          cubin.length > 64 && cubin[0] === 0x7f && cubin[1] === 0x45 && cubin[2] === 0x4c &&
            cubin[3] === 0x46,
          `${variant_name(v)} sm_${arch}: not an ELF CUBIN (${cubin.length} bytes)`,
        );
      }
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
