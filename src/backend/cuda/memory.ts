/**
 * Device buffers handed out by CudaBackend.alloc: every live one is tracked (for allocated_bytes,
 * double-free detection and freeing everything on dispose).
 * @module
 */
import type { Buf } from "../backend.ts";
import { CUDA_ERROR_OUT_OF_MEMORY, type CudaContext } from "./driver.ts";
import { run_all } from "../../util/cleanup.ts";

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** The live device buffers of one backend. */
export class DeviceMemory {
  #ctx: CudaContext;
  #live = new Map<bigint, Buf>();
  #bytes = 0;

  constructor(ctx: CudaContext) {
    this.#ctx = ctx;
  }

  /**
   * Allocates `bytes` (at least 1) of device memory. Out of memory throws an Error naming the
   * label, the size and the device's free/total memory; nothing stays allocated.
   */
  alloc(bytes: number, label: string): Buf {
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      throw new RangeError(`alloc "${label}": size must be a non-negative integer, got ${bytes}`);
    }
    const [status, ptr] = this.#ctx.try_mem_alloc(Math.max(bytes, 1));
    if (status !== 0) {
      const why = this.#ctx.lib.last_error();
      if (status === CUDA_ERROR_OUT_OF_MEMORY) {
        const m = this.#ctx.mem_info();
        throw new Error(
          `alloc "${label}": out of device memory allocating ${bytes} bytes (${mib(bytes)}) on ` +
            `${this.#ctx.name}: ${mib(m.free_bytes)} free of ${mib(m.total_bytes)} ` +
            `(${mib(this.#bytes)} held by this backend) [${why}]`,
        );
      }
      throw new Error(`alloc "${label}": cannot allocate ${bytes} bytes on ${this.#ctx.name}: ${why}`);
    }
    const buf: Buf = Object.freeze({ ptr, bytes, label });
    this.#live.set(ptr, buf);
    this.#bytes += bytes;
    return buf;
  }

  /** Frees a buffer from alloc; a buffer that is not live (freed twice, or a view) throws. */
  free(buf: Buf): void {
    const live = this.#live.get(buf.ptr);
    if (!live || live.bytes !== buf.bytes) {
      throw new Error(
        `free "${buf.label}": ${buf.bytes} bytes at 0x${
          buf.ptr.toString(16)
        } is not a live allocation of this ` +
          "backend (freed twice, or a view of a buffer)",
      );
    }
    this.#live.delete(buf.ptr);
    this.#bytes -= live.bytes;
    this.#ctx.mem_free(buf.ptr);
  }

  /** Whether `buf` is live. */
  has(buf: Buf): boolean {
    return this.#live.get(buf.ptr)?.bytes === buf.bytes;
  }

  /** Bytes currently allocated. */
  allocated_bytes(): number {
    return this.#bytes;
  }

  /** Number of live buffers. */
  count(): number {
    return this.#live.size;
  }

  /** Frees every live buffer (dispose), all of them even when some fail; then throws the first failure. */
  free_all(): void {
    const bufs = [...this.#live.values()];
    try {
      run_all(bufs.map((buf) => () => this.free(buf)));
    } finally {
      this.#live.clear();
      this.#bytes = 0;
    }
  }
}
