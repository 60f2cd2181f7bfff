/**
 * Helpers over backend buffers.
 * @module
 */
import type { Backend, Buf } from "./backend.ts";

/** A view of `bytes` bytes of `buf` starting at `offset` (not owned: never free it). */
export function sub_buf(buf: Buf, offset: number, bytes: number, label?: string): Buf {
  if (
    !Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset < 0 || bytes < 0 ||
    offset + bytes > buf.bytes
  ) {
    throw new RangeError(`view [${offset}, ${offset + bytes}) is outside ${buf.label} (${buf.bytes} bytes)`);
  }
  return {
    ptr: buf.ptr + BigInt(offset),
    bytes,
    label: label ?? `${buf.label}[${offset}..${offset + bytes})`,
    base: buf.base ?? buf,
  };
}

/** Splits `buf` into consecutive views of the given byte sizes (each aligned to `align` bytes). */
export function split_buf<K extends string>(buf: Buf, sizes: Record<K, number>, align = 16): Record<K, Buf> {
  const out = {} as Record<K, Buf>;
  let off = 0;
  for (const k of Object.keys(sizes) as K[]) {
    off = Math.ceil(off / align) * align;
    out[k] = sub_buf(buf, off, sizes[k], `${buf.label}.${k}`);
    off += sizes[k];
  }
  return out;
}

/** Bytes split_buf needs for `sizes` at `align`. */
export function split_bytes(sizes: Record<string, number>, align = 16): number {
  let off = 0;
  for (const v of Object.values(sizes)) off = Math.ceil(off / align) * align + v;
  return off;
}

/** The bytes of any typed array or DataView (no copy). */
export function as_bytes(v: ArrayBufferView): Uint8Array {
  return v instanceof Uint8Array ? v : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/**
 * A table of addresses on `be`: one row of u64 per entry of `rows`, the buffers' addresses (0 for
 * null or undefined), for kernels that walk a model's layers (the fused decode). The caller owns it.
 */
export function address_table(
  be: Backend,
  rows: readonly (readonly (Buf | null | undefined)[])[],
  label: string,
): Buf {
  const addrs = new BigUint64Array(rows.flatMap((r) => r.map((b) => b?.ptr ?? 0n)));
  const buf = be.alloc(Math.max(8, addrs.byteLength), label);
  try {
    be.write(buf, addrs);
  } catch (e) {
    be.free(buf);
    throw e;
  }
  return buf;
}
