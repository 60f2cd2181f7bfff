/**
 * Helpers over backend buffers.
 * @module
 */
import type { Buf } from "./backend.ts";

/** A view of `bytes` bytes of `buf` starting at `offset` (not owned: never free it). */
export function sub_buf(buf: Buf, offset: number, bytes: number): Buf {
  if (offset < 0 || bytes < 0 || offset + bytes > buf.bytes) {
    throw new RangeError(`view [${offset}, ${offset + bytes}) is outside ${buf.label} (${buf.bytes} bytes)`);
  }
  return { ptr: buf.ptr + BigInt(offset), bytes, label: `${buf.label}[${offset}..${offset + bytes})` };
}
