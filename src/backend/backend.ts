/**
 * The small interface the model and the engine are written against. Two backends implement it:
 * `cpu` (Zig kernels, fp32, the reference) and `cuda` (NVRTC kernels, cuBLASLt, CUDA graphs).
 *
 * Every op is *enqueued*: on CUDA it is launched on the backend's stream (and so can be captured
 * into a CUDA graph); on the CPU it runs before the call returns. Shapes are plain numbers passed
 * with each call; all tensors are row-major and dense. Integer tensors (tokens, positions,
 * lengths, n_new, block tables, row indices, top_k) are int32; sampling parameters temperature /
 * top_p are f32; seeds are u32 pairs (lo, hi). Float tensors (weights, activations, the KV cache)
 * are in `backend.dtype`, except logits and logprobs, which are always f32.
 *
 * Rows and sequences. A step computes `rows` token rows. In a decode step row b is sequence b's
 * one new token (sequences with n_new[b] == 0 sit the step out). In a packed prefill sequence b
 * owns rows seq_start[b] .. seq_start[b+1]-1; rows past seq_start[B] are padding whose outputs
 * are garbage that nothing reads. A new token in row t of sequence b sits at position
 * lengths[b] + t.
 *
 * The paged KV cache. Each layer has a K pool and a V pool of `num_blocks` blocks, each block
 * (n_head, block_size, head_dim); sequence b keeps position p in block
 * block_table[b * max_blocks + floor(p / block_size)], row p % block_size. Blocks are handed out
 * by the engine (src/engine/kv_cache.ts); several sequences may share a full block (a cached
 * prompt prefix), which is then only read.
 * @module
 */

/** Storage type of weights, activations and the KV cache. */
export type DType = "f32" | "f16" | "bf16";

/** Bytes per element of a DType. */
export function dtype_bytes(d: DType): number {
  return d === "f32" ? 4 : 2;
}

/** The element type codes of the native side (native/cpu/convert.zig) and the kernels' NG_DTYPE. */
export const DTYPE_CODE: Readonly<Record<DType, number>> = { f32: 0, f16: 1, bf16: 2 };

/** The activation applied by a matmul epilogue. */
export type Activation = "none" | "gelu_erf" | "gelu_tanh";

/**
 * The activation codes every kernel takes (native/cpu/matmul.zig, gemv.cu's flags bits 0-1,
 * bias_gelu.cu): one numbering for every backend.
 */
export const ACTIVATION_CODE: Readonly<Record<Activation, number>> = { none: 0, gelu_erf: 1, gelu_tanh: 2 };

/** A region of backend memory: device memory on CUDA, 64-byte aligned host memory on the CPU. */
export interface Buf {
  /** Address (device address on CUDA). */
  readonly ptr: bigint;
  /** Size in bytes. */
  readonly bytes: number;
  /** What it holds, for error messages and leak reports ("wte", "kv cache layer 3 k", ...). */
  readonly label: string;
  /** For a view (src/backend/buf.ts sub_buf): the allocation it lies in. */
  readonly base?: Buf;
}

/** out[r, :] = wte[tokens[r], :] + wpe[min(positions[r], max_pos - 1), :] for r < rows. */
export interface EmbedArgs {
  /** (rows, C) activations. */
  out: Buf;
  /** (rows) token ids, each in [0, vocab). */
  tokens: Buf;
  /** (rows) positions, each >= 0 (clamped to max_pos - 1). */
  positions: Buf;
  /** Token embedding (vocab, C); its size gives vocab. */
  wte: Buf;
  /** Position embedding (max_pos, C). */
  wpe: Buf;
  /** Token rows to embed. */
  rows: number;
  /** Embedding width (n_embd): columns of wte, wpe and out. */
  C: number;
  /** Rows in wpe (block_size). */
  max_pos: number;
}

/** out[r, :] = layernorm(x[r, :]) * weight + bias, over C columns, for `rows` rows. */
export interface LayerNormArgs {
  /** (rows, C) normalized output. */
  out: Buf;
  /** (rows, C) input. */
  x: Buf;
  /** (C) scale. */
  weight: Buf;
  /** (C) shift, or null for none. */
  bias: Buf | null;
  /** Rows to normalize. */
  rows: number;
  /** Columns per row: what each mean and variance is taken over. */
  C: number;
  /** Added to the variance before its square root. */
  eps: number;
}

/** A layernorm over each row of a matmul's input, applied on the fly (x itself is unchanged). */
export interface RowNorm {
  /** (K) scale. */
  weight: Buf;
  /** (K) shift, or null for none. */
  bias: Buf | null;
  /** Added to the variance before its square root. */
  eps: number;
}

/**
 * out[M, N] = act(x'[M, K] @ w[N, K]^T + bias[N]), or with `accumulate` out += x' @ w^T + bias
 * (the residual add; act must be "none" then), where x' = layernorm(x) over K when `ln` is given,
 * else x. w is stored (out_features, in_features). out must not overlap x.
 */
export interface MatmulArgs {
  /** (M, N) output, in backend.dtype unless out_f32. */
  out: Buf;
  /** (M, K) input rows. */
  x: Buf;
  /** (N, K) weight, stored (out_features, in_features): backend.dtype, or int8 with `w_scale`. */
  w: Buf;
  /** (N) f32 scales of an int8 `w` (weight-only quantization): row n's weight is w[n, :] * w_scale[n]. */
  w_scale?: Buf | null;
  /** (N) bias, or null for none. */
  bias: Buf | null;
  /** Rows of x and out (token rows). */
  M: number;
  /** Output features: columns of out, rows of w. */
  N: number;
  /** Input features: columns of x and w. */
  K: number;
  /** Activation applied after the bias ("none" with accumulate). */
  act: Activation;
  /** Add the result into out (the residual add) instead of overwriting it. */
  accumulate: boolean;
  /** Write `out` as f32 whatever the backend dtype (the LM head's logits). Not with accumulate. */
  out_f32?: boolean;
  /** Layernorm x's rows first (fused into the matmul where the backend can). */
  ln?: RowNorm;
}

/** One layer's paged KV cache: K and V pools of (num_blocks, n_head, block_size, head_dim) each. */
export interface KvLayer {
  /** The layer's K pool (num_blocks, n_head, block_size, head_dim), in backend.dtype (int8 with scales). */
  k: Buf;
  /** The layer's V pool, shaped as k. */
  v: Buf;
  /**
   * An int8 cache: f32 scales of the K rows, (num_blocks, n_head, block_size), one per row of
   * head_dim values (a row is stored as round(x / s), s = max |x| / 127). Absent: pools in backend.dtype.
   */
  k_scale?: Buf;
  /** The V rows' scales, shaped as k_scale. */
  v_scale?: Buf;
}

/** The shape of the paged KV cache, shared by every layer and every attention call. */
export interface KvLayout {
  /** Blocks in each layer's K (and V) pool; block ids are 0..num_blocks-1. */
  num_blocks: number;
  /** Positions per block. */
  block_size: number;
  /** Attention heads. */
  n_head: number;
  /** Channels per head (n_embd / n_head). */
  head_dim: number;
  /** Entries per row of a block table: the most blocks one sequence holds. */
  max_blocks: number;
}

/**
 * Causal self-attention over the paged KV cache, with the cache append. qkv has one row per token
 * row, laid out [q | k | v], each C = n_head * head_dim split into heads. For every row a sequence
 * owns, k and v are written at its position (through the block table); then
 * out[row, h*D:(h+1)*D] = softmax(q . K[0..pos] / sqrt(D)) V, reading only live positions.
 *
 * Decode (`seq_start` null): row b belongs to sequence b when n_new[b] is 1 (0: the sequence sits
 * out, its out row is zeros and nothing is written). Prefill (`seq_start` given): sequence b owns
 * rows seq_start[b] .. seq_start[b+1] - 1 and `row_seq` / `positions` give each row's sequence
 * (-1 for padding rows) and position; `max_seq_rows` bounds any sequence's row count.
 */
export interface AttentionArgs {
  /** (rows, C) attention output (decode: rows = B). */
  out: Buf;
  /** (rows, 3C) the layer's q | k | v for each token row. */
  qkv: Buf;
  /** This layer's K and V pools. */
  cache: KvLayer;
  /** The pools' shape. */
  layout: KvLayout;
  /** (B, max_blocks) int32. */
  block_table: Buf;
  /** (B): positions already cached. */
  lengths: Buf;
  /** Sequences: decode slots, or the sequences a prefill packs. */
  B: number;
  /** Decode: (B) int32 new rows per sequence, 0 or 1; 0 sits the sequence out. */
  n_new?: Buf;
  /**
   * Decode: a bound on lengths[b] + 1 over the step. It picks how the keys are split; the kernels
   * never read past a sequence's own length.
   */
  max_len?: number;
  /** Prefill: (B + 1) int32 row offsets; sequence b owns rows seq_start[b] .. seq_start[b+1] - 1. */
  seq_start?: Buf;
  /** Prefill: (rows) int32 sequence of each row; -1 marks a padding row, which writes nothing. */
  row_seq?: Buf;
  /** Prefill: (rows) int32 position of each row (its k and v are written there). */
  positions?: Buf;
  /** Prefill: token rows in the step, padding included. */
  rows?: number;
  /** Prefill: a bound on any sequence's row count (it sizes the CUDA kernel's grid). */
  max_seq_rows?: number;
}

/**
 * The addresses of one transformer block's weights in a fused-decode layer table, in this order (0
 * for an absent bias or scale): what native/kernels/decode_fused.cu's FusedLayer holds.
 */
export const FUSED_LAYER_FIELDS = [
  "ln_1.weight",
  "ln_1.bias",
  "attn.w",
  "attn.scale",
  "attn.b",
  "proj.w",
  "proj.scale",
  "proj.b",
  "ln_2.weight",
  "ln_2.bias",
  "fc.w",
  "fc.scale",
  "fc.b",
  "fc2.w",
  "fc2.scale",
  "fc2.b",
] as const;

/**
 * The row after the blocks' in a fused-decode layer table: the model's other weights, in this
 * order (the rest of the row 0): decode_fused.cu's FusedModel.
 */
export const FUSED_MODEL_FIELDS = ["wte", "wpe", "ln_f.weight", "ln_f.bias", "lm_head"] as const;

/** The addresses of one layer's KV cache in a fused-decode KV table, in this order (0: no scales). */
export const FUSED_KV_FIELDS = ["k", "v", "k_scale", "v_scale"] as const;

/**
 * A whole decode step's forward in one launch: embed the B slots' tokens at their lengths, run every
 * block (the decode attention with its KV append, as AttentionArgs with n_new), then logits =
 * lm_head(ln_f(x)) as f32 rows of `vocab_padded` into `logits`. The same computation as the model's
 * op-by-op forward; a backend may decline a shape (see Backend.decode_fused).
 */
export interface FusedDecodeArgs {
  /**
   * n_layer rows of FUSED_LAYER_FIELDS.length u64 addresses, then one row of FUSED_MODEL_FIELDS
   * (token and position embeddings, ln_f, the LM head of vocab_padded rows).
   */
  layers: Buf;
  /** n_layer rows of FUSED_KV_FIELDS.length u64 addresses. */
  kv: Buf;
  /** Transformer blocks. */
  n_layer: number;
  /** Whether the blocks' linear weights are int8 (with scales). */
  int8_weights: boolean;
  /** Whether the KV cache is int8 (with scales). */
  int8_kv: boolean;
  /** The pools' shape. */
  layout: KvLayout;
  /** (B, C) residual stream. */
  x: Buf;
  /** (B, 3C) q | k | v. */
  qkv: Buf;
  /** (B, C) attention output. */
  att: Buf;
  /** (B, 4C) MLP hidden. */
  hidden: Buf;
  /** (B, vocab_padded) f32 logits. */
  logits: Buf;
  /** (B) int32 token ids. */
  tokens: Buf;
  /** (B) int32 positions already cached (each token's position). */
  lengths: Buf;
  /** (B) int32 new rows, 0 or 1; 0 sits the slot out. */
  n_new: Buf;
  /** (B, layout.max_blocks) int32. */
  block_table: Buf;
  /** Slots (rows). */
  B: number;
  /** n_embd. */
  C: number;
  /** Rows of the LM head and of each logits row. */
  vocab_padded: number;
  /** Rows of wpe. */
  max_pos: number;
  /** The MLP's activation. */
  act: Activation;
  /** Every layernorm's eps. */
  eps: number;
  /** A bound on any slot's length + 1 (AttentionArgs.max_len). */
  max_len: number;
}

/** out[i, :] = x[idx[i], :] for i < n: each sequence's last row after a packed prefill. */
export interface GatherRowsArgs {
  /** (n, C) gathered rows. */
  out: Buf;
  /** Source rows of C elements; every index must fall inside it. */
  x: Buf;
  /** (n) int32 row indices into x. */
  idx: Buf;
  /** Rows to gather. */
  n: number;
  /** Elements per row. */
  C: number;
}

/** dst[idx[i]] = src[i] (int32) for i < n where idx[i] >= 0. */
export interface ScatterArgs {
  /** int32 array written at the indices (the decode slots' next tokens). */
  dst: Buf;
  /** (n) int32 values. */
  src: Buf;
  /** (n) int32 indices into dst; a negative index skips its entry. */
  idx: Buf;
  /** Entries of src and idx. */
  n: number;
}

/**
 * Picks the next token of each sequence from f32 logits (B rows of V, `ld` floats apart), writing int32 `tokens_out[b]`.
 * Per sequence: temperature (<= 0: greedy argmax, lowest index on ties), top_k (<= 0: off),
 * top_p (>= 1: off), seed (u32 lo, hi). The random stream is counter-based (Philox4x32-10) keyed
 * by the seed with counter = the new token's position lengths[b] + n_new[b], so a sequence draws
 * the same tokens whatever batch it runs in. Sequences with n_new[b] == 0 keep tokens_out[b].
 */
export interface SampleArgs {
  /** (B) int32 sampled token ids; entries of sequences with n_new[b] == 0 are left as they are. */
  tokens_out: Buf;
  /** f32 logits: B rows of V, `ld` floats apart. */
  logits: Buf;
  /** (B) int32 positions already cached; lengths[b] + n_new[b] is the random stream's counter. */
  lengths: Buf;
  /** (B) int32 new rows this step; 0 skips the sequence. */
  n_new: Buf;
  /** (B) f32 softmax temperature; <= 0 picks the argmax. */
  temperature: Buf;
  /** (B) int32 tokens kept, the most likely first; <= 0 keeps all. */
  top_k: Buf;
  /** (B) f32 nucleus: the most likely tokens up to this probability mass are kept; >= 1 keeps all. */
  top_p: Buf;
  /** (B, 2) u32 seeds (lo, hi). */
  seed: Buf;
  /** Sequences (rows of logits). */
  B: number;
  /** Vocabulary size: the candidates in each row. */
  V: number;
  /** Floats between consecutive rows of logits (default V; the model pads its rows to a multiple of 64). */
  ld?: number;
}

/**
 * Log-probabilities under the model's own distribution (log_softmax of the logits, no
 * temperature), as OpenAI's API reports them: for row r, with w = 1 + 2 * top_n floats of output,
 * out[r*w] = logprob of targets[r] (NaN when targets[r] < 0), then top_n (id, logprob) pairs, the
 * most likely first (lowest id first on ties).
 */
export interface LogprobsArgs {
  /** (rows, 1 + 2 * top_n) f32, laid out as above (ids stored as f32 values). */
  out: Buf;
  /** f32 logits: rows of V, `ld` floats apart. */
  logits: Buf;
  /** (rows) int32 token ids. */
  targets: Buf;
  /** Rows of logits to score. */
  rows: number;
  /** Vocabulary size: the candidates in each row. */
  V: number;
  /** Floats between consecutive rows of logits. */
  ld: number;
  /** Alternatives per row, 0..MAX_TOP_LOGPROBS. */
  top_n: number;
}

/** The most alternatives LogprobsArgs.top_n asks for (OpenAI's chat API allows 20). */
export const MAX_TOP_LOGPROBS = 20;

/** lengths[b] += n_new[b]. */
export interface AdvanceArgs {
  /** (B) int32 cached positions per sequence, updated in place. */
  lengths: Buf;
  /** (B) int32 rows each sequence computed this step. */
  n_new: Buf;
  /** Sequences. */
  B: number;
}

/** One copy run_loop makes after each iteration: `words` 4-byte words from `src` into row first_row + i of `dst`. */
export interface LoopCopy {
  /** The iteration's output; its first `words` words are copied. */
  src: Buf;
  /** The log: rows of `stride` words, one per iteration. */
  dst: Buf;
  /** 4-byte words copied per iteration, 1..stride. */
  words: number;
  /** Words per row of `dst`. */
  stride: number;
}

/** Where run_loop logs each iteration's outputs (the sampled tokens; logprobs when asked). */
export interface LoopLog {
  /** The row of each copy's dst that iteration 0 writes; iteration i writes row first_row + i. */
  first_row: number;
  /** The copies made after each iteration (at least one). */
  copies: LoopCopy[];
}

/** Throws unless a loop of `n` iterations can log into `log` (every row in bounds). */
export function check_loop(n: number, log: LoopLog): void {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`run_loop: n must be a positive integer, got ${n}`);
  if (!(Number.isInteger(log.first_row) && log.first_row >= 0) || log.copies.length === 0) {
    throw new RangeError(`run_loop: a log needs a first row >= 0 and at least one copy`);
  }
  for (const { src, dst, words, stride } of log.copies) {
    if (!(Number.isInteger(words) && words >= 1 && words <= stride)) {
      throw new RangeError(`run_loop: a copy of ${words} words into rows of ${stride} is not valid`);
    }
    if (src.bytes < words * 4) {
      throw new RangeError(`run_loop: src "${src.label}" holds fewer than ${words} words`);
    }
    const end = ((log.first_row + n - 1) * stride + words) * 4;
    if (end > dst.bytes) {
      throw new RangeError(
        `run_loop: ${n} rows from row ${log.first_row} do not fit "${dst.label}" (${dst.bytes} bytes)`,
      );
    }
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
  /** Which implementation. */
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
  /** Bytes of memory free for new allocations (the device's; null where unknown, the CPU). */
  free_bytes(): number | null;
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

  /** Token and position embeddings (EmbedArgs). */
  embed(a: EmbedArgs): void;
  /** Row layernorm (LayerNormArgs). */
  layernorm(a: LayerNormArgs): void;
  /** Linear layer with fused layernorm, bias, GELU or residual add (MatmulArgs). */
  matmul(a: MatmulArgs): void;
  /** Paged causal attention with the KV append (AttentionArgs). */
  attention(a: AttentionArgs): void;
  /** Row gather (GatherRowsArgs). */
  gather_rows(a: GatherRowsArgs): void;
  /** int32 scatter (ScatterArgs). */
  scatter(a: ScatterArgs): void;
  /** Next-token sampling (SampleArgs). */
  sample(a: SampleArgs): void;
  /** Log-probabilities of chosen and top tokens (LogprobsArgs). */
  logprobs(a: LogprobsArgs): void;
  /** lengths += n_new (AdvanceArgs). */
  advance(a: AdvanceArgs): void;
  /**
   * Optional: the whole decode forward in one launch (FusedDecodeArgs). Returns false, having done
   * nothing, where the backend has no fused path for the shape; the caller then runs it op by op.
   */
  decode_fused?(a: FusedDecodeArgs): boolean;

  /**
   * Runs one step: the ops that `record` enqueues. The CPU runs them at once. CUDA captures them
   * into a graph the first time it sees `key` and replays that graph afterwards (or launches them
   * one by one when graphs are off); `key` must name everything that changes the recorded launches
   * (phase, shapes). Buffers used inside must not be reallocated between steps.
   */
  run_step(key: string, record: () => void): void;
  /**
   * Runs the step that `record` enqueues `n` times in one launch, making the log's copies after
   * each iteration. CUDA records it once per `key` as a graph whose WHILE node loops on the device
   * (so the host launches once for n steps); the CPU runs it n times.
   */
  run_loop(key: string, n: number, record: () => void, log: LoopLog): void;
  /** Waits until all enqueued work is done. */
  synchronize(): void;
  /**
   * Starts copying `bytes` from `src` (at `src_offset`, default 0) to the host behind the work
   * already enqueued, without waiting (the CPU backend copies at once). Optional: the engine falls
   * back to read().
   */
  read_async?(src: Buf, bytes: number, src_offset?: number): PendingRead;
  /** Forgets every recorded step (destroys CUDA graphs), e.g. before buffers they use are freed. */
  reset_steps?(): void;
}
