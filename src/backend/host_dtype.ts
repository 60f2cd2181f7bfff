/**
 * Element types of raw little-endian tensor bytes, read on the host (the loaders' conversions and
 * the model's int8 quantization at load time).
 * @module
 */
import type { DType } from "./backend.ts";

/** `n` elements of `bytes` (in `dtype`) as f32. */
export function to_f32(bytes: Uint8Array, dtype: DType, n: number): Float32Array {
  const copy = bytes.slice(0, n * (dtype === "f32" ? 4 : 2)).buffer;
  if (dtype === "f32") return new Float32Array(copy);
  if (dtype === "f16") return Float32Array.from(new Float16Array(copy));
  const out = new Float32Array(n), bits = new Uint32Array(out.buffer), src = new Uint16Array(copy);
  for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
  return out;
}
