/**
 * The CPU backend: fp32 Zig kernels (native/cpu/) over 64-byte aligned host memory, threaded by one
 * process-wide pool. Every op runs before its call returns, so run_step just runs the step and
 * synchronize has nothing to wait for. It is the reference the CUDA backend is tested against.
 * @module
 */
import type {
  Activation,
  AdvanceArgs,
  AttentionArgs,
  Backend,
  Buf,
  DType,
  EmbedArgs,
  GatherLastArgs,
  LayerNormArgs,
  LoopLog,
  MatmulArgs,
  SampleArgs,
} from "./backend.ts";
import { check_loop, dtype_bytes } from "./backend.ts";
import { native, type NativeLib } from "../native/lib.ts";

/** Native dtype codes of native/cpu/convert.zig. */
const DTYPE_CODE: Record<DType, number> = { f32: 0, f16: 1, bf16: 2 };
/** Native activation codes of native/cpu/matmul.zig. */
const ACT_CODE: Record<Activation, number> = { none: 0, gelu_erf: 1, gelu_tanh: 2 };

function bytes_view(v: ArrayBufferView): Uint8Array {
  return v instanceof Uint8Array ? v : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

function check_dim(op: string, name: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new Error(`${op}: ${name} = ${v} is not an integer in 0..2^32-1`);
  }
}

/** Throws unless `buf` holds at least `bytes` bytes; `what` describes the expected contents. */
function need(op: string, name: string, buf: Buf, bytes: number, what: string): void {
  if (buf.bytes < bytes) {
    throw new Error(`${op}: ${name} buffer '${buf.label}' has ${buf.bytes} bytes, needs ${bytes} (${what})`);
  }
}

/** The CPU backend (fp32). Create it with create_cpu_backend. */
export class CpuBackend implements Backend {
  readonly kind = "cpu" as const;
  readonly dtype: DType = "f32";
  readonly device_name: string;
  /** Threads the kernels run on, the calling thread included. */
  readonly threads: number;

  #lib: NativeLib;
  #sym: NativeLib["symbols"];
  #live = new Map<bigint, Buf>();
  /** Layernorm output for matmuls with `ln` (backend-owned, not counted in allocated_bytes). */
  #scratch: Buf | null = null;
  #allocated_bytes = 0;
  #out_ptr = new BigUint64Array(1);

  /**
   * Opens the kernels in `lib` with a pool of `threads` threads (0 = one per core). The pool is
   * process-wide: a later backend with another thread count resizes it for all.
   */
  constructor(lib: NativeLib, threads = 0) {
    check_dim("create_cpu_backend", "threads", threads);
    this.#lib = lib;
    this.#sym = lib.symbols;
    lib.check(this.#sym.ng_cpu_init(threads), "ng_cpu_init");
    this.threads = this.#sym.ng_cpu_threads();
    this.device_name = `CPU (${this.threads} thread${this.threads === 1 ? "" : "s"})`;
  }

  alloc(bytes: number, label: string): Buf {
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      throw new Error(`alloc '${label}': size ${bytes} is not a non-negative integer number of bytes`);
    }
    const status = this.#sym.ng_host_alloc(BigInt(bytes), this.#out_ptr);
    if (status !== 0) {
      throw new Error(
        `alloc '${label}': could not allocate ${bytes} bytes of host memory: ${this.#lib.last_error()}`,
      );
    }
    const buf: Buf = Object.freeze({ ptr: this.#out_ptr[0], bytes, label });
    if (this.#live.has(buf.ptr)) throw new Error(`alloc '${label}': allocator returned a live address`);
    this.#live.set(buf.ptr, buf);
    this.#allocated_bytes += bytes;
    return buf;
  }

  free(buf: Buf): void {
    const live = this.#live.get(buf.ptr);
    if (live !== buf) {
      throw new Error(
        `free: buffer '${buf.label}' (${buf.bytes} bytes) is not allocated here (double free?)`,
      );
    }
    this.#live.delete(buf.ptr);
    this.#allocated_bytes -= buf.bytes;
    this.#sym.ng_host_free(buf.ptr, BigInt(buf.bytes));
  }

  allocated_bytes(): number {
    return this.#allocated_bytes;
  }

  #check_range(op: string, buf: Buf, offset: number, bytes: number): void {
    if (this.#live.get(buf.ptr) !== buf) {
      throw new Error(`${op}: buffer '${buf.label}' is not allocated (freed?)`);
    }
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + bytes > buf.bytes) {
      throw new Error(
        `${op}: ${bytes} bytes at offset ${offset} do not fit buffer '${buf.label}' of ${buf.bytes} bytes`,
      );
    }
  }

  write(dst: Buf, src: ArrayBufferView, dst_offset = 0): void {
    this.#check_range("write", dst, dst_offset, src.byteLength);
    if (src.byteLength === 0) return;
    this.#sym.ng_host_write(dst.ptr + BigInt(dst_offset), bytes_view(src), BigInt(src.byteLength));
  }

  read(src: Buf, dst: ArrayBufferView, src_offset = 0): void {
    this.#check_range("read", src, src_offset, dst.byteLength);
    if (dst.byteLength === 0) return;
    this.#sym.ng_host_read(src.ptr + BigInt(src_offset), bytes_view(dst), BigInt(dst.byteLength));
  }

  write_weight(dst: Buf, src: Uint8Array, src_dtype: DType, n: number, transpose?: [number, number]): void {
    const op = `write_weight '${dst.label}'`;
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${op}: element count ${n} is not a valid count`);
    const src_bytes = n * dtype_bytes(src_dtype);
    if (src.byteLength < src_bytes) {
      throw new Error(
        `${op}: source has ${src.byteLength} bytes, needs ${src_bytes} for ${n} ${src_dtype} elements`,
      );
    }
    this.#check_range(op, dst, 0, n * 4);
    const [rows, cols] = transpose ?? [0, 0];
    if (transpose && (rows * cols !== n || rows <= 0 || cols <= 0)) {
      throw new Error(`${op}: transpose shape [${rows}, ${cols}] does not hold ${n} elements`);
    }
    if (n === 0) return;
    const status = this.#sym.ng_convert_buf(
      dst.ptr,
      DTYPE_CODE.f32,
      src,
      DTYPE_CODE[src_dtype],
      BigInt(n),
      BigInt(rows),
      BigInt(cols),
    );
    this.#lib.check(status, "ng_convert_buf");
  }

  embed(a: EmbedArgs): void {
    const op = "embed";
    for (const [k, v] of [["B", a.B], ["T", a.T], ["C", a.C], ["max_pos", a.max_pos]] as const) {
      check_dim(op, k, v);
    }
    const rows = a.B * a.T;
    need(op, "out", a.out, rows * a.C * 4, `${rows} x ${a.C} f32`);
    need(op, "tokens", a.tokens, rows * 4, `${rows} int32`);
    need(op, "lengths", a.lengths, a.B * 4, `${a.B} int32`);
    need(op, "wpe", a.wpe, a.max_pos * a.C * 4, `${a.max_pos} x ${a.C} f32`);
    const s = this.#sym.ng_cpu_embed(
      a.out.ptr,
      a.tokens.ptr,
      a.lengths.ptr,
      a.wte.ptr,
      a.wpe.ptr,
      a.B,
      a.T,
      a.C,
      a.max_pos,
    );
    this.#lib.check(s, "ng_cpu_embed");
  }

  layernorm(a: LayerNormArgs): void {
    const op = "layernorm";
    check_dim(op, "rows", a.rows);
    check_dim(op, "C", a.C);
    need(op, "out", a.out, a.rows * a.C * 4, `${a.rows} x ${a.C} f32`);
    need(op, "x", a.x, a.rows * a.C * 4, `${a.rows} x ${a.C} f32`);
    need(op, "weight", a.weight, a.C * 4, `${a.C} f32`);
    if (a.bias) need(op, "bias", a.bias, a.C * 4, `${a.C} f32`);
    const s = this.#sym.ng_cpu_layernorm(
      a.out.ptr,
      a.x.ptr,
      a.weight.ptr,
      a.bias?.ptr ?? 0n,
      a.rows,
      a.C,
      a.eps,
    );
    this.#lib.check(s, "ng_cpu_layernorm");
  }

  /** Layernorms `a.x` into the backend's scratch (grown as needed) and returns it. */
  #normed_input(a: MatmulArgs): Buf {
    const ln = a.ln!;
    const bytes = a.M * a.K * 4;
    if (!this.#scratch || this.#scratch.bytes < bytes) {
      if (this.#scratch) this.#sym.ng_host_free(this.#scratch.ptr, BigInt(this.#scratch.bytes));
      this.#scratch = null;
      this.#lib.check(this.#sym.ng_host_alloc(BigInt(bytes), this.#out_ptr), "ng_host_alloc");
      this.#scratch = { ptr: this.#out_ptr[0], bytes, label: "layernorm scratch" };
    }
    this.layernorm({
      out: this.#scratch,
      x: a.x,
      weight: ln.weight,
      bias: ln.bias,
      rows: a.M,
      C: a.K,
      eps: ln.eps,
    });
    return this.#scratch;
  }

  matmul(a: MatmulArgs): void {
    if (a.ln) a = { ...a, x: this.#normed_input(a), ln: undefined };
    const op = "matmul";
    check_dim(op, "M", a.M);
    check_dim(op, "N", a.N);
    check_dim(op, "K", a.K);
    need(op, "out", a.out, a.M * a.N * 4, `${a.M} x ${a.N} f32`);
    need(op, "x", a.x, a.M * a.K * 4, `${a.M} x ${a.K} f32`);
    need(op, "w", a.w, a.N * a.K * 4, `${a.N} x ${a.K} f32`);
    if (a.bias) need(op, "bias", a.bias, a.N * 4, `${a.N} f32`);
    const act = ACT_CODE[a.act];
    if (act === undefined) throw new Error(`matmul: unknown activation '${a.act}'`);
    const s = this.#sym.ng_cpu_matmul(
      a.out.ptr,
      a.x.ptr,
      a.w.ptr,
      a.bias?.ptr ?? 0n,
      a.M,
      a.N,
      a.K,
      act,
      a.accumulate ? 1 : 0,
    );
    this.#lib.check(s, "ng_cpu_matmul");
  }

  attention(a: AttentionArgs): void {
    const op = "attention";
    for (
      const [k, v] of [["B", a.B], ["T", a.T], ["n_head", a.n_head], ["head_dim", a.head_dim], [
        "max_T",
        a.max_T,
      ]] as const
    ) check_dim(op, k, v);
    const C = a.n_head * a.head_dim;
    const rows = a.B * a.T;
    const cache = a.B * a.n_head * a.max_T * a.head_dim * 4;
    need(op, "out", a.out, rows * C * 4, `${rows} x ${C} f32`);
    need(op, "qkv", a.qkv, rows * 3 * C * 4, `${rows} x ${3 * C} f32`);
    need(op, "k_cache", a.k_cache, cache, `${a.B} x ${a.n_head} x ${a.max_T} x ${a.head_dim} f32`);
    need(op, "v_cache", a.v_cache, cache, `${a.B} x ${a.n_head} x ${a.max_T} x ${a.head_dim} f32`);
    need(op, "lengths", a.lengths, a.B * 4, `${a.B} int32`);
    need(op, "n_new", a.n_new, a.B * 4, `${a.B} int32`);
    const s = this.#sym.ng_cpu_attention(
      a.out.ptr,
      a.qkv.ptr,
      a.k_cache.ptr,
      a.v_cache.ptr,
      a.lengths.ptr,
      a.n_new.ptr,
      a.B,
      a.T,
      a.n_head,
      a.head_dim,
      a.max_T,
    );
    this.#lib.check(s, "ng_cpu_attention");
  }

  gather_last(a: GatherLastArgs): void {
    const op = "gather_last";
    for (const [k, v] of [["B", a.B], ["T", a.T], ["C", a.C]] as const) check_dim(op, k, v);
    need(op, "out", a.out, a.B * a.C * 4, `${a.B} x ${a.C} f32`);
    need(op, "x", a.x, a.B * a.T * a.C * 4, `${a.B * a.T} x ${a.C} f32`);
    need(op, "n_new", a.n_new, a.B * 4, `${a.B} int32`);
    const s = this.#sym.ng_cpu_gather_last(a.out.ptr, a.x.ptr, a.n_new.ptr, a.B, a.T, a.C);
    this.#lib.check(s, "ng_cpu_gather_last");
  }

  sample(a: SampleArgs): void {
    const op = "sample";
    check_dim(op, "B", a.B);
    check_dim(op, "V", a.V);
    need(op, "tokens_out", a.tokens_out, a.B * 4, `${a.B} int32`);
    const ld = a.ld ?? a.V;
    if (!Number.isInteger(ld) || ld < a.V) {
      throw new RangeError(`${op}: ld must be an integer >= V (${a.V}), got ${ld}`);
    }
    need(op, "logits", a.logits, ((a.B - 1) * ld + a.V) * 4, `${a.B} rows of ${a.V} f32, ${ld} apart`);
    need(op, "lengths", a.lengths, a.B * 4, `${a.B} int32`);
    need(op, "n_new", a.n_new, a.B * 4, `${a.B} int32`);
    need(op, "temperature", a.temperature, a.B * 4, `${a.B} f32`);
    need(op, "top_k", a.top_k, a.B * 4, `${a.B} int32`);
    need(op, "top_p", a.top_p, a.B * 4, `${a.B} f32`);
    need(op, "seed", a.seed, a.B * 8, `${a.B} x 2 u32`);
    const s = this.#sym.ng_cpu_sample(
      a.tokens_out.ptr,
      a.logits.ptr,
      a.lengths.ptr,
      a.n_new.ptr,
      a.temperature.ptr,
      a.top_k.ptr,
      a.top_p.ptr,
      a.seed.ptr,
      a.B,
      a.V,
      ld,
    );
    this.#lib.check(s, "ng_cpu_sample");
  }

  advance(a: AdvanceArgs): void {
    check_dim("advance", "B", a.B);
    need("advance", "lengths", a.lengths, a.B * 4, `${a.B} int32`);
    need("advance", "n_new", a.n_new, a.B * 4, `${a.B} int32`);
    this.#lib.check(this.#sym.ng_cpu_advance(a.lengths.ptr, a.n_new.ptr, a.B), "ng_cpu_advance");
  }

  run_step(_key: string, record: () => void): void {
    record();
  }

  run_loop(_key: string, n: number, record: () => void, log: LoopLog): void {
    check_loop(n, log);
    const row = new Uint8Array(log.B * 4);
    for (let i = 0; i < n; i++) {
      record();
      this.#sym.ng_host_read(log.src.ptr, row, BigInt(row.length));
      this.#sym.ng_host_write(
        log.dst.ptr + BigInt((log.first_row + i) * log.stride * 4),
        row,
        BigInt(row.length),
      );
    }
  }

  synchronize(): void {}

  /** Frees every buffer still allocated. */
  [Symbol.dispose](): void {
    if (this.#scratch) this.#sym.ng_host_free(this.#scratch.ptr, BigInt(this.#scratch.bytes));
    this.#scratch = null;
    for (const buf of [...this.#live.values()]) this.free(buf);
  }
}

/**
 * Creates a CPU backend. `threads`: kernel threads, the caller included (default 0 = one per core);
 * `lib_path`: the libngpt to load (default: see src/native/lib.ts resolve_lib_path).
 */
export function create_cpu_backend(opts: { threads?: number; lib_path?: string } = {}): CpuBackend {
  return new CpuBackend(native(opts.lib_path), opts.threads ?? 0);
}
