/**
 * Element type conversion of raw little-endian tensor bytes on the host, for tools that write
 * files (examples/convert.ts). Rounding is to nearest even, as PyTorch's `.to()` does.
 * @module
 */
import type { DType } from "../backend/backend.ts";
import { to_f32 } from "../backend/host_dtype.ts";

/** `n` elements of `bytes` (in `from`) as bytes of `to`. */
export function convert_dtype(bytes: Uint8Array, from: DType, to: DType, n: number): Uint8Array {
  const f = to_f32(bytes, from, n);
  if (to === "f32") return new Uint8Array(f.buffer);
  if (to === "f16") return new Uint8Array(Float16Array.from(f).buffer);
  const bits = new Uint32Array(f.buffer), out = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    const u = bits[i];
    // NaN stays a (quiet) NaN; everything else rounds to nearest even on the 16 dropped bits.
    out[i] = (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 0x40 : (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
  return new Uint8Array(out.buffer);
}
