/**
 * The small interface the model and the engine are written against. Two backends implement it:
 * `cpu` (Zig kernels, fp32, the reference) and `cuda` (NVRTC kernels, cuBLASLt, CUDA graphs).
 *
 * Every op is *enqueued*: on CUDA it is launched on the backend's stream (and so can be captured
 * into a CUDA graph); on the CPU it runs before the call returns. Shapes are plain numbers passed
 * with each call; all tensors are row-major and dense. Integer tensors (tokens, lengths, n_new,
 * top_k) are int32; sampling parameters temperature/top_p are f32; seeds are u32 pairs (lo, hi).
 * Float tensors (weights, activations, KV cache, logits) are in `backend.dtype`, except `logits`,
 * which are always f32.
 *
 * Ragged batches: a step processes B sequences with T token slots each. Sequence b already holds
 * `lengths[b]` tokens in its KV cache and brings `n_new[b]` <= T new tokens in slots 0..n_new[b]-1;
 * slots past n_new[b] are padding: their outputs are garbage and they never write the KV cache.
 * A new token in slot t sits at position lengths[b] + t.
 * @module
 */

/** Storage type of weights, activations and the KV cache. */
export type DType = "f32" | "f16" | "bf16";

/** Bytes per element of a DType. */
export function dtype_bytes(d: DType): number {
  return d === "f32" ? 4 : 2;
}

/** The activation applied by a matmul epilogue. */
export type Activation = "none" | "gelu_erf" | "gelu_tanh";

/** A region of backend memory: device memory on CUDA, 64-byte aligned host memory on the CPU. */
export interface Buf {
  /** Address (device address on CUDA). */
  readonly ptr: bigint;
  /** Size in bytes. */
  readonly bytes: number;
  /** What it holds, for error messages and leak reports ("wte", "kv cache layer 3 k", ...). */
  readonly label: string;
}

/** out[b*T+t, :] = wte[tokens[b*T+t], :] + wpe[lengths[b] + t, :] for every slot (padding too). */
export interface EmbedArgs {
  out: Buf;
  tokens: Buf;
  lengths: Buf;
  wte: Buf;
  wpe: Buf;
  B: number;
  T: number;
  C: number;
  /** Rows in wpe (block_size): positions are clamped to it for padding slots. */
  max_pos: number;
}

/** out[r, :] = layernorm(x[r, :]) * weight + bias, over C columns, for `rows` rows. */
export interface LayerNormArgs {
  out: Buf;
  x: Buf;
  weight: Buf;
  bias: Buf | null;
  rows: number;
  C: number;
  eps: number;
}

/** A layernorm over each row of a matmul's input, applied on the fly (x itself is unchanged). */
export interface RowNorm {
  weight: Buf;
  bias: Buf | null;
  eps: number;
}

/**
 * out[M, N] = act(x'[M, K] @ w[N, K]^T + bias[N]), or with `accumulate` out += x' @ w^T + bias
 * (the residual add; act must be "none" then), where x' = layernorm(x) over K when `ln` is given,
 * else x. w is stored (out_features, in_features). out must not overlap x.
 */
export interface MatmulArgs {
  out: Buf;
  x: Buf;
  w: Buf;
  bias: Buf | null;
  M: number;
  N: number;
  K: number;
  act: Activation;
  accumulate: boolean;
  /** Write `out` as f32 whatever the backend dtype (the LM head's logits). Not with accumulate. */
  out_f32?: boolean;
  /** Layernorm x's rows first (fused into the matmul where the backend can). */
  ln?: RowNorm;
}

/**
 * Causal self-attention over a KV cache, with the cache append.
 * qkv is (B*T, 3C) laid out [q | k | v], each C = n_head * head_dim split into heads.
 * For every valid slot (t < n_new[b]) k and v are written to the caches at position lengths[b]+t;
 * then out[b*T+t, h*D:(h+1)*D] = softmax(q . K[0..lengths[b]+t] / sqrt(D)) V, reading only live
 * positions. Caches are (B, n_head, max_T, head_dim) for one layer. Padding rows of out are
 * written (zeros or garbage) but never read by the model.
 */
export interface AttentionArgs {
  out: Buf;
  qkv: Buf;
  k_cache: Buf;
  v_cache: Buf;
  lengths: Buf;
  n_new: Buf;
  B: number;
  T: number;
  n_head: number;
  head_dim: number;
  max_T: number;
}

/** out[b, :] = x[b*T + max(n_new[b]-1, 0), :]: the last valid row of each sequence. */
export interface GatherLastArgs {
  out: Buf;
  x: Buf;
  n_new: Buf;
  B: number;
  T: number;
  C: number;
}

/**
 * Picks the next token of each sequence from f32 logits (B rows of V, `ld` floats apart), writing int32 `tokens_out[b]`.
 * Per sequence: temperature (<= 0: greedy argmax, lowest index on ties), top_k (<= 0: off),
 * top_p (>= 1: off), seed (u32 lo, hi). The random stream is counter-based (Philox4x32-10) keyed
 * by the seed with counter = the new token's position lengths[b] + n_new[b], so a sequence draws
 * the same tokens whatever batch it runs in. Sequences with n_new[b] == 0 keep tokens_out[b].
 */
export interface SampleArgs {
  tokens_out: Buf;
  logits: Buf;
  lengths: Buf;
  n_new: Buf;
  temperature: Buf;
  top_k: Buf;
  top_p: Buf;
  seed: Buf;
  B: number;
  V: number;
  /** Floats between consecutive rows of logits (default V; the model pads its rows to a multiple of 64). */
  ld?: number;
}

/** lengths[b] += n_new[b]. */
export interface AdvanceArgs {
  lengths: Buf;
  n_new: Buf;
  B: number;
}

/** Where run_loop logs each iteration's tokens: `B` int32 from `src` into row `first_row + i` of `dst`. */
export interface LoopLog {
  src: Buf;
  dst: Buf;
  first_row: number;
  /** int32 per row of `dst`. */
  stride: number;
  B: number;
}

/** Throws unless a loop of `n` iterations can log into `log` (every row in bounds). */
export function check_loop(n: number, log: LoopLog): void {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`run_loop: n must be a positive integer, got ${n}`);
  const { B, stride, first_row } = log;
  if (!(Number.isInteger(B) && B >= 1 && B <= stride && Number.isInteger(first_row) && first_row >= 0)) {
    throw new RangeError(`run_loop: log of B ${B}, stride ${stride}, first row ${first_row} is not valid`);
  }
  if (log.src.bytes < B * 4) {
    throw new RangeError(`run_loop: src "${log.src.label}" holds fewer than ${B} int32`);
  }
  const end = ((first_row + n - 1) * stride + B) * 4;
  if (end > log.dst.bytes) {
    throw new RangeError(
      `run_loop: ${n} rows from row ${first_row} do not fit "${log.dst.label}" (${log.dst.bytes} bytes)`,
    );
  }
}

/** A device-to-host copy in flight (CUDA: into pinned memory, completion tracked by an event). */
export interface PendingRead {
  /** True when the bytes have arrived (never blocks). */
  done(): boolean;
  /** Waits for the bytes and returns them (a copy the caller owns). */
  wait(): Uint8Array;
}

/** A backend: memory, the ops of the GPT-2 forward pass, and step execution. */
export interface Backend extends Disposable {
  readonly kind: "cpu" | "cuda";
  /** Storage type of weights, activations and the KV cache (logits are always f32). */
  readonly dtype: DType;
  /** Human-readable device name ("CPU (2 threads)", "NVIDIA H100 80GB HBM3"). */
  readonly device_name: string;

  /** Allocates `bytes`; on failure throws an Error naming `label` and the size. */
  alloc(bytes: number, label: string): Buf;
  /** Frees a buffer from alloc. Freeing twice is an error. */
  free(buf: Buf): void;
  /** Bytes currently allocated through alloc (for leak checks and reports). */
  allocated_bytes(): number;
  /** Copies host bytes into `dst` at `dst_offset` bytes. The host array may be reused on return. */
  write(dst: Buf, src: ArrayBufferView, dst_offset?: number): void;
  /** Copies bytes from `src` at `src_offset` into the host array; waits for pending work. */
  read(src: Buf, dst: ArrayBufferView, src_offset?: number): void;
  /**
   * Writes a weight tensor given in `src_dtype` (raw little-endian bytes, `n` elements) into `dst`
   * converted to `backend.dtype`; with `transpose` = [rows, cols] the source is (rows, cols) and is
   * stored transposed as (cols, rows).
   */
  write_weight(dst: Buf, src: Uint8Array, src_dtype: DType, n: number, transpose?: [number, number]): void;

  embed(a: EmbedArgs): void;
  layernorm(a: LayerNormArgs): void;
  matmul(a: MatmulArgs): void;
  attention(a: AttentionArgs): void;
  gather_last(a: GatherLastArgs): void;
  sample(a: SampleArgs): void;
  advance(a: AdvanceArgs): void;

  /**
   * Runs one step: the ops that `record` enqueues. The CPU runs them at once. CUDA captures them
   * into a graph the first time it sees `key` and replays that graph afterwards (or launches them
   * one by one when graphs are off); `key` must name everything that changes the recorded launches
   * (phase, B, T). Buffers used inside must not be reallocated between steps.
   */
  run_step(key: string, record: () => void): void;
  /**
   * Runs the step that `record` enqueues `n` times in one launch, copying its tokens into the log
   * after each iteration. CUDA records it once per `key` as a graph whose WHILE node loops on the
   * device (so the host launches once for n steps); the CPU runs it n times.
   */
  run_loop(key: string, n: number, record: () => void, log: LoopLog): void;
  /** Waits until all enqueued work is done. */
  synchronize(): void;
  /**
   * Starts copying `bytes` from `src` (at `src_offset`, default 0) to the host behind the work already enqueued, without waiting
   * (the CPU backend copies at once). Optional: the engine falls back to read().
   */
  read_async?(src: Buf, bytes: number, src_offset?: number): PendingRead;
  /** Forgets every recorded step (destroys CUDA graphs), e.g. before buffers they use are freed. */
  reset_steps?(): void;
}
