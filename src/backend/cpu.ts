/**
 * The CPU backend: fp32 Zig kernels (native/cpu/) over 64-byte aligned host memory, threaded by one
 * process-wide pool. Every op runs before its call returns, so run_step just runs the step and
 * synchronize has nothing to wait for. It is the reference the CUDA backend is tested against.
 * @module
 */
import {
  ACTIVATION_CODE,
  type AdvanceArgs,
  type AttentionArgs,
  type Backend,
  type Buf,
  check_loop,
  type DType,
  dtype_bytes,
  DTYPE_CODE,
  type EmbedArgs,
  type GatherRowsArgs,
  type LayerNormArgs,
  type LogprobsArgs,
  type LoopLog,
  type MatmulArgs,
  type SampleArgs,
  type ScatterArgs,
} from "./backend.ts";
import { as_bytes } from "./buf.ts";
import { check_attention, check_dims, check_logprobs, need } from "./checks.ts";
import { native, type NativeLib } from "../native/lib.ts";
import { check_keys } from "../util/check.ts";

/** The CPU backend (fp32). Create it with create_cpu_backend. */
export class CpuBackend implements Backend {
  /** Which implementation. */
  readonly kind = "cpu" as const;
  /** Always f32. */
  readonly dtype: DType = "f32";
  /** "CPU (N threads)". */
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
    check_dims("create_cpu_backend", { threads }, 0);
    this.#lib = lib;
    this.#sym = lib.symbols;
    lib.check(this.#sym.ng_cpu_init(threads), "ng_cpu_init");
    this.threads = this.#sym.ng_cpu_threads();
    this.device_name = `CPU (${this.threads} thread${this.threads === 1 ? "" : "s"})`;
  }

  alloc(bytes: number, label: string): Buf {
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      throw new RangeError(`alloc '${label}': size ${bytes} is not a non-negative integer number of bytes`);
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
        `free: buffer '${buf.label}' (${buf.bytes} bytes) is not allocated here (double free, or a view?)`,
      );
    }
    this.#live.delete(buf.ptr);
    this.#allocated_bytes -= buf.bytes;
    this.#sym.ng_host_free(buf.ptr, BigInt(buf.bytes));
  }

  allocated_bytes(): number {
    return this.#allocated_bytes;
  }

  free_bytes(): number | null {
    return null;
  }

  #check_range(op: string, buf: Buf, offset: number, bytes: number): void {
    const base = buf.base ?? buf;
    if (this.#live.get(base.ptr) !== base) {
      throw new Error(`${op}: buffer '${buf.label}' is not allocated (freed?)`);
    }
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + bytes > buf.bytes) {
      throw new RangeError(
        `${op}: ${bytes} bytes at offset ${offset} do not fit buffer '${buf.label}' of ${buf.bytes} bytes`,
      );
    }
  }

  write(dst: Buf, src: ArrayBufferView, dst_offset = 0): void {
    this.#check_range("write", dst, dst_offset, src.byteLength);
    if (src.byteLength === 0) return;
    this.#sym.ng_host_write(dst.ptr + BigInt(dst_offset), as_bytes(src), BigInt(src.byteLength));
  }

  read(src: Buf, dst: ArrayBufferView, src_offset = 0): void {
    this.#check_range("read", src, src_offset, dst.byteLength);
    if (dst.byteLength === 0) return;
    this.#sym.ng_host_read(src.ptr + BigInt(src_offset), as_bytes(dst), BigInt(dst.byteLength));
  }

  write_weight(dst: Buf, src: Uint8Array, src_dtype: DType, n: number, transpose?: [number, number]): void {
    const op = `write_weight '${dst.label}'`;
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new RangeError(`${op}: element count ${n} is not a valid count`);
    }
    const src_bytes = n * dtype_bytes(src_dtype);
    if (src.byteLength < src_bytes) {
      throw new RangeError(
        `${op}: source has ${src.byteLength} bytes, needs ${src_bytes} for ${n} ${src_dtype} elements`,
      );
    }
    this.#check_range(op, dst, 0, n * 4);
    const [rows, cols] = transpose ?? [0, 0];
    if (transpose && (rows * cols !== n || rows <= 0 || cols <= 0)) {
      throw new RangeError(`${op}: transpose shape [${rows}, ${cols}] does not hold ${n} elements`);
    }
    if (n === 0) return;
    const s = this.#sym.ng_convert_buf(
      dst.ptr,
      DTYPE_CODE.f32,
      src,
      DTYPE_CODE[src_dtype],
      BigInt(n),
      BigInt(rows),
      BigInt(cols),
    );
    this.#lib.check(s, "ng_convert_buf");
  }

  embed(a: EmbedArgs): void {
    const op = "embed";
    check_dims(op, { rows: a.rows, C: a.C, max_pos: a.max_pos });
    need(op, "out", a.out, a.rows * a.C * 4, `${a.rows} x ${a.C} f32`);
    need(op, "tokens", a.tokens, a.rows * 4, `${a.rows} int32`);
    need(op, "positions", a.positions, a.rows * 4, `${a.rows} int32`);
    need(op, "wpe", a.wpe, a.max_pos * a.C * 4, `${a.max_pos} x ${a.C} f32`);
    const vocab = Math.floor(a.wte.bytes / (a.C * 4));
    const s = this.#sym.ng_cpu_embed(
      a.out.ptr,
      a.tokens.ptr,
      a.positions.ptr,
      a.wte.ptr,
      a.wpe.ptr,
      a.rows,
      a.C,
      a.max_pos,
      vocab,
    );
    this.#lib.check(s, "ng_cpu_embed");
  }

  layernorm(a: LayerNormArgs): void {
    const op = "layernorm";
    check_dims(op, { rows: a.rows, C: a.C });
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
    const op = "matmul";
    check_dims(op, { M: a.M, N: a.N, K: a.K });
    const act = ACTIVATION_CODE[a.act];
    if (act === undefined) throw new RangeError(`matmul: unknown activation '${a.act}'`);
    if (a.ln) a = { ...a, x: this.#normed_input(a), ln: undefined };
    need(op, "out", a.out, a.M * a.N * 4, `${a.M} x ${a.N} f32`);
    need(op, "x", a.x, a.M * a.K * 4, `${a.M} x ${a.K} f32`);
    if (a.w_scale) {
      need(op, "w", a.w, a.N * a.K, `${a.N} x ${a.K} int8`);
      need(op, "w_scale", a.w_scale, a.N * 4, `${a.N} f32`);
    } else need(op, "w", a.w, a.N * a.K * 4, `${a.N} x ${a.K} f32`);
    if (a.bias) need(op, "bias", a.bias, a.N * 4, `${a.N} f32`);
    const s = this.#sym.ng_cpu_matmul(
      a.out.ptr,
      a.x.ptr,
      a.w.ptr,
      a.w_scale?.ptr ?? 0n,
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
    check_attention(op, a, 4);
    const L = a.layout;
    if (a.seq_start && a.max_seq_rows !== undefined) {
      // The CUDA kernels launch max_seq_rows rows per sequence and skip any beyond: check the bound
      // here, where seq_start is host memory, so the CPU tests catch a caller that understates it.
      const starts = new Int32Array(a.B + 1);
      this.read(a.seq_start, starts);
      for (let b = 0; b < a.B; b++) {
        const rows = starts[b + 1] - starts[b];
        if (rows > a.max_seq_rows) {
          throw new RangeError(`${op}: sequence ${b} has ${rows} rows, above max_seq_rows ${a.max_seq_rows}`);
        }
      }
    }
    const s = this.#sym.ng_cpu_attention(
      a.out.ptr,
      a.qkv.ptr,
      a.cache.k.ptr,
      a.cache.v.ptr,
      a.cache.k_scale?.ptr ?? 0n,
      a.cache.v_scale?.ptr ?? 0n,
      a.block_table.ptr,
      a.lengths.ptr,
      a.seq_start ? 0n : a.n_new!.ptr,
      a.seq_start?.ptr ?? 0n,
      a.B,
      L.n_head,
      L.head_dim,
      L.block_size,
      L.max_blocks,
      L.num_blocks,
    );
    this.#lib.check(s, "ng_cpu_attention");
  }

  gather_rows(a: GatherRowsArgs): void {
    const op = "gather_rows";
    check_dims(op, { n: a.n, C: a.C });
    need(op, "out", a.out, a.n * a.C * 4, `${a.n} x ${a.C} f32`);
    need(op, "idx", a.idx, a.n * 4, `${a.n} int32`);
    const x_rows = Math.floor(a.x.bytes / (a.C * 4));
    const s = this.#sym.ng_cpu_gather_rows(a.out.ptr, a.x.ptr, a.idx.ptr, a.n, a.C, x_rows);
    this.#lib.check(s, "ng_cpu_gather_rows");
  }

  scatter(a: ScatterArgs): void {
    const op = "scatter";
    check_dims(op, { n: a.n });
    need(op, "src", a.src, a.n * 4, `${a.n} int32`);
    need(op, "idx", a.idx, a.n * 4, `${a.n} int32`);
    const s = this.#sym.ng_cpu_scatter(a.dst.ptr, a.src.ptr, a.idx.ptr, a.n, Math.floor(a.dst.bytes / 4));
    this.#lib.check(s, "ng_cpu_scatter");
  }

  sample(a: SampleArgs): void {
    const op = "sample";
    check_dims(op, { B: a.B, V: a.V });
    need(op, "tokens_out", a.tokens_out, a.B * 4, `${a.B} int32`);
    const ld = a.ld ?? a.V;
    if (!Number.isInteger(ld) || ld < a.V) {
      throw new RangeError(`${op}: ld must be an integer >= V (${a.V}), got ${ld}`);
    }
    need(op, "logits", a.logits, ((a.B - 1) * ld + a.V) * 4, `${a.B} rows of ${a.V} f32, ${ld} apart`);
    for (const k of ["lengths", "n_new", "temperature", "top_k", "top_p"] as const) {
      need(op, k, a[k], a.B * 4, `${a.B} x 4 bytes`);
    }
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

  logprobs(a: LogprobsArgs): void {
    const op = "logprobs";
    check_logprobs(op, a);
    const s = this.#sym.ng_cpu_logprobs(a.out.ptr, a.logits.ptr, a.targets.ptr, a.rows, a.V, a.ld, a.top_n);
    this.#lib.check(s, "ng_cpu_logprobs");
  }

  advance(a: AdvanceArgs): void {
    check_dims("advance", { B: a.B });
    need("advance", "lengths", a.lengths, a.B * 4, `${a.B} int32`);
    need("advance", "n_new", a.n_new, a.B * 4, `${a.B} int32`);
    this.#lib.check(this.#sym.ng_cpu_advance(a.lengths.ptr, a.n_new.ptr, a.B), "ng_cpu_advance");
  }

  run_step(_key: string, record: () => void): void {
    record();
  }

  run_loop(_key: string, n: number, record: () => void, log: LoopLog): void {
    check_loop(n, log);
    for (let i = 0; i < n; i++) {
      record();
      for (const c of log.copies) {
        const row = new Uint8Array(c.words * 4);
        this.#sym.ng_host_read(c.src.ptr, row, BigInt(row.length));
        this.#sym.ng_host_write(
          c.dst.ptr + BigInt((log.first_row + i) * c.stride * 4),
          row,
          BigInt(row.length),
        );
      }
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

/** Options of create_cpu_backend. */
export interface CpuBackendOptions {
  /** Kernel threads, the caller included (default 0 = one per core). */
  threads?: number;
  /** The libngpt to load (default: see src/native/lib.ts resolve_lib_path). */
  lib_path?: string;
}

/** Creates a CPU backend (the native library must be built: see prepare_native). */
export function create_cpu_backend(opts: CpuBackendOptions = {}): CpuBackend {
  check_keys(opts, ["threads", "lib_path"], "create_cpu_backend options");
  return new CpuBackend(native(opts.lib_path), opts.threads ?? 0);
}
