/**
 * Device scratch that only grows, for buffers a recorded step uses (the decode attention's
 * partials, the cuBLASLt path's layernormed input and dequantized weight). It grows outside graph
 * capture only (the dry run sizes it); a grown buffer replaces the last for new steps, and older
 * ones stay allocated for the graphs recorded with them until trim().
 * @module
 */
import type { Buf } from "../backend.ts";
import type { CudaContext } from "./driver.ts";

/** One grow-only scratch buffer and the older ones graphs may still use. */
export class GrowingScratch {
  #ctx: CudaContext;
  #label: string;
  #slack: boolean;
  #bufs: Buf[] = [];

  /** `slack`: grow to max(need, twice the last, 1 MiB); else to exactly what is needed. */
  constructor(ctx: CudaContext, label: string, slack: boolean) {
    this.#ctx = ctx;
    this.#label = label;
    this.#slack = slack;
  }

  /** A buffer of at least `bytes`; growing it when `may_grow` (outside capture), else an internal error. */
  get(bytes: number, may_grow: boolean): Buf {
    const last = this.#bufs[this.#bufs.length - 1];
    if (last && last.bytes >= bytes) return last;
    if (!may_grow) throw new Error(`internal: ${this.#label} grew during graph capture (dry run skipped?)`);
    const size = this.#slack ? Math.max(bytes, 2 * (last?.bytes ?? 0), 1 << 20) : bytes;
    const buf = { ptr: this.#ctx.mem_alloc(size), bytes: size, label: this.#label };
    this.#bufs.push(buf);
    return buf;
  }

  /** The newest buffer, or null before the first get(). */
  newest(): Buf | null {
    return this.#bufs[this.#bufs.length - 1] ?? null;
  }

  /** Frees every buffer but the newest (call when no graph uses them). */
  trim(): void {
    while (this.#bufs.length > 1) this.#ctx.mem_free(this.#bufs.shift()!.ptr);
  }

  /** Frees every buffer. */
  dispose(): void {
    for (const b of this.#bufs) this.#ctx.mem_free(b.ptr);
    this.#bufs = [];
  }
}
