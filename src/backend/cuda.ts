/**
 * The CUDA backend: the CUDA driver API, cuBLASLt and NVRTC, all loaded at run time by the native
 * library; kernels compiled from native/kernels/*.cu at first use (cached on disk); steps
 * captured into CUDA graphs.
 *
 * Steps (run_step) with graphs on: the first time a key is seen, `record` runs twice: once as a
 * dry run, where every op only gets ready (compiles and loads its kernel, creates its cuBLASLt
 * plan, grows scratch memory) and launches nothing, then under stream capture (where nothing may
 * be allocated or created); the graph is instantiated, kept under the key and launched. Later
 * calls with the key only launch the graph. So `record` must only enqueue backend ops, the same
 * ones each time for a key (which a graph replay assumes anyway). With graphs off, `record` runs
 * once and its ops launch one by one. Host transfers (write, read, read_async, write_weight,
 * synchronize) are refused inside `record`.
 * @module
 */
import {
  type AdvanceArgs,
  type AttentionArgs,
  type Backend,
  type Buf,
  check_loop,
  type DType,
  dtype_bytes,
  DTYPE_CODE,
  type EmbedArgs,
  type FusedDecodeArgs,
  type GatherRowsArgs,
  type LayerNormArgs,
  type LogprobsArgs,
  type LoopLog,
  type MatmulArgs,
  type PendingRead,
  type SampleArgs,
  type ScatterArgs,
} from "./backend.ts";
import { native, type NativeLib } from "../native/lib.ts";
import { run_all } from "../util/cleanup.ts";
import { as_bytes } from "./buf.ts";
import { CudaContext, type MemInfo } from "./cuda/driver.ts";
import { DeviceMemory } from "./cuda/memory.ts";
import { ASYNC_WRITE_BYTES, PinnedStaging, SMALL_WRITE_BYTES } from "./cuda/staging.ts";
import { ReadRing } from "./cuda/read_ring.ts";
import { KernelModules } from "./cuda/modules.ts";
import { trace_bytes, trace_capacity, trace_defines } from "./cuda/step_trace.ts";
import { KernelOps } from "./cuda/ops.ts";
import {
  default_gemv_policy,
  default_gemv_split,
  default_gemv_tensor_cores,
  forced_gemm_split,
  gemm_fits,
  gemv_fits,
  GEMV_MAX_M,
  gemv_preferred,
  gemv_tensor_cores_for,
  type GemvPolicy,
  type GemvShape,
  type GemvTensorCores,
  Matmuls,
} from "./cuda/matmul.ts";
import { type StepGraph, StepGraphs } from "./cuda/graphs.ts";
import { cache_root, env } from "../util/env.ts";

export { cuda_status, type CudaStatus } from "./cuda/driver.ts";
export { compile_variant, kernel_sources, kernel_variants } from "./cuda/kernels.ts";

/** Options of create_cuda_backend. */
export interface CudaBackendOptions {
  /** Storage type of weights, activations and the KV cache (default "bf16"). */
  dtype?: DType;
  /** Capture steps into CUDA graphs (default true). */
  graphs?: boolean;
  /** Device ordinal (default 0). */
  device?: number;
  /** Path of libngpt (default: the usual lookup, see src/native/lib.ts). */
  lib_path?: string;
  /** Cache root for compiled kernels (default $NGPT_CACHE, $XDG_CACHE_HOME/ngpt, ~/.cache/ngpt). */
  cache_dir?: string;
}

/**
 * $NGPT_DEFINES: comma-separated NAME=VALUE defines added to every kernel's compile (experiments:
 * a kernel's tunable constants, measured without a rebuild). Checked, so a typo is not silently
 * a different kernel.
 */
function experiment_defines(): string[] {
  const v = env("NGPT_DEFINES");
  if (!v) return [];
  return v.split(",").map((d) => {
    if (!/^NG_[A-Z0-9_]+=[0-9]+$/.test(d)) {
      throw new Error(`NGPT_DEFINES: expected NG_NAME=integer, got "${d}"`);
    }
    return d;
  });
}

/** An on/off environment variable ("0" off, anything else on), or `fallback` when unset or unreadable. */
function env_flag(name: string, fallback: boolean): boolean {
  const v = env(name);
  return v === undefined ? fallback : v !== "0";
}

/** The CUDA implementation of Backend. */
export class CudaBackend implements Backend {
  readonly kind = "cuda" as const;
  readonly dtype: DType;
  readonly device_name: string;
  /** Whether steps are captured into CUDA graphs. */
  readonly graphs: boolean;
  /**
   * Which matmuls go to the gemv kernel (where their shapes allow) rather than cuBLASLt: "auto"
   * (the measured choice, see gemv_preferred in cuda/matmul.ts), or those with M up to a number
   * (0: none, 16: all). Default $NGPT_GEMV_MAX_M or "auto". Change it only between steps with
   * distinct keys (a captured step keeps the path it was recorded with).
   */
  gemv: GemvPolicy;
  /**
   * Which gemv matmuls run M >= 3 on tensor cores where the shape suits (GemvTensorCores and
   * gemv_mma_suits in cuda/matmul.ts): "int8" (int8 weights only), "all" or "off". Default
   * $NGPT_GEMV_MMA or "all". Change it only between steps with distinct keys, as `gemv`.
   */
  gemv_tensor_cores: GemvTensorCores;
  /**
   * Most blocks a tensor-core gemv may split K across (1..GEMV_SPLIT_MAX in cuda/matmul.ts; 1: never),
   * where the warps of a row group would each need more than one chunk (gemv_mma_launch). Default
   * $NGPT_GEMV_SPLIT or GEMV_SPLIT_MAX.
   * Change it only between steps with distinct keys, as `gemv`.
   */
  gemv_split: number;
  /**
   * A grid for every gemv launch instead of the rule's (GemvShape in cuda/matmul.ts), for benchmarks
   * that search the shapes (tests/gpu/gemv_bench.ts --sweep); null (the default) keeps the rule.
   * Change it only between steps with distinct keys, as `gemv`.
   */
  gemv_shape: GemvShape | null = null;
  /**
   * Whether matmuls the gemv does not take run in gemm_mma.cu (our tensor-core GEMM with the layernorm
   * in its prologue) where it fits (gemm_fits in cuda/matmul.ts) instead of cuBLASLt. Default
   * $NGPT_GEMM == "1": off, 2-4x slower than cuBLASLt at M = 256 on an H200 (docs/perf-notes.md,
   * ninth round). Change it only between steps with distinct keys, as `gemv`.
   */
  gemm: boolean = env("NGPT_GEMM") === "1";
  /**
   * K slices for every gemm_mma launch instead of the rule's (gemm_split in cuda/matmul.ts; within its
   * bounds), for tests and experiments; default $NGPT_GEMM_SPLIT, else undefined (the rule). Change it
   * only between steps with distinct keys, as `gemv`.
   */
  gemm_split: number | undefined = forced_gemm_split();
  /**
   * Whether run_loop records device-side loops (a graph WHILE node) when $NGPT_LOOP is "1";
   * by default its steps are recorded one after another in one graph. The WHILE node's iteration
   * boundary measured about 7 us against 1.3 inside a graph (H200, gpt2 batch 1, step trace):
   * 191.2 -> 187.8 us a step. Turned off for good when the driver refuses one (loop_error says
   * why).
   */
  device_loops: boolean;
  /**
   * Whether new cuBLASLt plans time the heuristic's candidates and keep the fastest (default true
   * unless $NGPT_AUTOTUNE is "0"). Costs a few milliseconds per new matmul shape, outside capture.
   */
  autotune: boolean;
  /** Why the driver refused a device-side loop, if it did. */
  loop_error: string | null = null;
  #counter = 0n;
  #lib: NativeLib;
  #ctx: CudaContext;
  #stream: bigint;
  #mem: DeviceMemory;
  #staging: PinnedStaging;
  #ring: ReadRing;
  #modules: KernelModules;
  #ops: KernelOps;
  #mm: Matmuls;
  #steps: StepGraphs;
  #in_step = false;
  #disposed = false;
  /** The step trace's buffer (NGPT_TRACE; step_trace.ts), owned by #mem. */
  #trace: Buf | null = null;

  /** Use create_cuda_backend. */
  constructor(lib: NativeLib, ctx: CudaContext, stream: bigint, mm: Matmuls, opts: CudaBackendOptions) {
    this.#lib = lib;
    this.#ctx = ctx;
    this.#stream = stream;
    this.#mm = mm;
    this.dtype = opts.dtype ?? "bf16";
    this.graphs = opts.graphs ?? true;
    this.gemv = default_gemv_policy();
    this.gemv_tensor_cores = default_gemv_tensor_cores();
    this.gemv_split = default_gemv_split();
    this.device_loops = env_flag("NGPT_LOOP", false);
    this.autotune = env_flag("NGPT_AUTOTUNE", true);
    this.device_name = ctx.name;
    this.#mem = new DeviceMemory(ctx);
    this.#staging = new PinnedStaging(ctx, stream);
    this.#ring = new ReadRing(ctx, stream);
    const trace_cap = trace_capacity();
    if (trace_cap > 0) {
      const t = this.#mem.alloc(trace_bytes(trace_cap), "step trace");
      this.#trace = t;
      this.#ctx.memset8(t.ptr, 0, t.bytes, stream);
    }
    const trace = this.#trace;
    this.#modules = new KernelModules(
      ctx,
      this.dtype,
      cache_root(opts.cache_dir),
      (k) => [...experiment_defines(), ...(trace ? trace_defines(trace.ptr, trace_cap, k) : [])],
    );
    this.#ops = new KernelOps(ctx, this.#modules, stream, this.dtype);
    this.#steps = new StepGraphs(ctx);
  }

  /** The autotuner's choices so far: "M,N,K,..." plan keys with the candidate picked and its time. */
  tuned_plans(): { key: string; index: number; us: number; first_us: number; candidates: number }[] {
    return this.#mm.tuned();
  }

  /** Compute capability as major * 10 + minor (the sm_XY kernels are compiled for). */
  get arch(): number {
    return this.#ctx.arch;
  }

  /** Streaming multiprocessors of the device (the gemv grids are sized by them). */
  get sm_count(): number {
    return this.#ctx.sm_count;
  }

  #open(what: string): void {
    if (this.#disposed) throw new Error(`${what}: the CUDA backend has been disposed`);
  }

  #host_op(what: string): void {
    this.#open(what);
    if (this.#in_step) {
      throw new Error(
        `${what}: host transfers cannot run inside run_step's record (they cannot be captured)`,
      );
    }
  }

  #range(what: string, buf: Buf, offset: number, bytes: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + bytes > buf.bytes) {
      throw new RangeError(
        `${what}: ${bytes} bytes at offset ${offset} do not fit "${buf.label}" (${buf.bytes} bytes)`,
      );
    }
  }

  alloc(bytes: number, label: string): Buf {
    this.#open(`alloc "${label}"`);
    if (this.#in_step) throw new Error(`alloc "${label}": cannot allocate inside run_step's record`);
    return this.#mem.alloc(bytes, label);
  }

  free(buf: Buf): void {
    this.#open(`free "${buf.label}"`);
    this.#mem.free(buf);
  }

  allocated_bytes(): number {
    return this.#mem.allocated_bytes();
  }

  /** Free and total device memory. */
  mem_info(): MemInfo {
    this.#open("mem_info");
    return this.#ctx.mem_info();
  }

  free_bytes(): number {
    return this.mem_info().free_bytes;
  }

  /** Number of captured step graphs. */
  graph_count(): number {
    return this.#steps.count();
  }

  write(dst: Buf, src: ArrayBufferView, dst_offset = 0): void {
    this.#host_op(`write to "${dst.label}"`);
    const bytes = as_bytes(src);
    this.#range(`write to "${dst.label}"`, dst, dst_offset, bytes.length);
    const s = this.#lib.symbols;
    const fill = (pinned: bigint, off: number, n: number) => {
      s.ng_host_write(pinned, bytes.subarray(off, off + n), BigInt(n));
    };
    const to = dst.ptr + BigInt(dst_offset);
    if (bytes.length > ASYNC_WRITE_BYTES) {
      this.#staging.upload(to, bytes.length, fill);
      return;
    }
    for (let off = 0; off < bytes.length; off += SMALL_WRITE_BYTES) {
      const n = Math.min(SMALL_WRITE_BYTES, bytes.length - off);
      this.#staging.upload_small(to + BigInt(off), n, (pinned) => fill(pinned, off, n));
    }
  }

  read(src: Buf, dst: ArrayBufferView, src_offset = 0): void {
    this.#host_op(`read from "${src.label}"`);
    const bytes = as_bytes(dst);
    this.#range(`read from "${src.label}"`, src, src_offset, bytes.length);
    const s = this.#lib.symbols;
    this.#staging.download(src.ptr + BigInt(src_offset), bytes.length, (pinned, off, n) => {
      s.ng_host_read(pinned, bytes.subarray(off, off + n), BigInt(n));
    });
  }

  /** Starts a device-to-host copy behind the enqueued work; see Backend.read_async. */
  read_async(src: Buf, bytes: number, src_offset = 0): PendingRead {
    this.#host_op(`read_async from "${src.label}"`);
    this.#range(`read_async from "${src.label}"`, src, src_offset, bytes);
    return this.#ring.read(src.ptr + BigInt(src_offset), bytes);
  }

  write_weight(dst: Buf, src: Uint8Array, src_dtype: DType, n: number, transpose?: [number, number]): void {
    const what = `write_weight to "${dst.label}"`;
    this.#host_op(what);
    const es_src = dtype_bytes(src_dtype), es = dtype_bytes(this.dtype);
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new RangeError(`${what}: n must be a non-negative integer, got ${n}`);
    }
    if (src.length < n * es_src) {
      throw new RangeError(`${what}: source holds ${src.length} bytes, needs ${n * es_src}`);
    }
    this.#range(what, dst, 0, n * es);
    if (transpose && transpose[0] * transpose[1] !== n) {
      throw new RangeError(`${what}: transpose [${transpose}] does not hold n = ${n} elements`);
    }
    const s = this.#lib.symbols, sd = DTYPE_CODE[src_dtype], dd = DTYPE_CODE[this.dtype];
    if (!transpose) {
      this.#staging.upload(dst.ptr, n * es, (pinned, off, bytes) => {
        const i0 = off / es, count = bytes / es;
        const part = src.subarray(i0 * es_src, (i0 + count) * es_src);
        this.#lib.check(s.ng_convert_buf(pinned, dd, part, sd, BigInt(count), 0n, 0n), "ng_convert_buf");
      });
      return;
    }
    const out = new BigUint64Array(1);
    this.#lib.check(s.ng_host_alloc(BigInt(Math.max(1, n * es)), out), "ng_host_alloc");
    const tmp = out[0];
    try {
      this.#lib.check(
        s.ng_convert_buf(tmp, dd, src, sd, BigInt(n), BigInt(transpose[0]), BigInt(transpose[1])),
        "ng_convert_buf",
      );
      this.#staging.upload(dst.ptr, n * es, (pinned, off, bytes) => {
        s.ng_host_copy(pinned, tmp + BigInt(off), BigInt(bytes));
      });
    } finally {
      s.ng_host_free(tmp, BigInt(Math.max(1, n * es)));
    }
  }

  embed(a: EmbedArgs): void {
    this.#open("embed");
    this.#ops.embed(a);
  }

  layernorm(a: LayerNormArgs): void {
    this.#open("layernorm");
    this.#ops.layernorm(a);
  }

  matmul(a: MatmulArgs): void {
    this.#open("matmul");
    this.#mm.validate(a);
    // Int8 weights: gemv whenever it fits (the other path dequantizes the whole layer first, so
    // at small M it would read the weights in 16 bits once and write and read them again).
    const tensor_cores = gemv_tensor_cores_for(this.gemv_tensor_cores, a);
    const wanted = a.w_scale
      ? a.M <= GEMV_MAX_M
      : this.gemv === "auto"
      ? gemv_preferred(a, this.dtype, tensor_cores)
      : a.M <= this.gemv;
    if (wanted && gemv_fits(a, this.dtype, this.#ctx.smem_optin_bytes)) {
      this.#ops.gemv(a, tensor_cores, this.gemv_split, this.gemv_shape);
      return;
    }
    if (this.gemm && gemm_fits(a, this.dtype)) {
      this.#ops.gemm(a, this.gemm_split);
      return;
    }
    if (a.w_scale) a = { ...a, w: this.#dequantized_weight(a), w_scale: null };
    if (a.ln) a = { ...a, x: this.#normed_input(a), ln: undefined };
    const p = this.#mm.plan(a, this.#ops.mode !== "capture", this.#stream, this.autotune);
    if (this.#ops.mode !== "prepare") this.#mm.run(a, p, this.#stream);
    if (p.post_gelu !== "none") this.#ops.bias_gelu(a.out, null, a.M * a.N, a.N, p.post_gelu);
  }

  /** The cuBLASLt path's int8 weight times its row scales, in the storage dtype (matmul scratch). */
  #dequantized_weight(a: MatmulArgs): Buf {
    const out = this.#mm.weight_scratch.get(
      a.N * a.K * dtype_bytes(this.dtype),
      this.#ops.mode !== "capture",
    );
    this.#ops.dequant_rows(out, a.w, a.w_scale!, a.N, a.K);
    return out;
  }

  /** The cuBLASLt path's input: layernorm(a.x) into the matmul scratch (grown outside capture). */
  #normed_input(a: MatmulArgs): Buf {
    const ln = a.ln!;
    const out = this.#mm.input_scratch.get(a.M * a.K * dtype_bytes(this.dtype), this.#ops.mode !== "capture");
    this.#ops.layernorm({ out, x: a.x, weight: ln.weight, bias: ln.bias, rows: a.M, C: a.K, eps: ln.eps });
    return out;
  }

  decode_fused(a: FusedDecodeArgs): boolean {
    this.#open("decode_fused");
    return this.#ops.decode_fused(a);
  }

  /**
   * The last fused decode's phase log (NGPT_FUSED_TRACE=1; native/kernels/decode_fused.cu): SM
   * clocks at its start, after each barrier and at its end, then its global timer (ns) at start and
   * end. Null when not tracing.
   */
  fused_trace(): BigUint64Array | null {
    const t = this.#ops.fused_trace();
    if (!t) return null;
    const out = new BigUint64Array(t.bytes / 8);
    this.read(t, out);
    return out;
  }

  /**
   * The step trace so far (NGPT_TRACE=<records>; src/backend/cuda/step_trace.ts parses it), then,
   * with `reset`, an empty one. Null when not tracing. Waits for the device.
   */
  step_trace(reset = false): BigUint64Array | null {
    this.#host_op("step_trace");
    if (!this.#trace) return null;
    this.synchronize();
    const out = new BigUint64Array(this.#trace.bytes / 8);
    this.read(this.#trace, out);
    if (reset) { // every record: a record keeps the marks its kernel does not log from before
      this.#ctx.memset8(this.#trace.ptr, 0, this.#trace.bytes, this.#stream);
      this.synchronize();
    }
    return out;
  }

  /** Decode steps that ran as one fused launch (decode_fused), launched or recorded into a graph. */
  get fused_steps(): number {
    return this.#ops.fused_steps;
  }

  attention(a: AttentionArgs): void {
    this.#open("attention");
    this.#ops.attention(a);
  }

  gather_rows(a: GatherRowsArgs): void {
    this.#open("gather_rows");
    this.#ops.gather_rows(a);
  }

  scatter(a: ScatterArgs): void {
    this.#open("scatter");
    this.#ops.scatter(a);
  }

  logprobs(a: LogprobsArgs): void {
    this.#open("logprobs");
    this.#ops.logprobs(a);
  }

  sample(a: SampleArgs): void {
    this.#open("sample");
    this.#ops.sample(a);
  }

  advance(a: AdvanceArgs): void {
    this.#open("advance");
    this.#ops.advance(a);
  }

  run_step(key: string, record: () => void): void {
    this.#open(`run_step "${key}"`);
    if (this.#in_step) throw new Error(`run_step "${key}": called inside another run_step's record`);
    this.#in_step = true;
    try {
      if (!this.graphs) {
        record();
        return;
      }
      let g = this.#steps.get(key);
      if (!g) g = this.#capture(key, record);
      this.#ctx.graph_launch(g.exec, this.#stream);
    } finally {
      this.#ops.mode = "direct";
      this.#in_step = false;
    }
  }

  /**
   * run_loop: the n steps (`record` plus loop_step, n times) recorded one after another in one graph
   * per key; with device_loops, the first time a key is seen, `record` plus loop_step is captured
   * once as the body of a WHILE node (the device loops n times per launch), and where the driver
   * refuses that graph the backend falls back, for good, to the steps one after another.
   */
  run_loop(key: string, n: number, record: () => void, log: LoopLog): void {
    this.#open(`run_loop "${key}"`);
    check_loop(n, log);
    if (this.#in_step) throw new Error(`run_loop "${key}": called inside another run_step's record`);
    const counter = this.#loop_counter();
    const unrolled = () => {
      for (let i = 0; i < n; i++) {
        record();
        this.#ops.loop_step(log, counter, 0n, n);
      }
    };
    if (!this.graphs || !this.device_loops) {
      this.run_step(key, unrolled);
      return;
    }
    this.#in_step = true;
    try {
      let g = this.#steps.get(key);
      if (!g) {
        try {
          g = this.#capture_loop(key, n, record, log, counter);
        } catch (e) {
          this.device_loops = false;
          this.loop_error = (e as Error).message;
        }
      }
      if (g) this.#ctx.graph_launch(g.exec, this.#stream);
    } finally {
      this.#ops.mode = "direct";
      this.#in_step = false;
    }
    if (!this.device_loops) this.run_step(key, unrolled);
  }

  /** The loop iteration counter (one int32, zero between launches), made on first use. */
  #loop_counter(): bigint {
    if (this.#counter === 0n) {
      const ptr = this.#ctx.mem_alloc(4);
      try {
        this.#ctx.memset8(ptr, 0, 4, this.#stream);
      } catch (e) {
        this.#ctx.mem_free(ptr);
        throw e;
      }
      this.#counter = ptr;
    }
    return this.#counter;
  }

  #capture_loop(key: string, n: number, record: () => void, log: LoopLog, counter: bigint) {
    this.#ops.mode = "prepare";
    record();
    this.#ops.loop_step(log, counter, 0n, n);
    this.#ops.mode = "capture";
    const { graph, handle } = this.#ctx.loop_capture_begin(this.#stream);
    try {
      record();
      this.#ops.loop_step(log, counter, handle, n);
    } catch (e) {
      this.#ctx.loop_capture_end(this.#stream, graph, false);
      throw e;
    }
    this.#ctx.loop_capture_end(this.#stream, graph, true);
    return this.#keep(key, graph);
  }

  #capture(key: string, record: () => void) {
    this.#ops.mode = "prepare";
    record();
    this.#ops.mode = "capture";
    this.#ctx.capture_begin(this.#stream);
    try {
      record();
    } catch (e) {
      this.#ctx.capture_abort(this.#stream);
      throw e;
    }
    return this.#keep(key, this.#ctx.capture_end(this.#stream));
  }

  /** Instantiates a captured graph and keeps it under `key`; destroys it if instantiation fails. */
  #keep(key: string, graph: bigint): StepGraph {
    let exec: bigint;
    try {
      exec = this.#ctx.graph_instantiate(graph);
    } catch (e) {
      this.#ctx.graph_destroy(graph);
      throw e;
    }
    const g = { graph, exec };
    this.#steps.add(key, g);
    return g;
  }

  /** Destroys every captured step graph (before freeing buffers they use). */
  reset_steps(): void {
    this.#host_op("reset_steps");
    this.#ctx.stream_sync(this.#stream);
    run_all([() => this.#steps.clear(), () => this.#ops.trim_scratch()]);
  }

  synchronize(): void {
    this.#host_op("synchronize");
    this.#ctx.stream_sync(this.#stream);
  }

  /**
   * Waits for enqueued work, then starts or stops the profiled range: under
   * `ncu --profile-from-start off` only the kernels launched inside it are profiled.
   */
  profiler(on: boolean): void {
    this.synchronize();
    this.#ctx.profiler(on);
  }

  /**
   * Frees every buffer, graph, module, cuBLASLt plan, pinned buffer, event and the stream, and
   * releases the primary context. Tries everything; then throws the first error, if any.
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    run_all([
      () => this.#ctx.stream_sync(this.#stream),
      () => this.#steps.clear(),
      () => this.#ops.dispose(),
      () => {
        if (this.#counter !== 0n) this.#ctx.mem_free(this.#counter);
        this.#counter = 0n;
      },
      () => this.#mm.dispose(),
      () => this.#modules.dispose(),
      () => this.#ring.dispose(),
      () => this.#staging.dispose(),
      () => this.#mem.free_all(),
      () => this.#ctx.stream_destroy(this.#stream),
      () => this.#ctx.release(),
    ]);
  }

  /** Same as dispose(). */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Opens device `opts.device` (default 0) and returns a CUDA backend storing `opts.dtype`
 * (default bf16). Throws an Error saying why when there is no usable CUDA driver or device, or
 * cuBLASLt is missing.
 */
export function create_cuda_backend(opts: CudaBackendOptions = {}): CudaBackend {
  const dtype = opts.dtype ?? "bf16";
  if (dtype !== "f32" && dtype !== "f16" && dtype !== "bf16") {
    throw new Error(`create_cuda_backend: dtype must be "f32", "f16" or "bf16", got "${dtype}"`);
  }
  const device = opts.device ?? 0;
  if (!Number.isInteger(device) || device < 0) {
    throw new Error(`create_cuda_backend: device must be a non-negative integer, got ${device}`);
  }
  const lib = native(opts.lib_path);
  let ctx: CudaContext;
  try {
    ctx = CudaContext.open(lib, device);
  } catch (e) {
    throw new Error(`CUDA backend unavailable: ${(e as Error).message}`, { cause: e });
  }
  let stream = 0n;
  try {
    stream = ctx.stream_create();
    const mm = new Matmuls(ctx, dtype);
    return new CudaBackend(lib, ctx, stream, mm, { ...opts, dtype });
  } catch (e) {
    try {
      if (stream) ctx.stream_destroy(stream);
      ctx.release();
    } catch { /* keep the first error */ }
    throw new Error(`CUDA backend unavailable: ${(e as Error).message}`, { cause: e });
  }
}
