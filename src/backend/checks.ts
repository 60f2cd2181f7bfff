/**
 * Argument checks of the backend ops, shared by both backends so that a bad call reads the same on
 * either: the op, the argument, what it holds and what it needed.
 * @module
 */
import { type AttentionArgs, type Buf, type LogprobsArgs, MAX_TOP_LOGPROBS } from "./backend.ts";

/** Throws unless every dimension is an integer in [min, 2^31 - 1] (min default 1). */
export function check_dims(op: string, dims: Record<string, number>, min = 1): void {
  for (const [k, v] of Object.entries(dims)) {
    if (!Number.isInteger(v) || v < min || v > 0x7fffffff) {
      throw new RangeError(`${op}: ${k} must be an integer in [${min}, 2^31 - 1], got ${v}`);
    }
  }
}

/** Throws unless `buf` holds at least `bytes` bytes; `what` describes the expected contents. */
export function need(op: string, name: string, buf: Buf, bytes: number, what: string): void {
  if (buf.bytes < bytes) {
    throw new RangeError(`${op}: ${name} "${buf.label}" holds ${buf.bytes} bytes, needs ${bytes} (${what})`);
  }
}

/** The byte size checks of an attention call common to both backends; returns (rows, C). */
export function check_attention(
  op: string,
  a: AttentionArgs,
  es: number,
): { rows: number; C: number } {
  const { n_head: H, head_dim: D, block_size, max_blocks, num_blocks } = a.layout;
  check_dims(op, { B: a.B, n_head: H, head_dim: D, block_size, max_blocks, num_blocks });
  const C = H * D;
  const prefill = a.seq_start !== undefined;
  const rows = prefill ? a.rows ?? -1 : a.B;
  if (prefill) {
    check_dims(op, { rows, max_seq_rows: a.max_seq_rows ?? -1 });
    for (const k of ["row_seq", "positions"] as const) {
      if (!a[k]) throw new TypeError(`${op}: a prefill (seq_start given) needs ${k}`);
      need(op, k, a[k]!, rows * 4, `${rows} int32`);
    }
    need(op, "seq_start", a.seq_start!, (a.B + 1) * 4, `${a.B + 1} int32`);
  } else {
    if (!a.n_new) throw new TypeError(`${op}: a decode step (no seq_start) needs n_new`);
    check_dims(op, { max_len: a.max_len ?? -1 });
    need(op, "n_new", a.n_new, a.B * 4, `${a.B} int32`);
  }
  need(op, "qkv", a.qkv, rows * 3 * C * es, `${rows} x ${3 * C} elements`);
  need(op, "out", a.out, rows * C * es, `${rows} x ${C} elements`);
  const int8 = a.cache.k_scale !== undefined;
  if (int8 !== (a.cache.v_scale !== undefined)) {
    throw new TypeError(`${op}: cache.k_scale and cache.v_scale go together`);
  }
  const rows_in_pool = num_blocks * H * block_size, pool = rows_in_pool * D * (int8 ? 1 : es);
  const what = `${num_blocks} blocks of ${H} x ${block_size} x ${D}${int8 ? " int8" : ""}`;
  need(op, "cache.k", a.cache.k, pool, what);
  need(op, "cache.v", a.cache.v, pool, what);
  if (int8) {
    need(op, "cache.k_scale", a.cache.k_scale!, rows_in_pool * 4, `${rows_in_pool} f32`);
    need(op, "cache.v_scale", a.cache.v_scale!, rows_in_pool * 4, `${rows_in_pool} f32`);
  }
  need(op, "block_table", a.block_table, a.B * max_blocks * 4, `${a.B} x ${max_blocks} int32`);
  need(op, "lengths", a.lengths, a.B * 4, `${a.B} int32`);
  return { rows, C };
}

/** Checks a logprobs call's sizes and buffers (the same on every backend). */
export function check_logprobs(op: string, a: LogprobsArgs): void {
  check_dims(op, { rows: a.rows, V: a.V, ld: a.ld });
  check_dims(op, { top_n: a.top_n }, 0);
  if (a.top_n > MAX_TOP_LOGPROBS || a.ld < a.V) {
    throw new RangeError(`${op}: top_n ${a.top_n} (max ${MAX_TOP_LOGPROBS}) or ld ${a.ld} < V ${a.V}`);
  }
  need(op, "out", a.out, a.rows * (1 + 2 * a.top_n) * 4, `${a.rows} x ${1 + 2 * a.top_n} f32`);
  need(op, "logits", a.logits, ((a.rows - 1) * a.ld + a.V) * 4, `${a.rows} rows of ${a.V} f32`);
  need(op, "targets", a.targets, a.rows * 4, `${a.rows} int32`);
}
