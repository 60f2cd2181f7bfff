/**
 * A CUDA device's primary context and the driver calls made in it, each checked: a failure
 * throws a NativeError whose message names the API and the driver's error, e.g.
 * "ng_cuda_mem_alloc failed: cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (out of memory) [code 2]".
 * @module
 */
import { native, type NativeLib } from "../../native/lib.ts";
import type { ArgPack } from "./launch_args.ts";
import { env } from "../../util/env.ts";

/** CUdevice_attribute codes used here. */
const ATTR_SM_COUNT = 16;
const ATTR_CC_MAJOR = 75;
const ATTR_CC_MINOR = 76;
const ATTR_SMEM_OPTIN = 97;

/** CU_EVENT_DISABLE_TIMING. */
export const EVENT_DISABLE_TIMING = 2;

/** Status of ng_cuda_mem_alloc for CUDA_ERROR_OUT_OF_MEMORY. */
export const CUDA_ERROR_OUT_OF_MEMORY = 2;

/** A grid or block shape. */
export type Dim3 = [number, number, number];

/** Free and total device memory. */
export interface MemInfo {
  /** Bytes free on the device (cuMemGetInfo). */
  free_bytes: number;
  /** Bytes of memory the device has. */
  total_bytes: number;
}

/** The primary context of one device, retained until release(). */
export class CudaContext {
  /** Device ordinal. */
  readonly device: number;
  /** The CUcontext handle. */
  readonly ctx: bigint;
  /** Device name, e.g. "NVIDIA H100 80GB HBM3". */
  readonly name: string;
  /** Compute capability as major * 10 + minor (90 for Hopper): the sm_XY NVRTC compiles for. */
  readonly arch: number;
  /** Streaming multiprocessors. */
  readonly sm_count: number;
  /** Largest dynamic shared memory a block may opt into, in bytes. */
  readonly smem_optin_bytes: number;
  readonly lib: NativeLib;
  #u64 = new BigUint64Array(2);
  #i32 = new Int32Array(1);
  #released = false;

  private constructor(lib: NativeLib, device: number, ctx: bigint) {
    this.lib = lib;
    this.device = device;
    this.ctx = ctx;
    const name = new Uint8Array(256);
    lib.check(lib.symbols.ng_cuda_device_name(device, name, BigInt(name.length)), "ng_cuda_device_name");
    const end = name.indexOf(0);
    this.name = new TextDecoder().decode(name.subarray(0, end < 0 ? name.length : end));
    this.arch = this.#attr(ATTR_CC_MAJOR) * 10 + this.#attr(ATTR_CC_MINOR);
    this.sm_count = this.#attr(ATTR_SM_COUNT);
    this.smem_optin_bytes = this.#attr(ATTR_SMEM_OPTIN);
  }

  /** Loads the driver and retains device `device`'s primary context (throws when there is none). */
  static open(lib: NativeLib, device: number): CudaContext {
    lib.check(lib.symbols.ng_cuda_init(), "ng_cuda_init");
    const out = new BigUint64Array(1);
    lib.check(lib.symbols.ng_cuda_ctx_retain(device, out), "ng_cuda_ctx_retain");
    try {
      return new CudaContext(lib, device, out[0]);
    } catch (e) {
      lib.symbols.ng_cuda_ctx_release(device);
      throw e;
    }
  }

  #attr(code: number): number {
    this.lib.check(
      this.lib.symbols.ng_cuda_device_attribute(this.device, code, this.#i32),
      "ng_cuda_device_attribute",
    );
    return this.#i32[0];
  }

  #out(status: number, api: string): bigint {
    this.lib.check(status, api);
    return this.#u64[0];
  }

  /** Free and total device memory. */
  mem_info(): MemInfo {
    this.lib.check(this.lib.symbols.ng_cuda_mem_info(this.ctx, this.#u64), "ng_cuda_mem_info");
    return { free_bytes: Number(this.#u64[0]), total_bytes: Number(this.#u64[1]) };
  }

  /** cuMemAlloc; returns [status, address]: the caller words out-of-memory errors itself. */
  try_mem_alloc(bytes: number): [number, bigint] {
    const s = this.lib.symbols.ng_cuda_mem_alloc(this.ctx, BigInt(bytes), this.#u64);
    return [s, s === 0 ? this.#u64[0] : 0n];
  }

  /** cuMemAlloc, throwing on failure. */
  mem_alloc(bytes: number): bigint {
    return this.#out(
      this.lib.symbols.ng_cuda_mem_alloc(this.ctx, BigInt(bytes), this.#u64),
      "ng_cuda_mem_alloc",
    );
  }

  /** cuMemFree. */
  mem_free(ptr: bigint): void {
    this.lib.check(this.lib.symbols.ng_cuda_mem_free(this.ctx, ptr), "ng_cuda_mem_free");
  }

  /** Page-locked host memory (cuMemHostAlloc). */
  host_alloc(bytes: number): bigint {
    return this.#out(
      this.lib.symbols.ng_cuda_host_alloc(this.ctx, BigInt(bytes), this.#u64),
      "ng_cuda_host_alloc",
    );
  }

  /** Frees page-locked host memory. */
  host_free(ptr: bigint): void {
    this.lib.check(this.lib.symbols.ng_cuda_host_free(this.ctx, ptr), "ng_cuda_host_free");
  }

  /** A new non-blocking stream. */
  stream_create(): bigint {
    return this.#out(this.lib.symbols.ng_cuda_stream_create(this.ctx, this.#u64), "ng_cuda_stream_create");
  }

  /** Destroys a stream. */
  stream_destroy(stream: bigint): void {
    this.lib.check(this.lib.symbols.ng_cuda_stream_destroy(this.ctx, stream), "ng_cuda_stream_destroy");
  }

  /** Starts or stops the profiled range (cuProfilerStart / cuProfilerStop). */
  profiler(on: boolean): void {
    this.lib.check(this.lib.symbols.ng_cuda_profiler(this.ctx, on ? 1 : 0), "ng_cuda_profiler");
  }

  /** Waits for a stream's work. */
  stream_sync(stream: bigint): void {
    this.lib.check(this.lib.symbols.ng_cuda_stream_sync(this.ctx, stream), "ng_cuda_stream_sync");
  }

  /** A new event (flags: EVENT_DISABLE_TIMING or 0). */
  event_create(flags = EVENT_DISABLE_TIMING): bigint {
    return this.#out(
      this.lib.symbols.ng_cuda_event_create(this.ctx, flags, this.#u64),
      "ng_cuda_event_create",
    );
  }

  /** Destroys an event. */
  event_destroy(event: bigint): void {
    this.lib.check(this.lib.symbols.ng_cuda_event_destroy(this.ctx, event), "ng_cuda_event_destroy");
  }

  /** Records an event on a stream. */
  event_record(event: bigint, stream: bigint): void {
    this.lib.check(this.lib.symbols.ng_cuda_event_record(this.ctx, event, stream), "ng_cuda_event_record");
  }

  /** Milliseconds between two completed timing events (created with flags 0). */
  event_elapsed_ms(start: bigint, end: bigint): number {
    const out = new Float32Array(1);
    this.lib.check(
      this.lib.symbols.ng_cuda_event_elapsed(this.ctx, start, end, out),
      "ng_cuda_event_elapsed",
    );
    return out[0];
  }

  /** True when the work before the event is done (never blocks). */
  event_done(event: bigint): boolean {
    this.lib.check(this.lib.symbols.ng_cuda_event_query(this.ctx, event, this.#i32), "ng_cuda_event_query");
    return this.#i32[0] === 1;
  }

  /** Waits for the work before the event. */
  event_sync(event: bigint): void {
    this.lib.check(this.lib.symbols.ng_cuda_event_sync(this.ctx, event), "ng_cuda_event_sync");
  }

  /** Enqueues a copy from host address `src` to device address `dst`. */
  memcpy_htod(dst: bigint, src: bigint, bytes: number, stream: bigint): void {
    this.lib.check(
      this.lib.symbols.ng_cuda_memcpy_htod(this.ctx, dst, src, BigInt(bytes), stream),
      "ng_cuda_memcpy_htod",
    );
  }

  /** Enqueues a copy from device address `src` to host address `dst`. */
  memcpy_dtoh(dst: bigint, src: bigint, bytes: number, stream: bigint): void {
    this.lib.check(
      this.lib.symbols.ng_cuda_memcpy_dtoh(this.ctx, dst, src, BigInt(bytes), stream),
      "ng_cuda_memcpy_dtoh",
    );
  }

  /** Enqueues a byte fill. */
  memset8(dst: bigint, value: number, bytes: number, stream: bigint): void {
    this.lib.check(
      this.lib.symbols.ng_cuda_memset8(this.ctx, dst, value, BigInt(bytes), stream),
      "ng_cuda_memset8",
    );
  }

  /** Loads a CUBIN image into the context. */
  module_load(image: Uint8Array): bigint {
    return this.#out(
      this.lib.symbols.ng_cuda_module_load(this.ctx, image, BigInt(image.length), this.#u64),
      "ng_cuda_module_load",
    );
  }

  /** Unloads a module. */
  module_unload(module: bigint): void {
    this.lib.check(this.lib.symbols.ng_cuda_module_unload(this.ctx, module), "ng_cuda_module_unload");
  }

  /** A kernel of a module, by name. */
  module_function(module: bigint, name: string): bigint {
    const z = new TextEncoder().encode(name + "\0");
    return this.#out(
      this.lib.symbols.ng_cuda_module_function(this.ctx, module, z, this.#u64),
      "ng_cuda_module_function",
    );
  }

  /** Lets a kernel use `bytes` of dynamic shared memory (above 48 KiB). */
  func_set_smem(func: bigint, bytes: number): void {
    this.lib.check(this.lib.symbols.ng_cuda_func_set_smem(this.ctx, func, bytes), "ng_cuda_func_set_smem");
  }

  /**
   * Programmatic dependent launch for every kernel (env NGPT_PDL=0 turns it off): a kernel may start
   * while the previous one finishes; every kernel of native/kernels waits (ng_grid_dep_wait) before
   * it reads earlier results, and the gemv prefetches its weights before waiting.
   */
  pdl: boolean = env("NGPT_PDL") !== "0";

  /** Launches a kernel with packed arguments on a stream. */
  launch(func: bigint, grid: Dim3, block: Dim3, smem_bytes: number, stream: bigint, args: ArgPack): void {
    const s = this.lib.symbols.ng_cuda_launch(
      this.ctx,
      func,
      grid[0],
      grid[1],
      grid[2],
      block[0],
      block[1],
      block[2],
      smem_bytes,
      stream,
      args.bytes,
      args.offsets,
      args.count,
      this.pdl && this.arch >= 90 ? 1 : 0,
    );
    if (s !== 0) this.lib.check(s, `ng_cuda_launch(${args.kernel})`);
  }

  /** Starts capturing a stream into a graph (thread-local mode). */
  capture_begin(stream: bigint): void {
    this.lib.check(this.lib.symbols.ng_cuda_capture_begin(this.ctx, stream), "ng_cuda_capture_begin");
  }

  /**
   * Starts capturing the body of a device-side loop (a graph with one WHILE node); returns that
   * graph and the loop's conditional handle.
   */
  loop_capture_begin(stream: bigint): { graph: bigint; handle: bigint } {
    this.lib.check(
      this.lib.symbols.ng_cuda_loop_capture_begin(this.ctx, stream, this.#u64),
      "ng_cuda_loop_capture_begin",
    );
    return { graph: this.#u64[0], handle: this.#u64[1] };
  }

  /** Ends a loop body's capture; with ok false (never throws) destroys the loop's graph. */
  loop_capture_end(stream: bigint, graph: bigint, ok: boolean): void {
    const s = this.lib.symbols.ng_cuda_loop_capture_end(this.ctx, stream, graph, ok ? 1 : 0);
    if (ok) this.lib.check(s, "ng_cuda_loop_capture_end");
  }

  /** Ends a capture; returns the graph. */
  capture_end(stream: bigint): bigint {
    return this.#out(
      this.lib.symbols.ng_cuda_capture_end(this.ctx, stream, this.#u64),
      "ng_cuda_capture_end",
    );
  }

  /** Ends a failed capture, if any, destroying what it captured (never throws). */
  capture_abort(stream: bigint): void {
    this.lib.symbols.ng_cuda_capture_abort(this.ctx, stream);
  }

  /** Instantiates a graph. */
  graph_instantiate(graph: bigint): bigint {
    return this.#out(
      this.lib.symbols.ng_cuda_graph_instantiate(this.ctx, graph, this.#u64),
      "ng_cuda_graph_instantiate",
    );
  }

  /** Launches an executable graph on a stream. */
  graph_launch(exec: bigint, stream: bigint): void {
    this.lib.check(this.lib.symbols.ng_cuda_graph_launch(this.ctx, exec, stream), "ng_cuda_graph_launch");
  }

  /** Destroys an executable graph. */
  graph_exec_destroy(exec: bigint): void {
    this.lib.check(this.lib.symbols.ng_cuda_graph_exec_destroy(this.ctx, exec), "ng_cuda_graph_exec_destroy");
  }

  /** Destroys a graph. */
  graph_destroy(graph: bigint): void {
    this.lib.check(this.lib.symbols.ng_cuda_graph_destroy(this.ctx, graph), "ng_cuda_graph_destroy");
  }

  /** Releases the primary context (once). */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.lib.check(this.lib.symbols.ng_cuda_ctx_release(this.device), "ng_cuda_ctx_release");
  }
}

/** What `cuda_status()` reports. */
export type CudaStatus = { ok: true; devices: number; name: string } | { ok: false; reason: string };

/**
 * Whether the CUDA backend can run here: the driver loads and has a device. Never throws (for
 * `--device auto`); `reason` says what is missing.
 */
export function cuda_status(lib_path?: string): CudaStatus {
  let lib: NativeLib;
  try {
    lib = native(lib_path);
  } catch (e) {
    return { ok: false, reason: `native library unavailable: ${(e as Error).message}` };
  }
  try {
    const s = lib.symbols;
    if (s.ng_cuda_init() !== 0) return { ok: false, reason: lib.last_error() };
    const n = new Int32Array(1);
    if (s.ng_cuda_device_count(n) !== 0) return { ok: false, reason: lib.last_error() };
    if (n[0] < 1) return { ok: false, reason: "no CUDA device (the driver loaded but reports 0 devices)" };
    const name = new Uint8Array(256);
    if (s.ng_cuda_device_name(0, name, BigInt(name.length)) !== 0) {
      return { ok: false, reason: lib.last_error() };
    }
    const end = name.indexOf(0);
    return {
      ok: true,
      devices: n[0],
      name: new TextDecoder().decode(name.subarray(0, end < 0 ? name.length : end)),
    };
  } catch (e) {
    return { ok: false, reason: `CUDA probe failed: ${(e as Error).message}` };
  }
}
