/**
 * Packs kernel arguments into one buffer, each at its natural alignment, recording each one's
 * offset: the native launch builds cuLaunchKernel's `kernelParams` pointer array from them.
 * @module
 */
import type { Buf } from "../backend.ts";

const CAPACITY = 256;
const MAX_ARGS = 32;

/** A reusable argument buffer: reset(name), then ptr/i32/f32/i64 in the kernel's order. */
export class ArgPack {
  /** The packed bytes (only the first `size` count). */
  readonly bytes: Uint8Array = new Uint8Array(CAPACITY);
  /** Byte offset of each argument (only the first `count` count). */
  readonly offsets: Uint32Array = new Uint32Array(MAX_ARGS);
  /** The kernel the arguments are for (error messages). */
  kernel = "";
  #view = new DataView(this.bytes.buffer);
  #off = 0;
  #count = 0;

  /** Bytes packed so far. */
  get size(): number {
    return this.#off;
  }

  /** Arguments packed so far. */
  get count(): number {
    return this.#count;
  }

  /** Starts the arguments of kernel `kernel`. */
  reset(kernel: string): this {
    this.kernel = kernel;
    this.#off = 0;
    this.#count = 0;
    return this;
  }

  #align(n: number): number {
    const o = (this.#off + n - 1) & ~(n - 1);
    if (o + n > CAPACITY || this.#count >= MAX_ARGS) {
      throw new Error(`${this.kernel}: kernel arguments exceed ${CAPACITY} bytes or ${MAX_ARGS} arguments`);
    }
    this.offsets[this.#count++] = o;
    this.#off = o + n;
    return o;
  }

  /** A device pointer (a Buf's address, or null for a null pointer). */
  ptr(p: Buf | bigint | null): this {
    const v = p === null ? 0n : typeof p === "bigint" ? p : p.ptr;
    this.#view.setBigUint64(this.#align(8), v, true);
    return this;
  }

  /** A 32-bit signed integer. */
  i32(n: number): this {
    if (!Number.isInteger(n) || n < -0x80000000 || n > 0x7fffffff) {
      throw new RangeError(`${this.kernel}: argument ${n} is not a 32-bit integer`);
    }
    this.#view.setInt32(this.#align(4), n, true);
    return this;
  }

  /** A 64-bit signed integer. */
  i64(n: number): this {
    if (!Number.isSafeInteger(n)) throw new RangeError(`${this.kernel}: argument ${n} is not a safe integer`);
    this.#view.setBigInt64(this.#align(8), BigInt(n), true);
    return this;
  }

  /** A 32-bit float. */
  f32(x: number): this {
    this.#view.setFloat32(this.#align(4), x, true);
    return this;
  }
}
