// Without a CUDA driver or device (CI, this machine): the library still loads, cuda_status()
// says why CUDA is unavailable without throwing, and create_cuda_backend throws a clear Error.
import { assert, assertThrows } from "./helpers/assert.ts";
import { create_cuda_backend, cuda_status } from "../src/backend/cuda.ts";
import { native } from "../src/native/lib.ts";

const status = cuda_status();

if (status.ok) {
  Deno.test({
    name: `cuda without a device: skipped: a CUDA device is present (${status.name})`,
    ignore: true,
    fn() {},
  });
} else {
  Deno.test("cuda_status reports why CUDA is unavailable, without throwing", () => {
    assert(!status.ok);
    assert(/driver|device/i.test(status.reason), `reason names neither driver nor device: ${status.reason}`);
    // Asking twice gives the same answer (the failed driver load is remembered, not retried).
    const again = cuda_status();
    assert(!again.ok && again.reason === status.reason, `second answer differs: ${JSON.stringify(again)}`);
  });

  Deno.test("create_cuda_backend throws a clear Error without CUDA", () => {
    const e = assertThrows(() => create_cuda_backend({ dtype: "f32" }), Error, "CUDA backend unavailable");
    assert(/driver|device/i.test(e.message), e.message);
    assertThrows(() => create_cuda_backend({ dtype: "f8" as never }), Error, "dtype");
  });

  Deno.test("native CUDA entry points fail cleanly before init", () => {
    const lib = native();
    const out = new BigUint64Array(1);
    assert(lib.symbols.ng_cuda_mem_alloc(1n, 16n, out) !== 0);
    assert(/driver|CUDA/.test(lib.last_error()), lib.last_error());
    const n = new Int32Array([7]);
    const s = lib.symbols.ng_cuda_device_count(n);
    // No driver: an error naming it; a driver without devices: 0 devices.
    assert(
      s !== 0 ? /driver/i.test(lib.last_error()) : n[0] === 0,
      `status ${s}, count ${n[0]}: ${lib.last_error()}`,
    );
  });
}
